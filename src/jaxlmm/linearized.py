"""psi(theta) = c(theta) + <Gamma, M(theta)> for a fixed Gamma: the criterion's linearization.

c is the chain factors' log-determinant and M the dense Schur block (pls.py); with
Gamma = dPhi/dM (dense.py), grad f = grad psi and Hess f = Hess psi + d2Phi[M_i, M_j]
(deviance.py). psi never forms M: <Gamma, M> is a contraction with the Schur update lists.

The updates from the first chain factor dominate (one term per pair of pairs). With scalar
crossed factors they depend on theta only through per-level q x q matrices: eliminating
level u of the first factor (template T, block D_u = T'Z_u'Z_u T + I) adds
B_u' X_u B_u to M, X_u = T D_u^{-1} T', B_u = Z_u'[Z_rest Lambda_rest, X, y]. So

    <Gamma, sum_u B_u' X_u B_u> = sum_u <X_u, K_u(theta_rest)>,
    K_u = sum_{r <= r2} theta_r theta_r2 K_u^{r r2} + sum_r theta_r K_u^{r xy} + K_u^{xy xy},

with the K's built once per Gamma in one pass over the pair-of-pair lists (``tensors``). The
derivatives of psi of any order are then work on G x q x q arrays, not on the lists.
Likewise the scaled block Lambda'M0 Lambda + I_r enters as a quadratic form in the crossed
thetas, <Gamma, D M0 D> = mu' (E'(Gamma o M0) E) mu with mu = (theta_rest, 1), instead of an
m x m array per tangent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import smallblock as sb
from .pls import contract, schur_parts, weights
from .stats import Stats


SCALED = (-2, -2)  # key of the scaled block's quadratic form in the tensors' dict


def first_factor_reduced(struct) -> bool:
    """Whether the first chain factor's updates take the per-level form (scalar rest)."""
    return struct.scalar_rest


def tensors(w, stats: Stats):
    """The theta-free per-level K's of the first chain factor for flat weights w.

    Returns a dict: (r, r2) -> (G, q, q) for rest x rest, (r, -1) -> rest x [X y], and
    (-1, -1) -> [X y] x [X y].
    """
    st = stats.struct
    nchain = len(st.chain)
    G0, q0 = st.factors[0]
    m, xy0, p1 = st.m, st.m_rand, st.p + 1
    E0 = stats.E[0]  # (G0, p+1, q0)
    xy = xy0 + jnp.arange(p1)
    wxy = w[(xy[:, None] * m + xy[None, :]).ravel()].reshape(p1, p1)
    K = {(-1, -1): jnp.einsum("gjc,jk,gkd->gcd", E0, wxy, E0)}
    for r in range(nchain, len(st.factors)):
        pi, pj = stats.pi[0, r], stats.pj[0, r]
        P0 = stats.P[0, r][:, 0, :]  # (npairs, q0)
        col = (st.rest_offsets[r - nchain] + pi).astype(xy.dtype)
        wcol = w[xy[None, :] * m + col[:, None]]  # (npairs, p+1)
        v = jnp.einsum("xjc,xj->xc", E0[pj], wcol)
        K[r, -1] = jax.ops.segment_sum(v[:, :, None] * P0[:, None, :], pj, G0,
                                         indices_are_sorted=True)
        for r2 in range(nchain, r + 1):
            a, b, t = stats.ppa[0, r, r2], stats.ppb[0, r, r2], stats.ppt[0, r, r2]
            P0b = stats.P[0, r2][:, 0, :]
            wa = w[t][:, None] * P0[a]
            K[r, r2] = jax.ops.segment_sum(wa[:, :, None] * P0b[b][:, None, :],
                                           stats.ppj[0, r, r2], G0)
    return K


def indicator(struct):
    """(m, n_rest + 1) indicator of the rows of each crossed factor, then of X and y."""
    E = np.zeros((struct.m, len(struct.rest) + 1))
    for r, ((G, _), off) in enumerate(zip(struct.rest, struct.rest_offsets)):
        E[off:off + G, r] = 1.0
    E[struct.m_rand:, -1] = 1.0
    return E


def psi(theta, Gam, w, K, stats: Stats):
    """c(theta) + <Gam, M(theta)>; K from ``prepare`` (or None: contract every update)."""
    st = stats.struct
    nchain = len(st.chain)
    T, Ls, _, _, _, Msc, parts = schur_parts(theta, stats)
    out = 2.0 * sum(sb.log_diag_sum(L) for L in Ls)
    if K is None:
        return out + contract(Gam, Msc, parts, w)
    # the first chain factor's updates (tag[1] == 0) and the scaled block go through K
    out = out + contract(Gam, None, {tag: v for tag, v in parts.items() if tag[1] != 0}, w)
    lam = {r: T[r][0, 0] for r in range(nchain, len(st.factors))}
    mu = jnp.stack(list(lam.values()) + [jnp.ones((), theta.dtype)])
    out = out + mu @ K[SCALED] @ mu
    Kt = K[-1, -1]
    for (r, r2), k in K.items():
        if r >= 0:
            Kt = Kt + (lam[r] if r2 < 0 else lam[r] * lam[r2]) * k
    Y = sb.solve_rt(jnp.broadcast_to(T[0], Ls[0].shape), Ls[0])  # T L_u^{-T}
    X = sb.matmul_nt(Y, Y)  # T D_u^{-1} T'
    return out - jnp.sum(X * Kt)


def prepare(Gam, stats: Stats):
    """(w, K) for ``psi``: the flat weights and, where they apply, the per-level tensors
    (with K[SCALED] the quadratic form of the scaled block, + tr(Gam_rr) on its corner)."""
    w = weights(Gam)
    st = stats.struct
    if not first_factor_reduced(st):
        return w, None
    K = tensors(w, stats)
    E = jnp.asarray(indicator(st), Gam.dtype)
    Q = E.T @ (Gam * stats.M) @ E
    K[SCALED] = Q.at[-1, -1].add(jnp.trace(Gam[:st.m_rand, :st.m_rand]))
    return w, K
