"""Host-side index lists: the block pattern of the blocked Cholesky factor.

They depend only on the grouping factors' level codes (not on y, X or theta), so they are
built once per design, in numpy, and travel with the design and the statistics as integer
leaves:

* ``parent[k, l]`` (G_k,)  the level of chain factor l containing each level of chain
  factor k (k nested in l);
* ``pi[k, r]``, ``pj[k, r]`` (npairs,)  the distinct co-occurring (level i of rest factor r,
  level j of chain factor k) pairs, sorted by j then i; ``prow[k, r]`` (n,) each row's pair;
* ``pmap[k, l, r]``  for each (k, r) pair, the (l, r) pair of its parent level;
* ``ppa``, ``ppb``, ``ppt`` [k, r, r2]  pairs of pairs sharing a chain level (the Schur
  update of the dense block), sorted by their flat target ``row * m + col`` in that block;
* ``ppj[0, r, r2]``  the chain level of each pair of pairs (first factor, scalar crossed
  factors only; linearized.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from .layout import Structure


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Pattern:
    """The index lists above: a pytree of integer arrays (dicts keyed by factor tuples)."""

    parent: dict
    pi: dict
    pj: dict
    prow: dict
    pmap: dict
    ppa: dict
    ppb: dict
    ppt: dict
    ppj: dict


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


def index_lists(codes: list, nchain: int, struct: Structure) -> "Pattern":
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
    ppj = {(k, r, r2): pairs[k, r][1][a] for (k, r, r2), a in ppa.items()
           if k == 0 and struct.scalar_rest}
    return Pattern(parent=parent, pi={k: v[0] for k, v in pairs.items()},
                   pj={k: v[1] for k, v in pairs.items()},
                   prow={k: v[2] for k, v in pairs.items()},
                   pmap=pmap, ppa=ppa, ppb=ppb, ppt=ppt, ppj=ppj)
