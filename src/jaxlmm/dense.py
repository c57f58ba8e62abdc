"""Linear algebra on the dense Schur block M = [rest; X; y] (crossed factors, X, y).

With L = chol(M), W = L^{-1} (rows w_i) and M_k the leading k x k block,
log|M_k| = sum_{i<k} log L_ii^2 and M_k^{-1} (padded with zeros) = sum_{i<k} w_i w_i'. The
profiled criterion needs log|M_r| (r = random-effect rows), log|R_X|^2 = log|M_{r+p}| -
log|M_r| and log r^2 = log|M| - log|M_{r+p}|, so its derivatives in M need only
G_r = M_r^{-1} and the last p + 1 rows of W (``inverse_pieces``):

    d log|M_r| = <G_r, dM>,  d log|R_X|^2 = sum_{i in X} w_i' dM w_i,  d log r^2 = w_y' dM w_y

and the second derivatives follow from d G = -G dM G (``curvature``). See docs/numerics.md.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

BASE = 256  # below this size the recursions below hand over to a triangular solve


def chol_sym(M):
    """Cholesky factor of a matrix that is symmetric by construction.

    Skips jnp.linalg.cholesky's (M + M')/2, a transposed copy of the whole block that cost
    6.5 of 16 ms on the 1,160-row InstEval block; only the lower triangle is read.
    """
    return lax.linalg.cholesky(M, symmetrize_input=False)


def tri_inv(L):
    """Inverse of a lower-triangular matrix by recursive 2 x 2 blocking.

    inv([[A, 0], [B, C]]) = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]: the work is matrix products,
    which XLA runs several times faster than a triangular solve against the identity.
    """
    n = L.shape[0]
    if n <= BASE:
        return solve_triangular(L, jnp.eye(n, dtype=L.dtype), lower=True)
    h = n // 2
    Ai, Ci = tri_inv(L[:h, :h]), tri_inv(L[h:, h:])
    out = jnp.zeros_like(L)
    return out.at[:h, :h].set(Ai).at[h:, :h].set(-(Ci @ (L[h:, :h] @ Ai))).at[h:, h:].set(Ci)


def gram(Li):
    """Li' Li for lower-triangular Li, recursively (a third of the flops of a full product)."""
    n = Li.shape[0]
    if n <= BASE:
        return Li.T @ Li
    h = n // 2
    A, B, C = Li[:h, :h], Li[h:, :h], Li[h:, h:]
    tr = B.T @ C
    out = jnp.zeros_like(Li)
    return out.at[:h, :h].set(gram(A) + B.T @ B).at[:h, h:].set(tr).at[h:, :h].set(tr.T) \
              .at[h:, h:].set(gram(C))


def leading_inverse(L, mr: int):
    """M_r^{-1} = (L_r L_r')^{-1} for the leading mr x mr block of M = L L'."""
    return gram(tri_inv(L[:mr, :mr])) if mr > 0 else jnp.zeros((0, 0), L.dtype)


def inverse_pieces(L, mr: int):
    """G_r = M_r^{-1} (mr x mr) and the rows mr.. of W = L^{-1} ((m - mr) x m).

    With L = [[A, 0], [B, C]] (A = L_r), the rows of L^{-1} below A are
    [-C^{-1} B A^{-1}, C^{-1}]: one thin product with A^{-1}, which G_r needs anyway (a
    triangular solve against the last rows of the identity cost 4 ms on InstEval's block).
    """
    m = L.shape[0]
    if mr == 0:
        return jnp.zeros((0, 0), L.dtype), tri_inv(L)
    Ai = tri_inv(L[:mr, :mr])
    Ci = solve_triangular(L[mr:, mr:], jnp.eye(m - mr, dtype=L.dtype), lower=True)
    W = jnp.concatenate([-(Ci @ (L[mr:, :mr] @ Ai)), Ci], axis=1)
    return gram(Ai), W


