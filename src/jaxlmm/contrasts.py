"""Hypothesis matrices for the fixed effects: terms of X, type I and type III contrasts.

Host-side numpy, as lmerTest 3.1 builds them (R/anova.R):

* ``fixed_terms(frame)``: the terms of the fixed part in R's order (``term.labels``), the
  columns of X each one owns (R's ``assign``), their variables and which are numeric.
* ``type1_hypotheses``: rows of L' from the Doolittle decomposition X'X = L D L' (L unit
  lower triangular), the rows of each term: sequential (type I) hypotheses.
* ``type3_hypotheses``: lmerTest's coding-invariant type III hypotheses. Let rdX hold, per
  term, the full dummy coding of its factors times its numeric variables (plus the
  intercept), and write each rdX column in the coefficients of X (A: rdX = X A'). For the
  terms in decreasing order, the columns of A' of a term T are replaced by their residuals
  after least-squares projection on the columns of the terms that contain T (every variable
  of T and more, the same numeric variables; counting only the variables a term codes by
  contrasts, R's 1s in ``attr(terms, "factors")``). The hypotheses of T are the rows of X's own
  columns of the result, transposed. With treatment contrasts rdX = X A' holds exactly as
  functions of the factor levels, so A is found from the coding alone (no data): each
  column of X is a product of level indicators and numeric variables, and the indicator
  products are vectors over the grid of factor-level combinations.

Models of a single term (or one column) use type I hypotheses, as lmerTest does.
Unsupported (a ``JaxlmmError`` naming the term and what to do, never a different answer):
type III with non-treatment contrasts (ordered factors use polynomial contrasts), with
columns dropped for rank deficiency, or with a term whose columns do not follow R's coding
of its factors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import JaxlmmError
from .formula import quote_name

__all__ = ["Hypothesis", "FixedTerm", "TermStructure", "fixed_terms", "type1_hypotheses",
           "type3_hypotheses", "hypotheses", "zapsmall", "doolittle"]

GRID_MAX = 1_000_000  # cells x columns of the level grid used for type III


class Hypothesis(NamedTuple):
    """The hypothesis matrix of one term: L (r, p) and the X columns its rows belong to."""

    L: np.ndarray
    rows: tuple  # X column of each row (the term's columns; all-zero rows dropped)


@dataclass(frozen=True)
class FixedTerm:
    """One term of the fixed part (no intercept), e.g. ``recipe:temp``."""

    label: str  # R's term label
    variables: tuple[str, ...]  # the term's variables in order ("recipe", "temp")
    numeric: frozenset  # those that are numeric (R's dataClasses "numeric")
    columns: tuple[int, ...]  # its columns in X (after columns dropped for rank deficiency)
    cells: tuple | None  # per column: level index of each categorical variable (R's coding)

    @property
    def order(self) -> int:
        return len(self.variables)


@dataclass(frozen=True)
class TermStructure:
    """The terms of X (R's ``terms`` + ``assign``) and what type III needs to know."""

    terms: tuple[FixedTerm, ...]
    intercept: int | None  # X column of the intercept
    p: int
    levels: dict  # categorical variable -> level labels (first = reference)
    type3_issue: str | None  # why lmerTest's type III cannot be mirrored, or None

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]


def fixed_terms(frame) -> TermStructure:
    """The term structure of ``frame``'s fixed-effects matrix X (a frame.ModelFrame)."""
    spec = frame.fixed_spec
    p = frame.X.shape[1]
    if spec is None:
        raise JaxlmmError("the model was built from arrays (design_from_arrays), so the terms "
                          "of X are unknown; test hypotheses with contrast(m, L) instead")
    ms = spec.model_spec
    if not hasattr(ms, "structure"):  # frame._PlainSpec: numeric columns, each its own term
        intercept = 0 if getattr(ms, "intercept", False) else None
        off = 0 if intercept is None else 1
        terms = tuple(FixedTerm(quote_name(name), (name,), frozenset([name]), (off + j,), ((),))
                      for j, name in enumerate(ms.columns))
        return TermStructure(terms, intercept, p, {}, None)

    keep = {j: pos for pos, j in enumerate(spec.keep)}  # formulaic column -> X column
    state = ms.encoder_state
    levels, issue = {}, None
    if len(keep) < sum(len(s.columns) for s in ms.structure):
        issue = "X is rank deficient (columns dropped: {})".format(", ".join(frame.dropped))
    terms, intercept, j0 = [], None, 0
    for s in ms.structure:
        ncol = len(s.columns)
        cols = tuple(keep[j] for j in range(j0, j0 + ncol) if j in keep)
        j0 += ncol
        variables = tuple(str(f) for f in s.term.factors)
        if variables == ("1",):
            intercept = cols[0] if cols else None
            continue
        label = ":".join(variables)
        numeric, why = set(), None
        for v in variables:
            kind, st = state.get(v, (None, None))
            kind = getattr(kind, "value", kind)
            if kind == "numerical":
                numeric.add(v)
            elif kind == "categorical":
                lv = tuple(st.get("categories") or st["contrasts"].levels)
                levels[v] = lv
                c = getattr(st.get("contrasts"), "contrasts", None)
                base = getattr(c, "base", None)
                if type(c).__name__ != "TreatmentContrasts" or not (
                        base is _unset() or base == lv[0]):
                    why = (f"variable {v!r} is not coded by treatment contrasts with its first "
                           f"level as reference ({type(c).__name__}; ordered factors use "
                           "polynomial contrasts)")
            else:
                why = f"variable {v!r} is neither numeric nor a factor"
        cells = None
        if why is None:
            cells, why = _cells(s, variables, numeric, levels)
        if why is not None and issue is None:
            issue = f"term {label!r}: {why}"
        if cells is not None and len(cols) < ncol:
            cells = None  # columns dropped: the issue above says so
        terms.append(FixedTerm(label, variables, frozenset(numeric), cols,
                               None if cells is None else tuple(cells)))
    return TermStructure(tuple(terms), intercept, p, levels, issue)


