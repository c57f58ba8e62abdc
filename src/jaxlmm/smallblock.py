"""Batched small-matrix kernels written out element by element.

Every function takes stacks of small matrices shaped ``(N, a, b)`` (batch axis first) and
unrolls the loops over the small dimensions at trace time, so XLA sees plain elementwise
operations over length-N vectors. For the block sizes that dominate mixed models (q = 1-3,
up to ~8) this is an order of magnitude faster on CPU than batched LAPACK calls, and it
differentiates (including second derivatives) without custom rules. See
docs/numerics.md, "Small-block kernels".

Shapes broadcast over the batch axis: a ``(1, a, b)`` or ``(a, b)`` operand is shared.
"""

from __future__ import annotations

import jax.numpy as jnp


def _b3(a):
    return a if a.ndim == 3 else a[None]


def matmul(a, b):
    """``a @ b`` for stacks: (N, r, c) x (N, c, s) -> (N, r, s), unrolled over c."""
    a, b = _b3(a), _b3(b)
    out = a[:, :, 0, None] * b[:, None, 0, :]
    for c in range(1, a.shape[2]):
        out = out + a[:, :, c, None] * b[:, None, c, :]
    return out


def matmul_nt(a, b):
    """``a @ b.T`` for stacks: (N, r, c) x (N, s, c) -> (N, r, s), unrolled over c."""
    a, b = _b3(a), _b3(b)
    out = a[:, :, 0, None] * b[:, None, :, 0]
    for c in range(1, a.shape[2]):
        out = out + a[:, :, c, None] * b[:, None, :, c]
    return out


def matmul_tn(a, b):
    """``a.T @ b`` for stacks: (N, c, r) x (N, c, s) -> (N, r, s), unrolled over c."""
    a, b = _b3(a), _b3(b)
    out = a[:, 0, :, None] * b[:, 0, None, :]
    for c in range(1, a.shape[1]):
        out = out + a[:, c, :, None] * b[:, c, None, :]
    return out


def congruence(a, t):
    """``t.T @ a @ t`` for a stack ``a`` (N, q, q) and a shared template ``t`` (q, q)."""
    return matmul_tn(t, matmul(a, t))


def cholesky(d):
    """Lower Cholesky factors of a stack of SPD matrices (N, q, q)."""
    q = d.shape[-1]
    lo = [[None] * q for _ in range(q)]
    for j in range(q):
        s = d[:, j, j]
        for k in range(j):
            s = s - lo[j][k] ** 2
        ljj = jnp.sqrt(s)
        lo[j][j] = ljj
        for i in range(j + 1, q):
            s = d[:, i, j]
            for k in range(j):
                s = s - lo[i][k] * lo[j][k]
            lo[i][j] = s / ljj
    zero = jnp.zeros_like(lo[0][0])
    rows = [jnp.stack([lo[i][j] if j <= i else zero for j in range(q)], axis=-1) for i in range(q)]
    return jnp.stack(rows, axis=-2)


def solve_rt(a, lo):
    """``a @ inv(lo).T``: solve ``x @ lo.T = a`` for x; a (N, r, q), lo (N, q, q) lower."""
    a, lo = _b3(a), _b3(lo)
    q = lo.shape[-1]
    cols = []
    for c in range(q):
        s = a[:, :, c]
        for k in range(c):
            s = s - cols[k] * lo[:, c, k, None]
        cols.append(s / lo[:, c, c, None])
    return jnp.stack(cols, axis=-1)


def solve_r(a, lo):
    """``a @ inv(lo)``: solve ``x @ lo = a`` for x; a (N, r, q), lo (N, q, q) lower."""
    a, lo = _b3(a), _b3(lo)
    q = lo.shape[-1]
    cols = [None] * q
    for c in reversed(range(q)):
        s = a[:, :, c]
        for k in range(c + 1, q):
            s = s - cols[k] * lo[:, k, c, None]
        cols[c] = s / lo[:, c, c, None]
    return jnp.stack(cols, axis=-1)


def solve_lt(lo, b):
    """``inv(lo).T @ b``: solve ``lo.T @ x = b``; lo (N, q, q) lower, b (N, q) or (N, q, s)."""
    vec = b.ndim == 2
    if vec:
        b = b[:, :, None]
    q = lo.shape[-1]
    rows = [None] * q
    for r in reversed(range(q)):
        s = b[:, r, :]
        for k in range(r + 1, q):
            s = s - lo[:, k, r, None] * rows[k]
        rows[r] = s / lo[:, r, r, None]
    x = jnp.stack(rows, axis=1)
    return x[:, :, 0] if vec else x


def inv_lower(lo):
    """Inverse of a stack of lower-triangular matrices (N, q, q)."""
    q = lo.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(q, dtype=lo.dtype), lo.shape)
    # x = inv(lo) solves x @ lo = I, i.e. solve_r(I, lo)
    return solve_r(eye, lo)


def log_diag_sum(lo):
    """Sum over the stack of log|diag(lo)|, the log-determinant of each factor added up."""
    q = lo.shape[-1]
    return sum(jnp.sum(jnp.log(lo[:, c, c])) for c in range(q))
