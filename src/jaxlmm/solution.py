"""Everything read off the factor at the optimum: beta, u, sigma, vcov and conditional variances.

With L the blocked factor of Omega (pls.py), write its last row as [l_yZ, l_yX, r]. Then
[u; beta] solves the upper-triangular system L_{ZX}' [u; beta] = [l_yZ; l_yX]': the dense
block first, then the chain factors in reverse order (docs/numerics.md).

Conditional covariances of the spherical random effects, Var(u | y) = sigma^2 (L_Z L_Z')^{-1}
(lme4's condVar: beta held fixed), only on the diagonal blocks, by the Takahashi recursion
on the block pattern of L: for a column block j with sub-diagonal blocks L_Ij,
X_j = L_Ij L_jj^{-1}, Sigma_Ij = -Sigma_II X_j, Sigma_jj = L_jj^{-T} L_jj^{-1} - X_j' Sigma_Ij.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from . import smallblock as sb
from .dense import leading_inverse
from .deviance import criterion, log_det_r
from .pls import factorize, pieces
from .stats import Stats


class Solution(NamedTuple):
    """Estimates at one theta, in the units of the data (stats.Scale undone)."""

    beta: jax.Array  # (p,) fixed effects
    xtx_inv: jax.Array  # (p, p) vcov(beta) / sigma^2 = (X'V^{-1}X)^{-1} with V = Var(y) / sigma^2
    u: tuple  # per factor (elimination order): (G, q) spherical conditional modes
    b: tuple  # per factor: (G, q) conditional modes of the random effects, = u T'
    cond_var: tuple  # per factor: (G, q, q) Var(b | y) / sigma^2 = T Sigma_jj T'
    sigma: jax.Array  # residual standard deviation (profiled: sqrt(pwrss / nu))
    objective: jax.Array  # the profiled criterion (REML or ML) at theta
    pwrss: jax.Array  # penalized weighted residual sum of squares r^2
    logdet_l: jax.Array  # log|Lambda'Z'WZ Lambda + I|
    logdet_x: jax.Array  # log|R_X|^2 = log|X'V^{-1}X sigma^{-2}|


def _segsum(x, seg, num):
    return jax.ops.segment_sum(x, seg, num_segments=num)


def _unscale(gamma, xtx_inv, scale, i0):
    """beta = B s gamma + c e0 and B xtx_inv B', B = (I - e0 m') R^{-1} (stats.Scale)."""
    p = gamma.shape[0]
    Rinv = solve_triangular(scale.R, jnp.eye(p, dtype=gamma.dtype), lower=False)
    B = Rinv if i0 is None else Rinv - jnp.outer(jnp.eye(p, dtype=gamma.dtype)[i0],
                                                 scale.m @ Rinv)
    beta = B @ (scale.s * gamma)
    if i0 is not None:
        beta = beta.at[i0].add(scale.c)
    return beta, B @ xtx_inv @ B.T


def fixed_part(f, stats: Stats):
    """beta_hat(theta) and (X'V^{-1}X)^{-1} (vcov(beta) / sigma^2), both in data units, from
    the fixed-effects block of the factor f = pls.factorize(theta, stats): L_X' gamma = l_yX."""
    st = stats.struct
    mr, p = st.m_rand, st.p
    LX = f.LM[mr:mr + p, mr:mr + p]
    gamma = solve_triangular(LX, f.LM[-1, mr:mr + p], lower=True, trans="T")
    LXi = solve_triangular(LX, jnp.eye(p, dtype=LX.dtype), lower=True)
    return _unscale(gamma, LXi.T @ LXi, stats.scale, st.intercept)


def solve(theta, stats: Stats, reml: bool = True) -> Solution:
    """beta, sigma, conditional modes and variances and the criterion at ``theta``.

    Pure and jittable; differentiable in theta and in the statistics.
    """
    st = stats.struct
    nchain = len(st.chain)
    K = len(st.factors)
    rest = range(nchain, K)
    p, mr = st.p, st.m_rand
    f = factorize(theta, stats)
    pc = pieces(f, st)
    LM = f.LM

    # dense part: upper-triangular solve for [u_rest; beta]
    v = solve_triangular(LM[:-1, :-1], LM[-1, :-1], lower=True, trans="T")
    gamma = v[mr:]
    u = [None] * K
    for r in rest:
        G, q = st.factors[r]
        off = st.rest_offsets[r - nchain]
        u[r] = v[off:off + G * q].reshape(G, q)
    for k in reversed(range(nchain)):
        G, q = st.factors[k]
        E = f.E[k]
        rhs = E[:, p, :] - jnp.einsum("gxq,x->gq", E[:, :p, :], gamma)
        for l in range(k + 1, nchain):
            ul = u[l][stats.parent[k, l]]  # (G, ql)
            rhs = rhs - jnp.sum(f.C[k, l] * ul[:, :, None], axis=1)
        for r in rest:
            ur = u[r][stats.pi[k, r]]  # (npairs, qr)
            contrib = jnp.sum(f.P[k, r] * ur[:, :, None], axis=1)  # (npairs, qk)
            rhs = rhs - _segsum(contrib, stats.pj[k, r], G)
        u[k] = sb.solve_lt(f.L[k], rhs)
    b = tuple(u[k] @ f.T[k].T for k in range(K))

    nu = stats.n - p if reml else stats.n
    sigma = jnp.sqrt(pc.pwrss / nu)
    LX = LM[mr:mr + p, mr:mr + p]
    LXi = solve_triangular(LX, jnp.eye(p, dtype=LX.dtype), lower=True)
    xtx_inv = LXi.T @ LXi

    # conditional variances: dense rest block, then chain factors in reverse order
    Srr = leading_inverse(LM, mr)
    Sdiag = [None] * K
    for r in rest:
        G, q = st.factors[r]
        off = st.rest_offsets[r - nchain]
        idx = off + jnp.arange(G)[:, None] * q + jnp.arange(q)[None, :]
        Sdiag[r] = Srr[idx[:, :, None], idx[:, None, :]]
    SC, SP = {}, {}
    for k in reversed(range(nchain)):
        G, q = st.factors[k]
        Li = sb.inv_lower(f.L[k])
        XC = {l: sb.solve_r(f.C[k, l], f.L[k]) for l in range(k + 1, nchain)}
        XP = {r: sb.solve_r(f.P[k, r], f.L[k][stats.pj[k, r]]) for r in rest}
        # Sigma(i_p, j) for the rest rows of column block j
        sp = {r: jnp.zeros_like(XP[r]) for r in rest}
        for r in rest:
            _, qr = st.factors[r]
            offr = st.rest_offsets[r - nchain]
            for r2 in range(nchain, r + 1):
                _, qr2 = st.factors[r2]
                off2 = st.rest_offsets[r2 - nchain]
                a, bb = stats.ppa[k, r, r2], stats.ppb[k, r, r2]
                rows = offr + stats.pi[k, r][a][:, None] * qr + jnp.arange(qr)[None, :]
                cols = off2 + stats.pi[k, r2][bb][:, None] * qr2 + jnp.arange(qr2)[None, :]
                S_ab = Srr[rows[:, :, None], cols[:, None, :]]  # (npp, qr, qr2)
                npr = XP[r].shape[0]
                sp[r] = sp[r] - _segsum(sb.matmul(S_ab, XP[r2][bb]), a, npr)
                mirror = jnp.where((r == r2) & (a == bb), 0.0, 1.0)[:, None, None]
                S_ba = jnp.swapaxes(S_ab, 1, 2) * mirror
                sp[r2] = sp[r2] - _segsum(sb.matmul(S_ba, XP[r][a]), bb, XP[r2].shape[0])
            for l in range(k + 1, nchain):
                # Sigma(i_p, parent_l(j)) from the stored column blocks of chain factor l
                s_il = SP[l, r][stats.pmap[k, l, r]]  # (npairs, qr, ql)
                sp[r] = sp[r] - sb.matmul(s_il, XC[l][stats.pj[k, r]])
        sc = {}
        for l in range(k + 1, nchain):
            par = stats.parent[k, l]
            acc = -sb.matmul(Sdiag[l][par], XC[l])
            for l2 in range(k + 1, nchain):
                if l2 == l:
                    continue
                if l < l2:
                    s_ll2 = jnp.swapaxes(SC[l, l2][par], 1, 2)  # Sigma(par_l, par_l2)
                else:
                    s_ll2 = SC[l2, l][stats.parent[k, l2]]
                acc = acc - sb.matmul(s_ll2, XC[l2])
            for r in rest:
                s_li = jnp.swapaxes(SP[l, r][stats.pmap[k, l, r]], 1, 2)  # (npairs, ql, qr)
                acc = acc - _segsum(sb.matmul(s_li, XP[r]), stats.pj[k, r], G)
            sc[l] = acc
        Sjj = sb.matmul_tn(Li, Li)
        for l in range(k + 1, nchain):
            Sjj = Sjj - sb.matmul_tn(XC[l], sc[l])
            SC[k, l] = sc[l]
        for r in rest:
            Sjj = Sjj - _segsum(sb.matmul_tn(XP[r], sp[r]), stats.pj[k, r], G)
            SP[k, r] = sp[r]
        Sdiag[k] = Sjj
    cond_var = tuple(sb.matmul_nt(sb.matmul(f.T[k][None], Sdiag[k]), f.T[k][None])
                     for k in range(K))
    sc = stats.scale
    beta, xtx_inv = _unscale(gamma, xtx_inv, sc, st.intercept)
    value = criterion(pc.logdet_l, pc.logdet_x, pc.pwrss, stats, reml)
    if st.padding:  # empty levels appended by placement.shard_stats: not the user's
        keep = st.nlevels(0)
        u, b, cond_var = ((x[0][:keep],) + tuple(x[1:]) for x in (u, b, cond_var))
    return Solution(beta, xtx_inv, tuple(sc.s * x for x in u), tuple(sc.s * x for x in b),
                    cond_var, sc.s * sigma, value, sc.s ** 2 * pc.pwrss, pc.logdet_l,
                    pc.logdet_x + 2.0 * log_det_r(sc))
