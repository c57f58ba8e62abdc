"""The model design as a pytree: the arrays a fit reads and its static structure.

``design(formula, data)`` builds it from a DataFrame (frame.py: lme4's model frame and
checks); ``design_from_arrays(y, X, terms)`` from arrays. Both return a ``Design``:

* leaves (arrays): y (n,), X (n, p), per grouping factor (elimination order) its per-row
  model matrix Z_k (n, q_k) and level codes (n,), prior weights and offset (or None), and
  the index lists of the factor's block pattern (pattern.py);
* static (hashable): ``struct`` (layout.Structure: shapes, theta layout, bounds), and
  ``info`` (host metadata: the model frame, names and levels; compared by content, so a
  design rebuilt from the same data does not trigger a recompilation).

Pass a design to jitted functions as an argument (never capture it in a closure: its arrays
would become compile-time constants).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
import pandas as pd

from . import layout
from .errors import DataError
from .frame import ModelFrame, RandomTerm, model_frame
from .frame import _check_levels as check_levels
from .frame import _drop_redundant as drop_redundant
from .frame import _label as label
from .pattern import Pattern, index_lists
from .stats import find_intercept


class DesignInfo:
    """Host-side description of a design (static under jit): the model frame, the grouping
    factors in elimination order, and where each theta lives."""

    def __init__(self, frame: ModelFrame, factors, nchain: int, entries):
        self.frame = frame
        self.factors = tuple(factors)  # layout.Factor, elimination order
        self.nchain = nchain
        self.entries = tuple(entries)  # layout.ThetaEntry, lme4's theta order
        self._key = (frame.formula, frame.response, tuple(frame.fixef_names),
                     tuple((f.group, f.columns, f.nlevels, f.terms) for f in self.factors),
                     self.entries, int(frame.y.shape[0]))
        self._hash = hash(self._key)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return self is other or (
            isinstance(other, DesignInfo) and self._key == other._key
            and all(a.levels == b.levels for a, b in zip(self.factors, other.factors)))

    @property
    def formula(self) -> str:
        return self.frame.formula

    @property
    def fixef_names(self) -> tuple:
        return tuple(self.frame.fixef_names)

    def _cell(self, e) -> tuple:
        """(row, col) of theta entry ``e`` within its own term's template."""
        f = self.factors[e.factor]
        start = f.term_slices[f.terms.index(e.term)][0]
        return e.row - start, e.col - start

    @property
    def theta_names(self) -> list[str]:
        """lme4-style names of theta's elements: "group.column" on template diagonals,
        "group.row_column.col_column" below them."""
        terms = self.frame.terms
        out = []
        for e in self.entries:
            t = terms[e.term]
            r, c = self._cell(e)
            if r == c:
                out.append(f"{t.group}.{t.columns[r]}")
            else:
                out.append(f"{t.group}.{t.columns[r]}.{t.columns[c]}")
        return out

    @property
    def theta_terms(self) -> list[tuple]:
        """lme4's random-effects terms in theta order: (term index, label, columns, cells),
        with label the grouping factor (".1", ".2", ... appended to repeats, as VarCorr
        names them) and cells ((theta index, row, col), ...) within the term's template."""
        terms = self.frame.terms
        cells: dict = {}
        for i, e in enumerate(self.entries):
            cells.setdefault(e.term, []).append((i,) + self._cell(e))
        seen, out = {}, []
        for t, tc in cells.items():
            grp = terms[t].group
            k = seen.get(grp, 0)
            seen[grp] = k + 1
            out.append((t, grp if k == 0 else f"{grp}.{k}", tuple(terms[t].columns), tuple(tc)))
        return out

    def __repr__(self):
        return f"DesignInfo({self.formula!r})"


