"""Sufficient statistics: the blocks of [Z X y]'W[Z X y], built in one pass over the rows.

After this pass nothing in a deviance evaluation touches an n-length array. The blocks
(MixedModels.jl's ``A``), for factors in elimination order (see layout.py):

* ``D[k]``       (G_k, q_k, q_k)  Z_k'Z_k per level of chain factor k
* ``C[k, l]``    (G_k, q_l, q_k)  Z_l'Z_k per level of chain factor k, l a later chain factor
                                   (k nested in l: one level of l per level of k, ``parent``)
* ``P[k, r]``    (npairs, q_r, q_k) Z_r'Z_k for each co-occurring (level i of rest factor r,
                                   level j of chain factor k) pair ``(pi, pj)``, sorted by j
* ``E[k]``       (G_k, p+1, q_k)  [X y]'Z_k per level
* ``M``          (m, m) dense      the rest factors' Z'Z, their Z'[X y], and [X y]'[X y]

plus the design's index lists (pattern.py). Rows are multiplied by sqrt(prior weight); y and
the non-intercept columns of X are centred and scaled first (``Scale``; the criterion and the
estimates are mapped back exactly, see docs/numerics.md).

``suffstats`` is a pure JAX function of the design's arrays: it can be jitted, vmapped over
responses (only the y-dependent blocks E and M are then batched) and differentiated in y and X.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .layout import Structure


@partial(jax.tree_util.register_dataclass,
         data_fields=["D", "C", "parent", "P", "pi", "pj", "pmap", "ppa", "ppb", "ppt", "ppj",
                      "E", "M", "n", "ldw", "scale"],
         meta_fields=["struct"])
@dataclass(frozen=True)
class Stats:
    """Sufficient statistics pytree; ``struct`` is static, everything else is an array."""

    D: tuple
    C: dict
    parent: dict
    P: dict
    pi: dict
    pj: dict
    pmap: dict
    ppa: dict
    ppb: dict
    ppt: dict  # flat target index (row * m + col) in the dense block, ascending
    ppj: dict  # first chain factor, scalar crossed factors only: pj[0, r][ppa]
    E: tuple
    M: jax.Array
    n: jax.Array  # number of observations (float)
    ldw: jax.Array  # sum(log(prior weights))
    scale: "Scale"
    struct: Structure

    @property
    def dtype(self):
        return self.M.dtype


class Scale(NamedTuple):
    """How y and X were centred, scaled and orthogonalized before forming the cross-products.

    With x0 the intercept column (if any), Xs = (X - x0 m') R^{-1} and
    ys = (y - offset - c x0) / s, where m (and c) are weighted column means (0 without an
    intercept), s the weighted standard deviation of y and R the upper-triangular factor of
    the weighted QR decomposition of the centred non-intercept columns (identity in the
    intercept's row and column). So Xs has weighted-orthonormal columns orthogonal to x0,
    and X'X's condition number never enters the criterion (an ill-conditioned X made its
    value jitter and the optimizer stall). This is an exact reparametrization:
    Xs = X B with B = (I - e0 m') R^{-1}, so beta = B s gamma + c e0 for any values of
    (c, s, m, R); the criterion gets the exact corrections 2 nu log s and 2 log|det R|
    (deviance.py). The values are therefore held constant under differentiation.
    """

    c: jax.Array  # ()
    s: jax.Array  # ()
    m: jax.Array  # (p,)
    R: jax.Array  # (p, p) upper triangular, positive diagonal


def find_intercept(X: np.ndarray) -> int | None:
    """The first column of X that is all ones (host side), or None."""
    for j in range(X.shape[1]):
        col = X[:, j]
        if col.size and np.all(col == 1.0):
            return j
    return None


def _scale(X, y, w, i0):
    """Scale (see there) of weighted data; returns it and the intercept column x0."""
    sw = jnp.sum(w)
    n, p = X.shape
    if i0 is not None:
        x0 = X[:, i0]
        c = jnp.dot(w, y) / sw
        m = (w @ X / sw).at[i0].set(0.0)
    else:
        x0 = jnp.zeros_like(y)
        c = jnp.zeros((), y.dtype)
        m = jnp.zeros(p, X.dtype)
    s = jnp.sqrt(jnp.dot(w, (y - c * x0) ** 2) / sw)
    s = jnp.where(jnp.isfinite(s) & (s > 0), s, 1.0)
    cols = [j for j in range(p) if j != i0]
    R = jnp.eye(p, dtype=X.dtype)
    if cols:
        Xc = (X[:, cols] - x0[:, None] * m[jnp.asarray(cols)]) * jnp.sqrt(w / sw)[:, None]
        Rc = jnp.linalg.qr(Xc, mode="r")[:len(cols)]
        dg = jnp.diagonal(Rc)
        # positive diagonal; a (numerically) zero column keeps scale 1 instead of 1/0
        ok = jnp.abs(dg) > 1e-300
        Rc = Rc * jnp.where(ok, jnp.sign(dg), 1.0)[:, None]
        Rc = jnp.where(jnp.diag(~ok), 1.0, Rc)
        idx = jnp.asarray(cols)
        R = R.at[idx[:, None], idx[None, :]].set(Rc)
    return jax.lax.stop_gradient(Scale(c, s, m, R)), x0


# ---------------------------------------------------------------- the one pass


def _outer_sum(a, b, seg, num):
    """segment sums of the row outer products a_i b_i' -> (num, qa, qb)."""
    prod = a[:, :, None] * b[:, None, :]
    return jax.ops.segment_sum(prod, seg, num_segments=num)


@partial(jax.jit, static_argnames=("struct", "dtype"))
def _pass(Zs, codes, pair_rows, X, y, w, offset, struct: Structure, dtype):
    """The one pass over the rows: scaling, then every block of [Z X y]'W[Z X y].

    Inputs may be numpy arrays of any floating type: they are cast here, inside the compiled
    program (one transfer, no eager dispatches)."""
    nchain = len(struct.chain)
    facs = struct.factors
    cast = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
    Zs, X, y, offset = [cast(Z) for Z in Zs], cast(X), cast(y), cast(offset)
    w = jnp.ones(y.shape[0], dtype) if w is None else cast(w)
    if offset is not None:
        y = y - offset
    scale, x0 = _scale(X, y, w, struct.intercept)
    sw = jnp.sqrt(w)[:, None]
    # Xs = (X - x0 m') R^{-1}, i.e. R' Xs' = (X - x0 m')'
    Xs = jax.scipy.linalg.solve_triangular(scale.R, (X - x0[:, None] * scale.m).T,
                                           trans="T", lower=False).T
    ys = (y - scale.c * x0) / scale.s
    XY = jnp.concatenate([Xs, ys[:, None]], axis=1) * sw
    Zs = [Z * sw for Z in Zs]
    D, E, C, P = [], [], {}, {}
    for k in range(nchain):
        G = facs[k][0]
        D.append(_outer_sum(Zs[k], Zs[k], codes[k], G))
        E.append(_outer_sum(XY, Zs[k], codes[k], G))
        for l in range(k + 1, nchain):
            C[k, l] = _outer_sum(Zs[l], Zs[k], codes[k], G)
    for (k, r), (rows, pi) in pair_rows.items():
        P[k, r] = _outer_sum(Zs[r], Zs[k], rows, pi.shape[0])
    m = struct.m
    M = jnp.zeros((m, m), XY.dtype)
    xy0 = struct.m_rand
    for ri, r in enumerate(range(nchain, len(facs))):
        G, q = facs[r]
        off = struct.rest_offsets[ri]
        base = off + jnp.arange(G)[:, None] * q + jnp.arange(q)[None, :]  # (G, q)
        blk = _outer_sum(Zs[r], Zs[r], codes[r], G)
        M = M.at[base[:, :, None], base[:, None, :]].add(blk)
        zxy = _outer_sum(Zs[r], XY, codes[r], G)  # (G, q, p+1)
        cols = xy0 + jnp.arange(XY.shape[1])
        M = M.at[base[:, :, None], cols[None, None, :]].add(zxy)
        M = M.at[cols[None, None, :], base[:, :, None]].add(zxy)
        for ri2, r2 in enumerate(range(nchain, r)):
            G2, q2 = facs[r2]
            off2 = struct.rest_offsets[ri2]
            rows_r = off + codes[r][:, None] * q + jnp.arange(q)[None, :]
            rows_r2 = off2 + codes[r2][:, None] * q2 + jnp.arange(q2)[None, :]
            prod = Zs[r][:, :, None] * Zs[r2][:, None, :]
            M = M.at[rows_r[:, :, None], rows_r2[:, None, :]].add(prod)
            M = M.at[rows_r2[:, None, :], rows_r[:, :, None]].add(prod)
    M = M.at[xy0:, xy0:].add(XY.T @ XY)
    n = jnp.asarray(y.shape[0], XY.dtype)
    return tuple(D), C, P, tuple(E), M, n, jnp.sum(jnp.log(w)), scale


def suffstats(design, y=None, X=None, *, dtype=None) -> Stats:
    """Sufficient statistics of a design (modeldesign.Design): a ``Stats`` pytree.

    ``y`` (n,) and ``X`` (n, p) replace the design's response and fixed-effects matrix (same
    shapes; X keeps the design's intercept column, if any, and should have full column
    rank, which is checked only for the design's own X). Pure and jittable: inside
    ``jax.vmap`` over ``y`` only the y-dependent blocks are batched; derivatives in ``y``
    and ``X`` are exact. ``dtype`` (default float64) is the floating type of the statistics.
    """
    st = design.struct
    n, p = design.X.shape
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.dtype(jnp.float64)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    y = design.y if y is None else y
    X = design.X if X is None else X
    y, X = (a if isinstance(a, (np.ndarray, jax.Array)) else np.asarray(a) for a in (y, X))
    if jnp.shape(y) != (n,):
        raise ValueError(f"y must have shape ({n},) (one value per row of the design), "
                         f"got {jnp.shape(y)}; to fit many responses, jax.vmap over them")
    if jnp.shape(X) != (n, p):
        raise ValueError(f"X must have shape ({n}, {p}) (the design's rows and fixed-effects "
                         f"columns), got {jnp.shape(X)}")
    pat = design.pattern
    pair_rows = {key: (pat.prow[key], pat.pi[key]) for key in pat.pi}
    D, C, P, E, M, nobs, ldw, scale = _pass(tuple(design.Z), design.codes, pair_rows, X, y,
                                            design.weights, design.offset, st, dtype)
    return Stats(D=D, C=C, P=P, E=E, M=M, n=nobs, ldw=ldw, scale=scale, struct=st,
                 parent=pat.parent, pi=pat.pi, pj=pat.pj, pmap=pat.pmap, ppa=pat.ppa,
                 ppb=pat.ppb, ppt=pat.ppt, ppj=pat.ppj)
