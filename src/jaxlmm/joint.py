"""The joint log-density of the response and the random effects, unprofiled.

With prior weights W, offset o and b = Lambda u (Lambda block diagonal, one template T_k per
level of factor k, Sigma_k = sigma^2 T_k T_k'):

    log p(y | b, beta, sigma) = -1/2 [ n log(2 pi sigma^2) - sum log w
                                       + sum w (y - X beta - o - Z b)^2 / sigma^2 ]
    log p(b | theta, sigma)   = sum_k sum_j log N(b_jk; 0, sigma^2 T_k T_k')
    log p(u | sigma)          = -1/2 [ q log(2 pi sigma^2) + ||u||^2 / sigma^2 ]

so, as penalized least squares (q = total number of random effects),

    -2 log p(y, b) = (n + q) log(2 pi sigma^2) - sum log w + log|Lambda Lambda'|
                     + (||W^{1/2}(y - X beta - o - Z b)||^2 + ||u||^2) / sigma^2.

``penalty`` = log p(b) is the term that shrinks b toward 0: maximizing the joint density in
b (for fixed beta, theta, sigma) minimizes the penalized residual sum of squares and gives
the conditional modes of ``solve``. Integrating b out in closed form (the joint is Gaussian
in b) gives the marginal likelihood, log p(y) = log p(y, b_hat) + 1/2 log|2 pi H^{-1}| with
H = -d^2 log p(y, b)/db^2, which at the ML beta and sigma for theta is minus half the ML
deviance (``objective(theta, stats, reml=False)``).

log p(b) needs T_k nonsingular: with theta on its bound (a variance 0) it is degenerate
(-inf/NaN). The u-scale versions (``penalty_u``, ``joint_logdensity_u``; b = Lambda u)
stay finite for every theta; they differ from the b-scale ones by the Jacobian
log|det Lambda| when Lambda is nonsingular, and integrate to the same p(y).

All functions are pure JAX, jittable and differentiable in every numeric argument; ``b``
and ``u`` are tuples of (G_k, q_k) arrays in the design's factor order (that of
``solve(...).b``). Pass the design as an argument to jitted callers (docs/jax.md).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .modeldesign import Design
from .pls import templates

LOG_2PI = math.log(2.0 * math.pi)


def _fitted(b, beta, design: Design):
    """X beta + offset + Z b for the design's rows."""
    eta = jnp.asarray(design.X) @ beta
    if design.offset is not None:
        eta = eta + design.offset
    for Z, codes, bk in zip(design.Z, design.codes, b):
        eta = eta + jnp.sum(jnp.asarray(Z) * bk[codes], axis=1)
    return eta


def data_loglik(b, beta, sigma, design: Design):
    """log p(y | b, beta, sigma): the weighted Gaussian log-likelihood of the response given
    the random effects (module docstring)."""
    beta = jnp.asarray(beta)
    y = jnp.asarray(design.y, beta.dtype)
    r = y - _fitted(b, beta, design)
    s2 = sigma ** 2
    n = y.shape[0]
    if design.weights is None:
        wrss, ldw = jnp.sum(r * r), 0.0
    else:
        w = jnp.asarray(design.weights, beta.dtype)
        wrss, ldw = jnp.sum(w * r * r), jnp.sum(jnp.log(w))
    return -0.5 * (n * (LOG_2PI + jnp.log(s2)) - ldw + wrss / s2)


def penalty(b, theta, sigma, design: Design):
    """log p(b | theta, sigma) = sum over factors and levels of log N(b_jk; 0, sigma^2 T_k
    T_k'): the term that shrinks b toward 0. Degenerate (-inf/NaN) when a template is
    singular (theta on its bound); use ``penalty_u`` there."""
    T = templates(jnp.asarray(theta), design.struct)
    s2 = sigma ** 2
    out = 0.0
    for Tk, bk in zip(T, b):
        G, q = bk.shape
        uk = solve_triangular(Tk, bk.T, lower=True)  # (q, G): T_k^{-1} b_jk
        logdet = 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(Tk))))  # log|T_k T_k'|
        out = out - 0.5 * (G * (q * (LOG_2PI + jnp.log(s2)) + logdet)
                           + jnp.sum(uk * uk) / s2)
    return out


def penalty_u(u, sigma):
    """log p(u | sigma) = sum log N(u; 0, sigma^2 I): the spherical penalty."""
    s2 = sigma ** 2
    q = sum(uk.size for uk in u)
    return -0.5 * (q * (LOG_2PI + jnp.log(s2)) + sum(jnp.sum(uk * uk) for uk in u) / s2)


def joint_logdensity(b, beta, theta, sigma, design: Design):
    """log p(y, b | beta, theta, sigma) = ``data_loglik`` + ``penalty`` (b-scale; needs
    nonsingular templates, see ``joint_logdensity_u``)."""
    return data_loglik(b, beta, sigma, design) + penalty(b, theta, sigma, design)


def joint_logdensity_u(u, beta, theta, sigma, design: Design):
    """log p(y, u | beta, theta, sigma) with b = Lambda_theta u (b_jk = T_k u_jk): finite
    for every theta, singular fits included."""
    T = templates(jnp.asarray(theta), design.struct)
    b = tuple(uk @ Tk.T for uk, Tk in zip(u, T))
    return data_loglik(b, beta, sigma, design) + penalty_u(u, sigma)