@dataclass(frozen=True)
class Design:
    """A model design (module docstring). ``info`` holds the names; ``struct`` the shapes."""

    y: object  # (n,)
    X: object  # (n, p)
    Z: tuple  # per factor, elimination order: (n, q_k)
    codes: tuple  # per factor: (n,) int32 level codes
    weights: object  # (n,) or None
    offset: object  # (n,) or None
    pattern: Pattern
    struct: layout.Structure
    info: DesignInfo

    @property
    def n(self) -> int:
        return int(np.shape(self.y)[0])

    @property
    def p(self) -> int:
        return self.struct.p

    @property
    def theta_start(self) -> np.ndarray:
        """lme4's default start (1 on template diagonals, 0 elsewhere)."""
        return layout.theta_start(self.struct)

    @property
    def lower(self) -> np.ndarray:
        """Lower bounds of theta (0 on template diagonals, -inf elsewhere)."""
        return np.asarray(self.struct.lower, float)


jax.tree_util.register_dataclass(
    Design, data_fields=["y", "X", "Z", "codes", "weights", "offset", "pattern"],
    meta_fields=["struct", "info"])


def from_frame(frame: ModelFrame) -> Design:
    """The design of a model frame: factors ordered for the blocked Cholesky (layout.py)
    and the index lists of its block pattern (pattern.py)."""
    _check_response_varies(frame)
    factors = layout.amalgamate(frame.terms)
    elim, nchain = layout.order_factors(factors)
    entries = layout.theta_layout(frame.terms, factors, elim)
    struct = layout.structure(factors, elim, nchain, entries, frame.X.shape[1],
                              find_intercept(frame.X))
    facs = [factors[f] for f in elim]
    pattern = index_lists([f.codes for f in facs], nchain, struct)
    # the index lists are read by every evaluation: on the device once, in one transfer
    pattern = jax.device_put(pattern)
    return Design(y=frame.y, X=frame.X, Z=tuple(f.Z for f in facs),
                  codes=tuple(f.codes for f in facs), weights=frame.weights,
                  offset=frame.offset, pattern=pattern, struct=struct,
                  info=DesignInfo(frame, facs, nchain, entries))


def _check_response_varies(frame: ModelFrame) -> None:
    """Reject a response that the fixed effects fit exactly (e.g. a constant y with an
    intercept): the residual sum of squares ||W^(1/2) (y - o - X beta_hat)||^2 is then 0 for
    every theta, so the profiled criterion is -inf and sigma 0 (lme4 returns that degenerate
    fit with convergence warnings)."""
    y = frame.y if frame.offset is None else frame.y - frame.offset
    X = frame.X
    if frame.weights is not None:
        sw = np.sqrt(frame.weights)
        y, X = y * sw, X * sw[:, None]
    big = np.max(np.abs(y), initial=0.0)
    if np.isfinite(big) and big > 0:
        y = y / big  # no overflow in the norms below for |y| near the float64 limit
    if X.shape[1] == 0:
        r = y
    else:  # coefficients from a subset of rows (exact on all rows if the fit is exact),
        # checked on all rows: O(n p) instead of a least-squares solve on every row
        n = y.shape[0]
        sub = np.unique(np.linspace(0, n - 1, min(n, max(20_000, 4 * X.shape[1]))).astype(int))
        r = y - X @ np.linalg.lstsq(X[sub], y[sub], rcond=None)[0]
    if np.linalg.norm(r) <= 1e-10 * np.linalg.norm(y):
        what = (f"is constant (every value is {frame.y[0]:g})" if np.ptp(frame.y) == 0
                else "is fitted exactly by the fixed effects (zero residuals)")
        raise DataError(f"response {frame.response!r} {what}, so there is no variation left "
                        "for the random effects or the residual (sigma would be 0); check the "
                        "response column, or drop fixed-effects terms that reproduce it")


def design(formula: str, data, *, weights=None, offset=None) -> Design:
    """The design of ``formula`` (lme4 syntax) on ``data`` (a DataFrame or dict of arrays).

    ``weights`` / ``offset``: column names or arrays of ``len(data)``. Rows with missing
    values are dropped and rank-deficient fixed-effects columns removed, as lme4 does
    (``design.info.frame.messages`` says so).
    """
    return from_frame(model_frame(formula, data, weights=weights, offset=offset))