def _unset():
    from formulaic.utils.sentinels import UNSET

    return UNSET


def _cells(s, variables, numeric, levels):
    """Level indices of the categorical variables for each column of term structure ``s``,
    checked against formulaic's column names (R's coding: first variable fastest)."""
    if len(s.scoped_terms) != 1:
        return None, "its columns do not follow R's coding of the term (split coding)"
    scoped = s.scoped_terms[0]
    if tuple(str(sf.factor) for sf in scoped.factors) != variables:
        return None, "its columns do not follow R's coding of the term"
    per_var = []  # (names, level index or None) per variable
    for sf in scoped.factors:
        v = str(sf.factor)
        if v in numeric:
            per_var.append([(v, None)])
        elif sf.reduced:
            per_var.append([(f"{v}[T.{lv}]", i) for i, lv in enumerate(levels[v]) if i > 0])
        else:
            per_var.append([(f"{v}[{lv}]", i) for i, lv in enumerate(levels[v])])
    names, cells = [], []
    for combo in itertools.product(*reversed(per_var)):  # first variable varies fastest
        combo = combo[::-1]
        names.append(":".join(c[0] for c in combo))
        cells.append(tuple(c[1] for c in combo if c[1] is not None))
    if names != list(s.columns):
        return None, "its columns could not be matched to the levels of its factors"
    return cells, None


# ---------------------------------------------------------------------- R helpers


def zapsmall(x, digits: int = 7):
    """R's zapsmall: round to ``digits`` significant digits of the largest |entry|."""
    x = np.asarray(x, float)
    if x.size == 0:
        return x
    mx = np.max(np.abs(x))
    d = max(0, digits - int(np.ceil(np.log10(mx)))) if mx > 0 else digits
    return np.round(x, d) + 0.0  # + 0.0: no negative zeros


def doolittle(A, eps: float = 1e-6):
    """Unit lower-triangular L of A = L U (no pivoting), entries below ``eps`` set to 0.

    As lmerTest's doolittle(): a pivot below ``eps`` zeroes its column of L.
    """
    A = np.asarray(A, float)
    n = A.shape[0]
    L, U = np.eye(n), np.zeros((n, n))
    for i in range(n):
        U[i, :] = A[i, :] - L[i, :i] @ U[:i, :]
        if i + 1 < n:
            col = A[i + 1:, i] - L[i + 1:, :i] @ U[:i, i]
            L[i + 1:, i] = 0.0 if abs(U[i, i]) < eps else col / U[i, i]
    L[np.abs(L) < eps] = 0.0
    return L


def _project_out(Y, Xc, rtol: float = 1e-7):
    """Residuals of the columns of Y after least squares on the columns of Xc (lm.fit)."""
    if Xc.shape[1] == 0:
        return Y
    coef, *_ = np.linalg.lstsq(Xc, Y, rcond=rtol)
    return Y - Xc @ coef


# ---------------------------------------------------------------------- hypotheses


def type1_hypotheses(ts: TermStructure, X) -> dict:
    """Sequential (type I) hypotheses: term label -> Hypothesis (lmerTest's type 1)."""
    XtX = getattr(X, "gram", None)  # a model fitted from batches keeps only X'X (arrowio)
    if XtX is None:
        X = np.asarray(X, float)
        XtX = X.T @ X
    p = XtX.shape[1]
    if p == 0 or (p == 1 and ts.intercept is not None):
        return {}
    Lt = np.ones((1, 1)) if p == 1 else doolittle(XtX).T
    return {t.label: Hypothesis(Lt[list(t.columns), :], t.columns) for t in ts.terms}


