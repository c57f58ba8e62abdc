"""Closed-form gradient of the criterion for one grouping factor (no dense random block).

With one factor (any q) the criterion is f = sum_g log|D_g| + Phi(M - S) with, per level g,
A_g = Z_g'Z_g, e_g = [X y]'Z_g (p+1 x q), the template T and

    D_g = T'A_g T + I,   V_g = T D_g^{-1},   S = sum_g e_g T D_g^{-1} T' e_g' = sum_g P_g T'e_g',
    P_g = e_g V_g,       X_g = e_g (I - V_g T'A_g)                       (p+1 x q)

(Phi: log|R_X|^2 and the pwrss term of deviance.criterion, on the (p+1) x (p+1) block).
Differentiating D_g^{-1} gives, for a change dT of the template,

    d log|D_g| = <2 A_g V_g, dT>,    dS = sum_g (X_g dT P_g' + P_g dT' X_g'),

so one pass over the levels yields the q x q matrix sum_g 2 A_g V_g and the
((p+1) q)^2 tensor J[a,i,b,j] = sum_g X_g[a,i] P_g[b,j] (one (G, (p+1)q) matrix product),
and with Gamma = dPhi/dM at M - S

    df/dT[i,j] = sum_g 2 (A_g V_g)[i,j] - 2 sum_ab Gamma[a,b] J[a,i,b,j].

Autodiff of the same pass (forward, k tangents, or reverse) cost 25-30 times one value on
100k levels with q = 3, against about 3 times for this; see docs/numerics.md. The Hessian
is forward-mode autodiff of this gradient (exact).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import smallblock as sb
from .autodiff import Derivatives
from .dense import dense_logdets
from .pls import template_cells, templates
from .stats import Stats


def applies(struct) -> bool:
    """One grouping factor and nothing else random: the dense block is [X y] alone."""
    return len(struct.chain) == 1 and struct.m_rand == 0


def _levels(theta, stats: Stats, grad: bool):
    """The per-level pass: (T, sum log|D_g|, S) and, with ``grad``, (sum 2 A V, J)."""
    T = templates(theta, stats.struct)[0]
    A, e = stats.D[0], stats.E[0]
    q = T.shape[0]
    L = sb.cholesky(sb.congruence(A, T) + jnp.eye(q, dtype=theta.dtype))
    # e T L^-T (S = sum EW EW') as pls.py forms it, e T first: with theta far out (1e8 and
    # more) S cancels M's leading entries to rounding, and e (T L^-T) rounded them below 0
    EW = sb.solve_rt(sb.matmul(e, T), L)
    ek = EW.transpose(0, 2, 1).reshape(-1, e.shape[1])
    S = ek.T @ ek
    logdet = 2.0 * sb.log_diag_sum(L)
    if not grad:
        return T, logdet, S, None, None
    V = sb.solve_r(sb.solve_rt(T, L), L)  # T L^-T L^-1 = T D^-1
    P = sb.matmul(e, V)
    X = e - sb.matmul(P, sb.matmul_tn(T, A))
    # sums over the levels as matrix products (XLA:CPU reduces a (G, q, q) stack over G
    # several times slower)
    glog = 2.0 * jnp.einsum("gil,glj->ij", A, V)
    G = X.shape[0]
    J = (X.reshape(G, -1).T @ P.reshape(G, -1)).reshape(X.shape[1], q, X.shape[1], q)
    return T, logdet, S, glog, J


def _phi(logdet, S, stats: Stats, reml: bool):
    from .deviance import criterion

    p = stats.struct.p
    _, logdet_x, pwrss = dense_logdets(stats.M - S, 0, p)
    return criterion(logdet, logdet_x, pwrss, stats, reml)


def value(theta, stats: Stats, reml: bool = True):
    _, logdet, S, _, _ = _levels(theta, stats, False)
    return _phi(logdet, S, stats, reml)


def value_grad(theta, stats: Stats, reml: bool = True):
    T, logdet, S, glog, J = _levels(theta, stats, True)
    f, (d_ld, d_S) = jax.value_and_grad(_phi, argnums=(0, 1))(logdet, S, stats, reml)
    gam = 0.5 * (d_S + d_S.T)  # dPhi/dS = -Gamma
    gT = d_ld * glog + 2.0 * jnp.einsum("ab,aibj->ij", gam, J)
    idx, rows, cols = template_cells(stats.struct.templates[0])
    return f, jnp.zeros_like(theta).at[idx].add(gT[rows, cols])


def value_grad_hessian(theta, stats: Stats, reml: bool = True):
    def grad_aux(t):
        f, g = value_grad(t, stats, reml)
        return g, (f, g)

    H, (f, g) = jax.jacfwd(grad_aux, has_aux=True)(theta)
    return f, g, 0.5 * (H + H.T)


def derivatives() -> Derivatives:
    return Derivatives(value, value_grad, value_grad_hessian)
