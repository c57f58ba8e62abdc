"""Closed-form tangents of the dense block in the thetas of scalar crossed factors.

When every crossed (rest) factor is scalar, M = D S D + I_r, where S is the Schur block at
unit crossed thetas (it depends on the chain thetas only) and D = diag(lambda) holds theta_j
on the rows R_j of crossed factor j and 1 on the X and y rows. Hence, with N = M - I_r,

    dM/dtheta_j = E_j S D + D S E_j = (E_j N + N E_j) / theta_j      (E_j = 1 on R_j)

and, with H = G_r = M_r^{-1} (so H N = I - H), the trace term of the curvature (dense.py) is

    tr(H M_i H M_j) = 2 / (theta_i theta_j) 1_i' [H o (2H + N) + I - 3 Diag(H)] 1_j   (i, j crossed)
    tr(H M_c H M_j) = 2 / theta_j 1_j' diag(M_c H - H M_c H)                         (c chain)
    tr(H M_c H M_d) = <H M_c, (H M_d)'>                                                (c, d chain)

The Hessian then needs one m^3 product per chain theta instead of one per theta, and no
forward tangent through the Schur updates in the crossed thetas. The first line divides by
theta; below TINY the generic products are used instead. See docs/numerics.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import smallblock as sb
from .linearized import indicator
from .pls import assemble, eye_rand, schur_parts
from .stats import Stats

TINY = 1e-4  # crossed thetas below this take the generic trace (the closed form divides)


def applies(struct) -> bool:
    """Whether the closed forms hold: crossed factors present and all scalar."""
    return struct.scalar_rest


def split(struct):
    """(chain theta indices, crossed theta indices, row indicator (m, n_crossed))."""
    nchain = len(struct.chain)
    ci = np.array([e[0] for k in range(nchain) for e in struct.templates[k]], dtype=np.int32)
    ri = np.array([struct.templates[nchain + r][0][0] for r in range(len(struct.rest))],
                  dtype=np.int32)
    return ci, ri, indicator(struct)[:, :-1]


def unscaled_block(theta, stats: Stats, ci, ri):
    """(S, dS/dtheta_c (m, m, k_chain), chain log-determinant) at unit crossed thetas."""
    st = stats.struct

    def block(tc):
        t = theta.at[ci].set(tc).at[ri].set(1.0)
        _, Ls, _, _, _, Msc, parts = schur_parts(t, stats)
        chain = 2.0 * sum(sb.log_diag_sum(L) for L in Ls)
        S = assemble(Msc, parts) - eye_rand(st, Msc.dtype)
        return S, (S, chain)

    J, (S, chain) = jax.jacfwd(block, has_aux=True)(theta[ci])
    return S, J, chain


def scaling(theta, ri, E):
    """lambda: theta_j on the rows of crossed factor j, 1 on the X and y rows."""
    Er = jnp.asarray(E, theta.dtype)
    return Er @ theta[ri] + (1.0 - jnp.sum(Er, axis=1))


def scaled_block(lam, S, struct):
    """M = D S D + I_r."""
    return lam[:, None] * lam[None, :] * S + eye_rand(struct, S.dtype)


def tangent_terms(theta, lam, S, Jc, H, W, ci, ri, E):
    """(t_r, R) of dense.curvature_from for M = D S D + I_r, in theta order.

    S: unscaled block, Jc: its chain tangents, H = G_r, W: the last p + 1 rows of L^{-1}.
    """
    k = theta.shape[0]
    mr = H.shape[0]
    Er = jnp.asarray(E, theta.dtype)
    outer = lam[:, None] * lam[None, :]
    Ac = outer[:, :, None] * Jc  # chain tangents of M (m, m, kc)
    Nr = (outer * S)[:mr, :mr]
    Pc = jnp.einsum("ab,bck->kac", H, Ac[:mr, :mr])  # H M_c: the m^3 work
    t_cc = jnp.einsum("iab,jba->ij", Pc, Pc)
    Wt = W.T  # (m, p+1)
    # M_j W' = E_j S D W' + D S E_j W' for crossed j; M_c W' for chain c
    SDW = S @ (lam[:, None] * Wt)
    SEW = jnp.einsum("ab,bj,bc->jac", S, Er, Wt)
    R_r = Er.T[:, :, None] * SDW[None] + lam[None, :, None] * SEW
    R_c = jnp.einsum("abk,bc->kac", Ac, Wt)
    th_r = theta[ri]
    E_rr = Er[:mr]

    def closed(_):
        Z = H * (2.0 * H + Nr) + jnp.diag(1.0 - 3.0 * jnp.diagonal(H))
        t_rr = 2.0 * (E_rr.T @ Z @ E_rr) / jnp.outer(th_r, th_r)
        d = jnp.sum(Ac[:mr, :mr] * H[:, :, None], axis=1).T - jnp.sum(Pc * H[None], axis=2)
        t_cr = 2.0 * (d @ E_rr) / th_r[None, :]
        return t_rr, t_cr

    def generic(_):  # explicit tangents and products for the crossed thetas
        Ar = (E_rr.T[:, :, None] * lam[None, None, :mr] + lam[None, :mr, None]
              * E_rr.T[:, None, :]) * S[None, :mr, :mr]
        Pr = jnp.einsum("ab,kbc->kac", H, Ar)
        return jnp.einsum("iab,jba->ij", Pr, Pr), jnp.einsum("iab,jba->ij", Pc, Pr)

    t_rr, t_cr = lax.cond(jnp.all(th_r > TINY), closed, generic, None)
    t_r = jnp.zeros((k, k), theta.dtype)
    t_r = t_r.at[ci[:, None], ci[None, :]].set(t_cc).at[ri[:, None], ri[None, :]].set(t_rr)
    t_r = t_r.at[ci[:, None], ri[None, :]].set(t_cr).at[ri[:, None], ci[None, :]].set(t_cr.T)
    R = jnp.zeros((k,) + R_r.shape[1:], theta.dtype).at[ri].set(R_r).at[ci].set(R_c)
    return t_r, R
