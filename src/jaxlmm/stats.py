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

from dataclasses import dataclass, replace
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

    def __add__(self, other: "Stats") -> "Stats":
        """The statistics of the union of two disjoint sets of rows of one design, computed
        with one Scale (``chunk_stats``): every block is a sum over rows."""
        if not isinstance(other, Stats):
            return NotImplemented
        if other.struct != self.struct:
            raise ValueError("statistics of different designs cannot be added")
        same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(np.asarray(a),
                                                                       np.asarray(b))),
                                      self.scale, other.scale)
        if not all(jax.tree_util.tree_leaves(same)):
            raise ValueError("statistics computed with different Scales cannot be added; "
                             "compute the chunks with chunk_stats(design, rows, scale) and "
                             "one scale (e.g. sample_scale(design))")
        add = partial(jax.tree_util.tree_map, jnp.add)
        return replace(self, D=add(self.D, other.D), C=add(self.C, other.C),
                       P=add(self.P, other.P), E=add(self.E, other.E), M=self.M + other.M,
                       n=self.n + other.n, ldw=self.ldw + other.ldw)


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


def _x0(X, y, i0):
    """The intercept column (zeros without an intercept)."""
    return X[:, i0] if i0 is not None else jnp.zeros_like(y)


def _scale(X, y, w, i0):
    """Scale (see there) of weighted data; returns it and the intercept column x0."""
    sw = jnp.sum(w)
    n, p = X.shape
    x0 = _x0(X, y, i0)
    if i0 is not None:
        c = jnp.dot(w, y) / sw
        m = (w @ X / sw).at[i0].set(0.0)
    else:
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
def _pass(Zs, codes, pair_rows, X, y, w, offset, struct: Structure, dtype, scale=None,
          valid=None):
    """The one pass over the rows: scaling, then every block of [Z X y]'W[Z X y].

    Inputs may be numpy arrays of any floating type: they are cast here, inside the compiled
    program (one transfer, no eager dispatches). ``scale``: use this Scale instead of the
    rows' own (chunks of one data set share one). ``valid``: False for padding rows, which
    must have weight 0 (they then add nothing)."""
    nchain = len(struct.chain)
    facs = struct.factors
    cast = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
    Zs, X, y, offset = [cast(Z) for Z in Zs], cast(X), cast(y), cast(offset)
    w = jnp.ones(y.shape[0], dtype) if w is None else cast(w)
    if offset is not None:
        y = y - offset
    if scale is None:
        scale, x0 = _scale(X, y, w, struct.intercept)
    else:
        scale, x0 = jax.tree_util.tree_map(cast, scale), _x0(X, y, struct.intercept)
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
    if valid is None:
        n, ldw = jnp.asarray(y.shape[0], XY.dtype), jnp.sum(jnp.log(w))
    else:
        n = jnp.sum(valid).astype(XY.dtype)
        ldw = jnp.sum(jnp.where(valid, jnp.log(jnp.where(valid, w, 1.0)), 0.0))
    return tuple(D), C, P, tuple(E), M, n, ldw, scale


def _inputs(design, y, X, dtype):
    """The response, X and dtype a pass uses (validated)."""
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
    return y, X, dtype


def _stats(design, out) -> Stats:
    D, C, P, E, M, nobs, ldw, scale = out
    pat = design.pattern
    return Stats(D=D, C=C, P=P, E=E, M=M, n=nobs, ldw=ldw, scale=scale, struct=design.struct,
                 parent=pat.parent, pi=pat.pi, pj=pat.pj, pmap=pat.pmap, ppa=pat.ppa,
                 ppb=pat.ppb, ppt=pat.ppt, ppj=pat.ppj)


def suffstats(design, y=None, X=None, *, dtype=None, chunk_rows: int | None = None) -> Stats:
    """Sufficient statistics of a design (modeldesign.Design): a ``Stats`` pytree.

    ``y`` (n,) and ``X`` (n, p) replace the design's response and fixed-effects matrix (same
    shapes; X keeps the design's intercept column, if any, and should have full column
    rank, which is checked only for the design's own X). Pure and jittable: inside
    ``jax.vmap`` over ``y`` only the y-dependent blocks are batched; derivatives in ``y``
    and ``X`` are exact. ``dtype`` (default float64) is the floating type of the statistics.

    ``chunk_rows``: make the pass in chunks of this many rows and add them up (``chunk_stats``),
    so that the pass's temporaries are bounded by the chunk, not by n (host loop: not under
    jit). The chunks share one Scale taken from an evenly spaced sample of up to 100,000
    rows (``sample_scale``); criterion and estimates are the same as from one pass. Each
    chunk writes every per-level block in full, so chunks much larger than the number of
    levels keep the overhead small.
    """
    y, X, dtype = _inputs(design, y, X, dtype)
    n = design.X.shape[0]
    if chunk_rows is not None:
        chunk_rows = int(chunk_rows)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive number of rows, got {chunk_rows}")
    if chunk_rows is None or n <= chunk_rows:
        pat = design.pattern
        pair_rows = {key: (pat.prow[key], pat.pi[key]) for key in pat.pi}
        return _stats(design, _pass(tuple(design.Z), design.codes, pair_rows, X, y,
                                    design.weights, design.offset, design.struct, dtype))
    scale = sample_scale(design, y=y, X=X, rows=min(chunk_rows, 100_000), dtype=dtype)
    total = None
    for start in range(0, n, chunk_rows):
        part = chunk_stats(design, slice(start, min(start + chunk_rows, n)), scale, y=y, X=X,
                           dtype=dtype, pad_to=chunk_rows)
        total = part if total is None else total + part
    return total


