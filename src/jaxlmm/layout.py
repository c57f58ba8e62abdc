"""Host-side layout of the random effects: factors, templates, theta, elimination order.

lme4 terms with the same grouping factor (e.g. the two pieces of ``(Days || Subject)``) are
amalgamated into one *factor* whose covariance template is block diagonal (as
MixedModels.jl does). Factors are ordered for the blocked Cholesky:

* sorted by decreasing number of random effects (levels x q);
* a *chain*: the first factor, then each later factor nested in the chain's last one
  (every level of the earlier factor sits inside one level of the later). Chain blocks stay
  block diagonal in the Cholesky factor (batched small Cholesky);
* the *rest* (crossed factors) share one dense Schur-complement block with X and y.

theta is ordered as lme4 orders it: terms sorted by decreasing number of levels (ties keep
formula order), each term's lower-triangular template entries column by column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Factor:
    """One grouping factor after amalgamating its terms (host side, numpy)."""

    group: str
    levels: tuple
    codes: np.ndarray  # (n,) int32
    Z: np.ndarray  # (n, q) per-row model matrix (all terms of this factor side by side)
    columns: tuple  # column names, q of them
    terms: tuple  # indices of the lme4 terms, in formula order
    term_slices: tuple  # (start, stop) of each term's columns

    @property
    def nlevels(self) -> int:
        return len(self.levels)

    @property
    def q(self) -> int:
        return self.Z.shape[1]


@dataclass(frozen=True)
class Structure:
    """Static (hashable) shape description used by the jitted kernels."""

    chain: tuple  # ((G, q), ...) chain factors in elimination order
    rest: tuple  # ((G, q), ...) crossed factors in elimination order
    rest_offsets: tuple  # row offset of each rest factor in the dense block
    m_rand: int  # number of rest random effects (rows of the dense block before X)
    p: int  # columns of X
    templates: tuple  # per factor (elimination order): ((theta_index, row, col), ...)
    n_theta: int
    lower: tuple  # lower bound of each theta (0.0 or -inf)
    intercept: int | None = None  # the column of X that is all ones, if any
    padding: int = 0  # empty levels appended to the first chain factor (placement.py)

    @property
    def factors(self):
        return self.chain + self.rest

    def nlevels(self, k: int) -> int:
        """The number of real levels of factor k (elimination order): its G less the empty
        levels that placement.shard_stats may append to the first chain factor."""
        return self.factors[k][0] - (self.padding if k == 0 else 0)

    @property
    def m(self) -> int:
        return self.m_rand + self.p + 1

    @property
    def scalar_rest(self) -> bool:
        """Crossed factors present and all scalar: the per-level tensors (linearized.py) and
        the closed-form tangents (crossed.py) apply."""
        return len(self.rest) > 0 and all(q == 1 for _, q in self.rest)


@dataclass(frozen=True)
class ThetaEntry:
    """Where one element of theta lives: lme4 term, factor, template position."""

    term: int
    factor: int  # index into the elimination order
    row: int
    col: int


def amalgamate(terms) -> list[Factor]:
    """Group lme4 terms by grouping factor name, keeping first-appearance order."""
    groups: dict[str, list[int]] = {}
    for t, term in enumerate(terms):
        groups.setdefault(term.group, []).append(t)
    factors = []
    for group, idx in groups.items():
        first = terms[idx[0]]
        slices, start, cols = [], 0, []
        for t in idx:
            q = terms[t].Z.shape[1]
            slices.append((start, start + q))
            cols.extend(terms[t].columns)
            start += q
        Z = np.concatenate([np.asarray(terms[t].Z, dtype=np.float64) for t in idx], axis=1)
        factors.append(
            Factor(group, tuple(first.levels), np.asarray(first.codes, np.int32), Z, tuple(cols),
                   tuple(idx), tuple(slices))
        )
    return factors


def is_nested(inner: np.ndarray, outer: np.ndarray, n_inner: int) -> bool:
    """True when every level of ``inner`` occurs with exactly one level of ``outer``."""
    first = np.full(n_inner, -1, dtype=np.int64)
    first[inner] = outer
    return bool(np.all(first[inner] == outer))


def order_factors(factors: list[Factor]) -> tuple[list[int], int]:
    """Elimination order (indices into ``factors``) and the length of the nested chain."""
    order = sorted(range(len(factors)), key=lambda f: -factors[f].nlevels * factors[f].q)
    chain, rest = [order[0]], []
    for f in order[1:]:
        tail = factors[chain[-1]]
        if is_nested(tail.codes, factors[f].codes, tail.nlevels):
            chain.append(f)
        else:
            rest.append(f)
    return chain + rest, len(chain)


def theta_layout(terms, factors: list[Factor], elim: list[int]) -> list[ThetaEntry]:
    """lme4's theta order mapped onto template entries of the eliminated factors."""
    nlev = [len(t.levels) for t in terms]
    term_order = sorted(range(len(terms)), key=lambda t: -nlev[t])
    where = {}
    for pos, f in enumerate(elim):
        for t, (start, _) in zip(factors[f].terms, factors[f].term_slices):
            where[t] = (pos, start)
    entries = []
    for t in term_order:
        pos, start = where[t]
        q = terms[t].Z.shape[1]
        for c in range(q):
            for r in range(c, q):
                entries.append(ThetaEntry(t, pos, start + r, start + c))
    return entries


def structure(factors: list[Factor], elim: list[int], nchain: int, entries, p: int,
              intercept: int | None = None) -> Structure:
    facs = [factors[f] for f in elim]
    chain = tuple((f.nlevels, f.q) for f in facs[:nchain])
    rest = tuple((f.nlevels, f.q) for f in facs[nchain:])
    offsets, off = [], 0
    for G, q in rest:
        offsets.append(off)
        off += G * q
    templates = tuple(
        tuple((i, e.row, e.col) for i, e in enumerate(entries) if e.factor == pos)
        for pos in range(len(facs))
    )
    lower = tuple(0.0 if e.row == e.col else -np.inf for e in entries)
    return Structure(chain, rest, tuple(offsets), off, p, templates, len(entries), lower,
                     intercept)


def theta_start(struct: Structure) -> np.ndarray:
    """lme4's default start: 1 on template diagonals (bounded below), 0 elsewhere."""
    return np.where(np.isfinite(np.asarray(struct.lower, float)), 1.0, 0.0)
