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

plus host-built index lists for the Schur updates (``pmap``, ``ppa``/``ppb``). Rows are
multiplied by sqrt(prior weight); y and the non-intercept columns of X are centred and scaled
first (the criterion is corrected exactly for the scaling; see docs/numerics.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .layout import Structure


@partial(jax.tree_util.register_dataclass,
         data_fields=["D", "C", "parent", "P", "pi", "pj", "pmap", "ppa", "ppb", "ppt", "ppj",
                      "E", "M", "n", "ldw", "log_scale"],
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
    log_scale: jax.Array  # (2,): log(y scale), sum(log(X column scales))
    struct: Structure


@dataclass(frozen=True)
class Scaling:
    """Host-side record of how y and X were centred/scaled before forming cross-products.

    With Xs = (X - 1 m') diag(1/d) and ys = (y - offset - c) / s, the coefficients satisfy
    beta = A^{-1} (s gamma + c e0), A = diag(d) + e0 m', where gamma are Xs's coefficients
    and e0 picks the intercept column (if any).
    """

    c: float
    s: float
    m: np.ndarray
    d: np.ndarray
    intercept: int | None

    def a_matrix(self) -> np.ndarray:
        a = np.diag(self.d)
        if self.intercept is not None:
            a[self.intercept, :] += self.m
        return a


def find_intercept(X: np.ndarray) -> int | None:
    for j in range(X.shape[1]):
        col = X[:, j]
        if col.size and np.all(col == 1.0):
            return j
    return None


def scaling(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> Scaling:
    """Weighted centring (when X has an intercept) and scaling of y and the columns of X."""
    i0 = find_intercept(X)
    sw = w.sum()
    if i0 is not None:
        c = float(w @ y / sw)
        m = (w @ X) / sw
        m[i0] = 0.0
    else:
        c, m = 0.0, np.zeros(X.shape[1])
    s = float(np.sqrt(w @ (y - c) ** 2 / sw))
    d = np.sqrt((w @ (X - m) ** 2) / sw)
    if i0 is not None:
        d[i0] = 1.0
    s = s if np.isfinite(s) and s > 0 else 1.0
    d = np.where(np.isfinite(d) & (d > 0), d, 1.0)
    return Scaling(c, s, m, d, i0)


# ---------------------------------------------------------------- host-side index lists


def _pairs(ci: np.ndarray, cj: np.ndarray, Gi: int):
    """Distinct (i, j) pairs sorted by j then i, and each row's pair index."""
    key = cj.astype(np.int64) * Gi + ci
    uniq, inv = np.unique(key, return_inverse=True)
    return (uniq % Gi).astype(np.int32), (uniq // Gi).astype(np.int32), inv.astype(np.int32)


def _pair_products(pj_a, pj_b, same: bool):
    """All (a, b) with pj_a[a] == pj_b[b] (both lists sorted by j, then i); with ``same`` (a
    list against itself) only b <= a, which within a level means pi_b <= pi_a."""
    na = pj_a.size
    if same:  # b runs from the start of a's level to a
        start_b = np.searchsorted(pj_a, pj_a, side="left")
        rep = np.arange(na) - start_b + 1
    else:
        G = int(max(pj_a.max(initial=-1), pj_b.max(initial=-1))) + 1
        cnt_b = np.bincount(pj_b, minlength=G)
        start_b = (np.cumsum(cnt_b) - cnt_b)[pj_a]
        rep = cnt_b[pj_a]
    a = np.repeat(np.arange(na, dtype=np.int32), rep)
    offset = np.arange(a.size, dtype=np.int64) - np.repeat(np.cumsum(rep) - rep, rep)
    b = np.repeat(start_b, rep) + offset
    return a, b.astype(np.int32)


def _target_order(t: np.ndarray, bound: int):
    """(sorted t, the permutation) for targets 0 <= t < bound: one sort of (t, position)
    packed in an int64 where both fit (twice as fast as an argsort), else an argsort."""
    n = t.size
    shift = max(int(n - 1).bit_length(), 1)
    if int(bound - 1).bit_length() + shift <= 63:
        key = np.sort((t.astype(np.int64) << shift) | np.arange(n, dtype=np.int64))
        return key >> shift, (key & ((1 << shift) - 1)).astype(np.int64)
    order = np.argsort(t, kind="quicksort")
    return t[order], order


def index_lists(codes: list, nchain: int, struct: Structure):
    """Parents, pair lists and pair-of-pair lists for the blocked Cholesky (host side).

    Pair-of-pair lists are sorted by their target position in the dense block so the
    Schur update is a sorted segment sum (about 3x faster than an unsorted scatter).
    """
    K = len(codes)
    levels = [G for G, _ in struct.factors]
    m = struct.m
    parent, pairs, pmap, ppa, ppb, ppt = {}, {}, {}, {}, {}, {}
    for k in range(nchain):
        for l in range(k + 1, nchain):
            par = np.zeros(levels[k], np.int32)
            par[codes[k]] = codes[l]
            parent[k, l] = par
        for r in range(nchain, K):
            pairs[k, r] = _pairs(codes[r], codes[k], levels[r])
    for k in range(nchain):
        for l in range(k + 1, nchain):
            for r in range(nchain, K):
                pi_k, pj_k, _ = pairs[k, r]
                pi_l, pj_l, _ = pairs[l, r]
                key_l = pj_l.astype(np.int64) * levels[r] + pi_l
                key = parent[k, l][pj_k].astype(np.int64) * levels[r] + pi_k
                pmap[k, l, r] = np.searchsorted(key_l, key).astype(np.int32)
        for r in range(nchain, K):
            for r2 in range(nchain, r + 1):
                a, b = _pair_products(pairs[k, r][1], pairs[k, r2][1], r == r2)
                qr, qr2 = struct.factors[r][1], struct.factors[r2][1]
                idx = np.int32 if m * m < 2**31 else np.int64
                row = struct.rest_offsets[r - nchain] + pairs[k, r][0][a].astype(idx) * qr
                col = struct.rest_offsets[r2 - nchain] + pairs[k, r2][0][b].astype(idx) * qr2
                # any deterministic order with equal targets adjacent will do
                t, order = _target_order(row * idx(m) + col, m * m)
                ppa[k, r, r2], ppb[k, r, r2] = a[order], b[order]
                ppt[k, r, r2] = t.astype(idx)
    return parent, pairs, pmap, ppa, ppb, ppt


# ---------------------------------------------------------------- the one pass


def _outer_sum(a, b, seg, num):
    """segment sums of the row outer products a_i b_i' -> (num, qa, qb)."""
    prod = a[:, :, None] * b[:, None, :]
    return jax.ops.segment_sum(prod, seg, num_segments=num)


@partial(jax.jit, static_argnames=("struct",))
def _pass(Zs, codes, pair_rows, XY, struct: Structure):
    nchain = len(struct.chain)
    facs = struct.factors
    D, E, C, P = [], [], {}, {}
    for k in range(nchain):
        G = facs[k][0]
        D.append(_outer_sum(Zs[k], Zs[k], codes[k], G))
        E.append(_outer_sum(XY, Zs[k], codes[k], G))
        for l in range(k + 1, nchain):
            C[k, l] = _outer_sum(Zs[l], Zs[k], codes[k], G)
    for (k, r), rows in pair_rows.items():
        P[k, r] = _outer_sum(Zs[r], Zs[k], rows[0], rows[1].shape[0])
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
    return tuple(D), C, P, tuple(E), M


def compute(factors, nchain: int, struct: Structure, X, y, weights=None, offset=None):
    """Sufficient statistics for factors in elimination order; returns (Stats, Scaling)."""
    n = X.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    yy = np.asarray(y, np.float64) - (0.0 if offset is None else np.asarray(offset, np.float64))
    sc = scaling(X, yy, w)
    sw = np.sqrt(w)
    Xs = (X - sc.m) / sc.d
    ys = (yy - sc.c) / sc.s
    XY = np.column_stack([Xs, ys]) * sw[:, None]
    Zs = [f.Z * sw[:, None] for f in factors]
    codes = [f.codes for f in factors]
    parent, pairs, pmap, ppa, ppb, ppt = index_lists(codes, nchain, struct)
    pair_rows = {key: (v[2], v[0]) for key, v in pairs.items()}
    D, C, P, E, M = _pass(tuple(Zs), tuple(codes), pair_rows, XY, struct)
    # the host-side leaves go to the device in one batched transfer (one dispatch each cost
    # about 50 us, a tenth of a sleepstudy fit)
    host = jax.device_put(dict(
        parent=parent, pi={k: v[0] for k, v in pairs.items()},
        pj={k: v[1] for k, v in pairs.items()}, pmap=pmap, ppa=ppa, ppb=ppb, ppt=ppt,
        ppj={(k, r, r2): pairs[k, r][1][a] for (k, r, r2), a in ppa.items()
             if k == 0 and struct.scalar_rest},
        n=np.asarray(float(n)), ldw=np.asarray(float(np.log(w).sum())),
        log_scale=np.asarray([np.log(sc.s), np.log(sc.d).sum()])))
    stats = Stats(D=D, C=C, P=P, E=E, M=M, struct=struct, **host)
    return stats, sc