def _vector(a, name: str, n: int | None) -> np.ndarray:
    try:
        v = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric: {exc}") from None
    if v.ndim != 1 or (n is not None and v.shape[0] != n):
        raise DataError(f"{name} must be a vector of length {n}, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        bad = np.flatnonzero(~np.isfinite(v))[:5]
        raise DataError(f"{name} has non-finite values (rows {bad.tolist()}); remove or "
                        "impute them first")
    return v


def design_from_arrays(y, X, terms, *, weights=None, offset=None, fixef_names=None,
                       response: str = "y") -> Design:
    """A design from arrays, without a formula.

    ``y`` (n,); ``X`` (n, p) the fixed-effects model matrix (include a column of ones for
    an intercept); ``terms``: random-effects terms, each ``(group, codes)`` for a random
    intercept or ``(group, codes, Z)`` with Z (n,) or (n, q) the term's per-row model matrix
    (correlated effects, as lme4's ``(Z | group)``). Terms with the same group name share
    the factor with a block-diagonal covariance, as ``(1 | g) + (0 + x | g)``. ``codes``:
    any labels (n,); levels are their sorted unique values.
    """
    y = _vector(y, "y", None)
    n = y.shape[0]
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] != n:
        raise DataError(f"X must be an (n, p) = ({n}, p) matrix, got shape {X.shape}")
    names = [f"x{j}" for j in range(X.shape[1])] if fixef_names is None else list(fixef_names)
    if len(names) != X.shape[1]:
        raise DataError(f"fixef_names has {len(names)} names for {X.shape[1]} columns of X")
    for j, nm in enumerate(names):
        _vector(X[:, j], f"column {nm!r} of X", n)
    _, kept_names, dropped, _ = drop_redundant(X, names)
    if dropped:
        raise DataError(f"X is rank deficient: column(s) {', '.join(map(repr, dropped))} are "
                        "linear combinations of earlier columns; drop them")
    if not terms:
        raise DataError("terms is empty: give at least one (group, codes) random-effects term")
    rterms = []
    for i, term in enumerate(terms):
        if not isinstance(term, (tuple, list)) or len(term) not in (2, 3):
            raise DataError(f"terms[{i}] must be (group, codes) or (group, codes, Z)")
        group, codes = str(term[0]), np.asarray(term[1])
        if codes.shape != (n,):
            raise DataError(f"codes of term {i} ({group!r}) must have shape ({n},), got "
                            f"{codes.shape}")
        if pd.isna(codes).any():
            raise DataError(f"codes of term {i} ({group!r}) have missing values; drop those "
                            "rows first")
        if len(term) == 3:
            Z = np.asarray(term[2], dtype=np.float64)
            Z = Z[:, None] if Z.ndim == 1 else Z
            if Z.ndim != 2 or Z.shape[0] != n:
                raise DataError(f"Z of term {i} ({group!r}) must be (n,) or (n, q) with n = "
                                f"{n}, got shape {Z.shape}")
            cols = tuple(f"z{j}" for j in range(Z.shape[1]))
            for j in range(Z.shape[1]):
                _vector(Z[:, j], f"column {j} of Z in term {i} ({group!r})", n)
        else:
            Z, cols = np.ones((n, 1)), ("(Intercept)",)
        lev_codes, levels = pd.factorize(pd.Series(codes), sort=True)
        source = f"({' + '.join(cols)} | {group})"
        rterms.append(RandomTerm(group, cols, Z, lev_codes.astype(np.int32),
                                 tuple(label(v) for v in levels), source))
    check_levels(rterms, n)
    w = None if weights is None else _vector(weights, "weights", n)
    if w is not None and np.any(w <= 0):
        raise DataError("weights must be > 0 (drop rows with weight 0 first)")
    off = None if offset is None else _vector(offset, "offset", n)
    fixed = " + ".join(["0"] + kept_names)
    formula = f"{response} ~ {fixed} + " + " + ".join(t.source for t in rterms)
    frame = ModelFrame(formula=formula, response=response, y=y, X=X,
                       fixef_names=tuple(names), dropped=(), terms=tuple(rterms), weights=w,
                       offset=off, n_dropped=0, kept=np.arange(n, dtype=np.int64),
                       messages=(), fixed_spec=None)
    return from_frame(frame)
