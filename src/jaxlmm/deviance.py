"""Profiled criteria: ML deviance and REML criterion as functions of theta alone.

With r^2 = pwrss, log|L|^2 and log|R_X|^2 read off the blocked factor (pls.py),
beta and sigma profiled out (Bates et al. 2015, eqs. 34 and 41):

    ML:   -2 l(theta)   = log|L|^2 - sum log w + n     (1 + log(2 pi r^2 / n))
    REML: -2 l_R(theta) = log|L|^2 - sum log w + log|R_X|^2 + (n-p) (1 + log(2 pi r^2 / (n-p)))

y and X were scaled before forming the statistics (stats.py); the exact corrections
n log s^2 (or (n-p) log s^2) and 2 sum log d_j restore the criterion of the original data.
"""

from __future__ import annotations

import jax.numpy as jnp

from . import smallblock as sb
from .pls import LARGE_DENSE, dense_logdets, eliminate_chain, factorize, pieces
from .stats import Stats


def objective(theta, stats: Stats, reml: bool = True):
    """The profiled criterion at theta: lme4's REMLcrit() (reml=True) or deviance()."""
    st = stats.struct
    if st.m_rand <= LARGE_DENSE:  # differentiate through the Cholesky (cheap, fast compile)
        pc = pieces(factorize(theta, stats), st)
        return criterion(pc.logdet_l, pc.logdet_x, pc.pwrss, stats, reml)
    _, Ls, _, _, _, M = eliminate_chain(theta, stats)
    ld_rest, logdet_x, pwrss = dense_logdets(M, st.m_rand, st.p)
    logdet_l = 2.0 * sum(sb.log_diag_sum(L) for L in Ls) + ld_rest
    return criterion(logdet_l, logdet_x, pwrss, stats, reml)


def criterion(logdet_l, logdet_x, pwrss, stats: Stats, reml: bool):
    n = stats.n
    p = stats.struct.p
    log_s, log_d = stats.log_scale[0], stats.log_scale[1]
    if reml:
        nu = n - p
        return (logdet_l + logdet_x + 2.0 * log_d - stats.ldw
                + nu * (1.0 + jnp.log(2.0 * jnp.pi * pwrss / nu)) + 2.0 * nu * log_s)
    return (logdet_l - stats.ldw + n * (1.0 + jnp.log(2.0 * jnp.pi * pwrss / n))
            + 2.0 * n * log_s)
