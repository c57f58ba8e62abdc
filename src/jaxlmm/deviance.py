"""Profiled criteria: ML deviance and REML criterion as functions of theta alone.

With r^2 = pwrss, log|L|^2 and log|R_X|^2 read off the blocked factor (pls.py),
beta and sigma profiled out (Bates et al. 2015, eqs. 34 and 41):

    ML:   -2 l(theta)   = log|L|^2 - sum log w + n     (1 + log(2 pi r^2 / n))
    REML: -2 l_R(theta) = log|L|^2 - sum log w + log|R_X|^2 + (n-p) (1 + log(2 pi r^2 / (n-p)))

y and X were scaled before forming the statistics (stats.py); the exact corrections
n log s^2 (or (n-p) log s^2) and 2 sum log d_j restore the criterion of the original data.

Derivatives (``derivatives``): by autodiff through the whole factor when the dense block is
small; with a large dense block, split the criterion as f = c(theta) + Phi(M(theta)) + const
(c: the chain factors' log-determinant, M: the dense block, Phi: dense.py). With
Gamma = dPhi/dM held fixed and psi(theta) = c(theta) + <Gamma, M(theta)>,

    grad f = grad psi,    Hess f = Hess psi + d2Phi[dM/dtheta_i, dM/dtheta_j].

psi contracts Gamma with the Schur updates instead of forming M (linearized.py), so its
derivatives of any order are cheap; the m^3 work is one Cholesky, one inverse and, for the
Hessian, k products.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from . import autodiff, crossed, linearized, onefactor
from . import smallblock as sb
from .dense import chol_sym, curvature, curvature_from, dense_logdets, gradient_matrix, \
    inverse_pieces, logdets_of_factor
from .pls import LARGE_DENSE, assemble, factorize, pieces, schur_parts
from .stats import Stats


def objective(theta, stats: Stats, reml: bool = True):
    """The profiled criterion at theta: lme4's REMLcrit() (reml=True) or deviance()."""
    st = stats.struct
    if st.m_rand <= LARGE_DENSE:  # differentiate through the Cholesky (cheap, fast compile)
        pc = pieces(factorize(theta, stats), st)
        return criterion(pc.logdet_l, pc.logdet_x, pc.pwrss, stats, reml)
    chain, Msc, parts = _chain_parts(theta, stats)
    ld_rest, logdet_x, pwrss = dense_logdets(assemble(Msc, parts), st.m_rand, st.p)
    return criterion(chain + ld_rest, logdet_x, pwrss, stats, reml)


def _dense_value(theta, stats: Stats, reml: bool):
    """``objective`` for the optimizer's line search: only the lower triangle of the dense
    block is formed (two passes over it fewer); not for differentiating through."""
    chain, Msc, parts = _chain_parts(theta, stats)
    return _criterion_of_factor(chol_sym(assemble(Msc, parts, lower_only=True)), chain, stats,
                                reml)


def _criterion_of_factor(L, chain, stats: Stats, reml: bool):
    """The criterion from the dense block's Cholesky factor L and the chain log-determinant."""
    st = stats.struct
    ld_rest, logdet_x, pwrss = logdets_of_factor(L, st.m_rand, st.p)
    return criterion(chain + ld_rest, logdet_x, pwrss, stats, reml)


def log_det_r(scale):
    """log det R of the fixed effects' reparametrization (stats.Scale)."""
    return jnp.sum(jnp.log(jnp.diagonal(scale.R)))


def criterion(logdet_l, logdet_x, pwrss, stats: Stats, reml: bool):
    n = stats.n
    p = stats.struct.p
    log_s, log_d = jnp.log(stats.scale.s), log_det_r(stats.scale)
    if reml:
        nu = n - p
        return (logdet_l + logdet_x + 2.0 * log_d - stats.ldw
                + nu * (1.0 + jnp.log(2.0 * jnp.pi * pwrss / nu)) + 2.0 * nu * log_s)
    return (logdet_l - stats.ldw + n * (1.0 + jnp.log(2.0 * jnp.pi * pwrss / n))
            + 2.0 * n * log_s)