def _rows(a, rows, pad: int, fill=0):
    """a[rows] (host), padded with ``pad`` rows of ``fill``."""
    out = np.asarray(a)[rows]
    if pad:
        out = np.concatenate([out, np.full((pad,) + out.shape[1:], fill, out.dtype)])
    return out


def sample_scale(design, y=None, X=None, *, rows: int = 100_000, dtype=None) -> Scale:
    """The Scale (centring, scaling, orthogonalization; see ``Scale``) of an evenly spaced
    sample of ``rows`` rows: any Scale is an exact reparametrization, a representative one
    keeps the cross-products well conditioned."""
    y, X, dtype = _inputs(design, y, X, dtype)
    n = design.X.shape[0]
    k = max(min(n, int(rows)), 1)
    idx = (np.arange(k, dtype=np.int64) * (n - 1)) // max(k - 1, 1)  # evenly spaced, sorted
    w = None if design.weights is None else np.asarray(design.weights)[idx]
    off = None if design.offset is None else np.asarray(design.offset)[idx]
    return _sample_scale(np.asarray(X)[idx], np.asarray(y)[idx], w, off,
                         intercept=design.struct.intercept, dtype=dtype)


@partial(jax.jit, static_argnames=("intercept", "dtype"))
def _sample_scale(X, y, w, offset, intercept, dtype):
    X, y = jnp.asarray(X, dtype), jnp.asarray(y, dtype)
    w = jnp.ones(y.shape[0], dtype) if w is None else jnp.asarray(w, dtype)
    if offset is not None:
        y = y - jnp.asarray(offset, dtype)
    return _scale(X, y, w, intercept)[0]


def _padded(design, rows, pad_to: int | None, y, X):
    """The pass's per-row inputs for ``rows`` of the design, padded with rows of weight 0 up
    to ``pad_to`` rows: (Zs, codes, pair rows in ``design.pattern.pi``'s key order, X, y, w,
    offset or None, valid or None when nothing was padded)."""
    n = design.X.shape[0]
    k = len(np.arange(n)[rows])
    pad = 0 if pad_to is None else max(int(pad_to) - k, 0)
    pat = design.pattern
    w = np.ones(n) if design.weights is None else design.weights
    return (tuple(_rows(Z, rows, pad) for Z in design.Z),
            tuple(_rows(c, rows, pad) for c in design.codes),
            tuple(_rows(pat.prow[key], rows, pad) for key in pat.pi),
            _rows(X, rows, pad), _rows(y, rows, pad), _rows(w, rows, pad),
            None if design.offset is None else _rows(design.offset, rows, pad),
            np.arange(k + pad) < k if pad else None)


def chunk_stats(design, rows, scale: Scale, *, y=None, X=None, dtype=None,
                pad_to: int | None = None) -> Stats:
    """The statistics of some rows of a design (a slice or an index array) with a given
    Scale (e.g. ``sample_scale(design)``). Statistics of disjoint rows with one Scale add up
    (``Stats.__add__``) to those of all the rows. ``pad_to``: pad the chunk with rows of
    weight 0 to this many rows, so that chunks of one size share one compiled pass."""
    y, X, dtype = _inputs(design, y, X, dtype)
    Zs, codes, prows, Xr, yr, wr, offr, valid = _padded(design, rows, pad_to, y, X)
    pair_rows = {key: (prows[i], pi) for i, (key, pi) in enumerate(design.pattern.pi.items())}
    out = _pass(Zs, codes, pair_rows, Xr, yr, wr, offr, design.struct, dtype, scale=scale,
                valid=valid)
    return _stats(design, out)


def sharded_suffstats(design, devices=None, *, y=None, X=None, dtype=None) -> Stats:
    """The statistics pass split by rows across ``devices`` (default: all of JAX's devices)
    with JAX's own sharding: each device reduces its rows (shard_map) and the blocks are
    summed across devices (psum). One Scale, from ``sample_scale``, is shared; rows are padded
    with weight-0 rows to a multiple of the device count. Equal to ``suffstats`` up to
    rounding, on any number of devices."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as Spec

    devices = list(jax.devices() if devices is None else devices)
    y, X, dtype = _inputs(design, y, X, dtype)
    n = design.X.shape[0]
    nd = len(devices)
    scale = sample_scale(design, y=y, X=X, dtype=dtype)
    pat = design.pattern
    keys = list(pat.pi)
    st = design.struct

    def local(Zs, codes, prows, pis, Xl, yl, wl, offl, valid, sc):
        # without padding (valid None) each shard counts its own rows; psum adds them
        pair_rows = {key: (prows[i], pis[i]) for i, key in enumerate(keys)}
        D, C, P, E, M, nobs, ldw, _ = _pass(Zs, codes, pair_rows, Xl, yl, wl, offl, st, dtype,
                                           scale=sc, valid=valid)
        return jax.lax.psum((D, C, P, E, M, nobs, ldw), "rows")

    Zs, codes, prows, Xr, yr, wr, offr, valid = _padded(design, slice(0, n), -(-n // nd) * nd,
                                                        y, X)
    args = (Zs, codes, prows, tuple(np.asarray(pat.pi[key]) for key in keys), Xr, yr, wr,
            offr, valid, scale)
    row_spec, rep = Spec("rows"), Spec()
    specs = (row_spec, row_spec, row_spec, rep, row_spec, row_spec, row_spec, row_spec,
             row_spec, rep)
    mesh = Mesh(np.array(devices), ("rows",))
    placed = tuple(jax.tree_util.tree_map(
        lambda a, s=s: jax.device_put(a, NamedSharding(mesh, s)), a) for a, s in zip(args, specs))
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=rep))
    D, C, P, E, M, nobs, ldw = fn(*placed)
    return _stats(design, (D, C, P, E, M, nobs, ldw, scale))