def type3_hypotheses(ts: TermStructure) -> dict:
    """lmerTest's type III hypotheses: term label -> Hypothesis (module docstring)."""
    if ts.type3_issue is not None:
        raise JaxlmmError(
            f"type III hypotheses as lmerTest builds them are not supported here: "
            f"{ts.type3_issue}. Supported: numeric variables and unordered factors with "
            "treatment contrasts (first level as reference) in a full-rank X. Use "
            "anova(m, type=1), or contrast(m, L) with your own hypothesis matrix")
    p = ts.p
    cats = sorted(ts.levels)
    shape = tuple(len(ts.levels[v]) for v in cats)
    ncell = int(np.prod(shape)) if shape else 1
    if ncell * max(p, 1) > GRID_MAX:
        raise JaxlmmError(f"type III hypotheses: the factors have {ncell} level combinations, "
                          "too many to build the hypotheses from the coding; use "
                          "contrast(m, L) with your own hypothesis matrix")
    grid = np.indices(shape).reshape(len(cats), -1) if cats else np.zeros((0, 1), int)
    pos = {v: i for i, v in enumerate(cats)}

    def indicator(term, cell):
        out = np.ones(ncell)
        for v, lv in zip([v for v in term.variables if v not in term.numeric], cell):
            out = out * (grid[pos[v]] == lv)
        return out

    # each column of X: (numeric variables, indicator vector over the level grid)
    xcols = [None] * p
    if ts.intercept is not None:
        xcols[ts.intercept] = (frozenset(), np.ones(ncell), ("(Intercept)", ()))
    for t in ts.terms:
        for c, cell in zip(t.columns, t.cells):
            xcols[c] = (t.numeric, indicator(t, cell), (t.label, cell))
    # rdX: intercept, then each term's full dummy coding times its numeric variables
    rd = [] if ts.intercept is None else [(frozenset(), np.ones(ncell), ("(Intercept)", ()))]
    for t in ts.terms:
        nl = [len(ts.levels[v]) for v in t.variables if v not in t.numeric]
        for cell in itertools.product(*[range(k) for k in nl]):
            rd.append((t.numeric, indicator(t, cell), (t.label, cell)))
    A = np.zeros((len(rd), p))
    for r, (num, vec, key) in enumerate(rd):
        group = [c for c in range(p) if xcols[c][0] == num]
        if group:
            B = np.column_stack([xcols[c][1] for c in group])
            coef, *_ = np.linalg.lstsq(B, vec, rcond=None)
            resid = np.max(np.abs(B @ coef - vec))
        else:
            coef, resid = np.zeros(0), np.max(np.abs(vec))
        if resid > 1e-8:
            raise JaxlmmError(
                f"type III hypotheses: the full coding of term {key[0]!r} is not spanned by "
                "the columns of X (a model that is not hierarchical); use anova(m, type=1) "
                "or contrast(m, L) with your own hypothesis matrix")
        A[r, group] = coef
    L = zapsmall(A)
    order = sorted(range(len(ts.terms)), key=lambda i: -ts.terms[i].order)  # stable
    present = {frozenset(t.variables) for t in ts.terms}
    for i in order:
        t = ts.terms[i]
        holders = [u for u in ts.terms if _contains(t, u, present)]
        if holders:
            cols = list(t.columns)
            hc = [c for u in holders for c in u.columns]
            L[:, cols] = zapsmall(_project_out(L[:, cols], L[:, hc]))
    row_of = {key: r for r, (_, _, key) in enumerate(rd)}
    Lx = L[[row_of[xcols[c][2]] for c in range(p)], :]  # rows of X's own columns
    out = {}
    for t in ts.terms:
        H = Lx[:, list(t.columns)].T
        keep = np.sum(np.abs(H), axis=1) > 1e-8
        out[t.label] = Hypothesis(H[keep], tuple(c for c, k in zip(t.columns, keep) if k))
    return out


def _coded(t: FixedTerm, present) -> frozenset:
    """Variables of t with a 1 in R's ``attr(terms, "factors")``: those whose removal from t
    leaves a term of the model (always, for a main effect); the others have a 2 (coded by
    indicators, not contrasts)."""
    return frozenset(v for v in t.variables
                     if len(t.variables) == 1 or frozenset(t.variables) - {v} in present)


def _contains(t: FixedTerm, u: FixedTerm, present) -> bool:
    """lmerTest's containment on the 1-coded variables: u has every one of t's and more,
    and the same numeric ones."""
    vt, vu = _coded(t, present), _coded(u, present)
    return vt <= vu and bool(vu - vt) and (vt & t.numeric) == (vu & u.numeric)


def hypotheses(frame, type=3) -> dict:
    """Hypotheses of lmerTest's anova(m, type=): term label -> Hypothesis (L, rows).

    As lmerTest, type III falls back to type I when X has one column or one term.
    """
    t = _anova_type(type)
    ts = fixed_terms(frame)
    if t == 3 and not (frame.X.shape[1] <= 1 or len(ts.terms) <= 1):
        return type3_hypotheses(ts)
    return type1_hypotheses(ts, frame.X)


def _anova_type(type) -> int:
    key = str(type).strip().upper()
    table = {"1": 1, "I": 1, "3": 3, "III": 3}
    if key in table:
        return table[key]
    if key in ("2", "II"):
        raise JaxlmmError("type II anova is not implemented; use type=3 (lmerTest's default) "
                          "or type=1, or contrast(m, L) with your own hypothesis matrix")
    raise JaxlmmError(f"anova type must be 3 ('III') or 1 ('I'), got {type!r}")