def _chain_parts(theta, stats: Stats):
    """(log-determinant of the chain factors, Lambda'M Lambda + I, Schur update parts)."""
    _, Ls, _, _, _, Msc, parts = schur_parts(theta, stats)
    return 2.0 * sum(sb.log_diag_sum(L) for L in Ls), Msc, parts


def _dense_terms(M, chain, stats: Stats, reml: bool):
    """Criterion value, Gamma = dPhi/dM and the inverse pieces at the dense block M."""
    st = stats.struct
    L = chol_sym(M)
    value = _criterion_of_factor(L, chain, stats, reml)
    G, W = inverse_pieces(L, st.m_rand)
    # Phi = log|M_r| + a log|R_X|^2 + b log r^2 is the criterion up to constants
    a, b = (1.0, stats.n - st.p) if reml else (0.0, stats.n)
    Gam = lax.stop_gradient(gradient_matrix(G, W, a, b, st.p))
    return value, Gam, (G, W, a, b)


def _dense_value_grad(theta, stats: Stats, reml: bool):
    chain, Msc, parts = _chain_parts(theta, stats)
    value, Gam, _ = _dense_terms(assemble(Msc, parts, lower_only=True), chain, stats, reml)
    w, K = lax.stop_gradient(linearized.prepare(Gam, stats))
    psi = lambda t: linearized.psi(t, Gam, w, K, stats)  # noqa: E731
    _, g = autodiff.value_grad(psi, theta.shape[0])(theta)
    return value, g


def _psi_value_grad_hessian(theta, Gam, stats: Stats):
    w, K = lax.stop_gradient(linearized.prepare(Gam, stats))
    psi = lambda t: linearized.psi(t, Gam, w, K, stats)  # noqa: E731
    return autodiff.value_grad_hessian(psi, theta.shape[0])(theta)


def _crossed_value_grad_hessian(theta, stats: Stats, reml: bool):
    """``_dense_value_grad_hessian`` with the crossed thetas' tangents in closed form."""
    st = stats.struct
    ci, ri, E = crossed.split(st)
    S, Jc, chain = crossed.unscaled_block(theta, stats, ci, ri)
    lam = crossed.scaling(theta, ri, E)
    value, Gam, (G, W, a, b) = _dense_terms(crossed.scaled_block(lam, S, st), chain,
                                            stats, reml)
    _, g, H = _psi_value_grad_hessian(theta, Gam, stats)
    t_r, R = crossed.tangent_terms(theta, lam, S, Jc, G, W, ci, ri, E)
    H = H + curvature_from(t_r, R, G, W, a, b, st.p)
    return value, g, 0.5 * (H + H.T)


def _dense_value_grad_hessian(theta, stats: Stats, reml: bool):
    if crossed.applies(stats.struct):
        return _crossed_value_grad_hessian(theta, stats, reml)

    def dense_block(t):
        chain, Msc, parts = _chain_parts(t, stats)
        M = assemble(Msc, parts)
        return M, (M, chain)

    J, (M, chain) = jax.jacfwd(dense_block, has_aux=True)(theta)  # J: (m, m, k)
    value, Gam, (G, W, a, b) = _dense_terms(M, chain, stats, reml)
    _, g, H = _psi_value_grad_hessian(theta, Gam, stats)
    H = H + curvature(J, G, W, a, b, stats.struct.p)
    return value, g, 0.5 * (H + H.T)


def derivatives(struct, k: int) -> autodiff.Derivatives:
    """What the optimizer evaluates for ``objective(theta, stats, reml)``: closed-form
    gradients for one grouping factor (onefactor.py), else autodiff through the factor
    (small dense block) or the dense-block rules above."""
    if onefactor.applies(struct):
        return onefactor.derivatives()
    if struct.m_rand <= LARGE_DENSE:
        return autodiff.autodiff(objective, k)
    return autodiff.Derivatives(_dense_value, _dense_value_grad, _dense_value_grad_hessian)