def logdets_of_factor(L, mr: int, p: int):
    """(log|M_r|, log|R_X|^2, r^2) read off the diagonal of L."""
    d = jnp.log(jnp.diagonal(L))
    return 2.0 * jnp.sum(d[:mr]), 2.0 * jnp.sum(d[mr:mr + p]), L[-1, -1] ** 2


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def dense_logdets(M, mr: int, p: int):
    """``logdets_of_factor(chol(M))`` with the tangent rules of the module docstring.

    Cheaper than differentiating through the Cholesky factorization (one inverse instead of
    several m^3 triangular solves and products per tangent); JAX transposes it for reverse
    mode.
    """
    return logdets_of_factor(chol_sym(M), mr, p)


@dense_logdets.defjvp
def _dense_logdets_jvp(mr, p, primals, tangents):
    (M,), (dM,) = primals, tangents
    L = chol_sym(M)
    out = logdets_of_factor(L, mr, p)
    G, W = inverse_pieces(L, mr)
    q = jnp.sum((W @ dM) * W, axis=1)  # w_i' dM w_i for i >= mr
    t1 = jnp.sum(G * dM[:mr, :mr])
    return out, (t1, jnp.sum(q[:p]), out[2] * q[p])


def gradient_matrix(G, W, a, b, p: int):
    """Gamma = d Phi / dM for Phi = log|M_r| + a log|R_X|^2 + b log r^2 (symmetric, m x m)."""
    m = W.shape[1]
    mr = G.shape[0]
    Wx, u = W[:p], W[p]
    Gam = jnp.zeros((m, m), W.dtype).at[:mr, :mr].set(G)
    return Gam + a * (Wx.T @ Wx) + b * jnp.outer(u, u)


def curvature(J, G, W, a, b, p: int):
    """d2 Phi [M_i, M_j] for the k tangents J[:, :, i] = dM/dtheta_i (Phi as above).

    With G2 = G_r + Wx'Wx (the inverse of the leading r + p block) and u = w_y:
      d2 log|M_r|     = -tr(G_r A G_r B)
      d2 log|R_X|^2   = -[tr(Wx A G_r B Wx') + tr(Wx B G_r A Wx') + tr(Wx A Wx' Wx B Wx')]
      d2 log r^2      = -[u'A G2 B u + u'B G2 A u + (u'A u)(u'B u)]
    Only the first needs m^3 work: the k products G_r A (one per parameter).
    """
    mr = G.shape[0]
    P = jnp.einsum("ab,bck->kac", G, J[:mr, :mr, :])  # G_r M_i
    t_r = jnp.einsum("iab,jba->ij", P, P)
    R = jnp.einsum("abk,cb->kac", J, W)  # M_i W'      (k, m, p+1)
    return curvature_from(t_r, R, G, W, a, b, p)


def curvature_from(t_r, R, G, W, a, b, p: int):
    """``curvature`` from t_r = tr(G_r M_i G_r M_j) and R = M_i W' (k, m, p+1).

    Callers that know the tangents' structure compute these two without the k products
    (scalar crossed factors: crossed.py); the rest is O(k m^2 p) work.
    """
    mr = G.shape[0]
    S = jnp.einsum("ab,kbc->kac", G, R[:, :mr])  # G_r M_i W'  (k, mr, p+1)
    Q = jnp.einsum("ca,kab->kcb", W, R)  # W M_i W'    (k, p+1, p+1)
    cross = jnp.einsum("iac,jac->ijc", S, R[:, :mr])
    qx = Q[:, :p, :p]
    cx = jnp.sum(cross[:, :, :p], axis=2)
    t_x = cx + cx.T + jnp.einsum("icd,jdc->ij", qx, qx)
    uGu = cross[:, :, p] + Q[:, :p, p] @ Q[:, :p, p].T
    t_y = uGu + uGu.T + jnp.outer(Q[:, p, p], Q[:, p, p])
    return -(t_r + a * t_x + b * t_y)
