"""Starting values for theta.

lme4 starts every template diagonal at 1 and every off-diagonal at 0 (layout.theta_start);
``default`` is that start, with moment estimates where they pay off.
With a large dense block each optimizer iteration costs an m^3 factorization and inverse, so
there the scalar factors start from moment estimates computed from the statistics
(``moments``). The optimum does not depend on the start; the number of iterations does
(crossed 5k x 1k: 6 Newton iterations from 1, 2 from the moments; InstEval 8 -> 4).

Moments (one-way ANOVA per scalar factor, on the OLS residuals r = y - X beta_ols): for a
factor with column z and levels j, d_j = sum z^2, s_j = sum z r, SSB = sum_j s_j^2 / d_j.
With E[s_j^2 / d_j] ~ d_j sigma_b^2 + w^2 and w^2 = (rss - SSB) / (n - p - G) the
within-level variance,

    sigma_b^2 ~ (SSB - G w^2) / sum_j d_j,
    sigma^2   ~ rss / (n - p) - sum_k sigma_k^2 sum_j d_kj / n   (at least rss / (n - p) / 20),

and theta_k = sigma_k / sigma, at least THETA_MIN (no start on the boundary). Crossed factors
each act as noise in the others' one-way fits, so their estimates are nearly unbiased.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

from .pls import LARGE_DENSE
from .stats import Stats

THETA_MIN = 0.05


def use_moments(struct) -> bool:
    """Moment starts pay off where iterations are costly: a large dense block."""
    return struct.m_rand > LARGE_DENSE and any(q == 1 for _, q in struct.factors)


def default(stats: Stats):
    """The default theta0 (jittable): lme4's, with moment estimates for scalar factors when
    ``use_moments``."""
    lower = jnp.asarray(stats.struct.lower, stats.dtype)
    theta0 = jnp.where(jnp.isfinite(lower), 1.0, 0.0).astype(stats.dtype)
    return moments(stats, theta0) if use_moments(stats.struct) else theta0


def _level_sums(stats: Stats, k: int):
    """(d_j, Z_k'[X y] per level) for scalar factor k (elimination order)."""
    st = stats.struct
    nchain = len(st.chain)
    if k < nchain:
        return stats.D[k][:, 0, 0], stats.E[k][:, :, 0]
    G = st.factors[k][0]
    off = st.rest_offsets[k - nchain]
    rows = slice(off, off + G)
    return jnp.diagonal(stats.M)[rows], stats.M[st.m_rand:, rows].T


@jax.jit
def moments(stats: Stats, theta0):
    """theta0 with each scalar factor's entry replaced by its moment estimate."""
    st = stats.struct
    p, xy0, n = st.p, st.m_rand, stats.n
    M = stats.M
    XtX, Xty, yty = M[xy0:xy0 + p, xy0:xy0 + p], M[xy0:xy0 + p, -1], M[-1, -1]
    beta = cho_solve(cho_factor(XtX, lower=True), Xty) if p > 0 else Xty
    rss = yty - Xty @ beta
    s2 = rss / jnp.maximum(n - p, 1.0)
    var, tot = {}, 0.0
    for k, (_, q) in enumerate(st.factors):
        if q != 1:
            continue
        G = st.nlevels(k)  # empty padding levels (placement.py) are not counted
        d, zxy = _level_sums(stats, k)
        s = zxy[:, p] - zxy[:, :p] @ beta
        ssb = jnp.sum(jnp.where(d > 0, s ** 2 / jnp.where(d > 0, d, 1.0), 0.0))
        w2 = jnp.maximum((rss - ssb) / jnp.maximum(n - p - G, 1.0), 1e-12 * s2)
        var[k] = jnp.maximum((ssb - G * w2) / jnp.sum(d), 0.0)
        tot = tot + var[k] * jnp.sum(d) / n
    sigma2 = jnp.maximum(s2 - tot, s2 / 20.0)
    theta = theta0
    for k, v in var.items():
        theta = theta.at[st.templates[k][0][0]].set(jnp.maximum(jnp.sqrt(v / sigma2), THETA_MIN))
    return theta
