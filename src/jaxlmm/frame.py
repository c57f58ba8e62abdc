"""Host-side design of a linear mixed model: y, X, offsets, weights and the
per-term random-effects matrices, built from a pandas DataFrame with lme4's
conventions (``model.frame`` + ``model.matrix`` + ``mkReTrms`` checks).

Conventions (as R / lme4 unless noted):

* rows with a missing value in any variable the model uses (response, fixed
  and random-term variables, grouping factors, weights, offsets) are dropped
  (``na.omit``); so are rows where a transformation (``log(x)``) gives NaN;
* factors: a pandas Categorical keeps its category order (unused categories
  dropped); strings and other objects are sorted (plain Python order);
  booleans are factors ``FALSE < TRUE``; numeric columns (integers too) stay
  numeric; ``factor(x)`` in a formula makes a factor of any column.
  Treatment contrasts, first level as reference; ordered Categoricals get
  R's polynomial contrasts (``t.L``, ``t.Q``, ``t.C``, ``t^4``, ...);
* grouping factors may have any dtype (numeric levels sort numerically);
  an interaction ``a:b`` has one level per observed combination, sorted with
  ``a`` varying slowest (R's ``a:b``), labelled ``"a_level:b_level"``;
* prior weights must be finite and >= 0; rows with weight 0 raise a
  :class:`DataError` (drop them first) because lme4's likelihood has a
  ``log(weights)`` term;
* rank-deficient X: columns that are (numerically) linear combinations of
  earlier columns are dropped, as ``lme4:::chkRank.drop.cols`` does with
  R's LINPACK QR (tolerance 1e-7 relative to the column's own norm).
"""

from __future__ import annotations

import builtins
import difflib
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .errors import DataError, FormulaError
from .formula import ParsedFormula, group_variables, parse_formula, quote_name, tokenize

__all__ = ["RandomTerm", "ModelFrame", "MatrixSpec", "model_frame", "group_codes", "NewRows",
           "new_rows"]

RANK_TOL = 1e-7


def _transforms() -> dict:
    from formulaic.transforms import TRANSFORMS

    return TRANSFORMS


def _context() -> dict:
    """Names formulaic can evaluate besides data columns and its transforms."""
    return {"factor": _r_factor}


def _r_factor(data, levels=None):
    """R's ``factor(x)`` for formulas: levels in R's order with R's labels (2, not 2.0)."""
    s = data if isinstance(data, pd.Series) else pd.Series(np.asarray(data))
    s = s.reset_index(drop=True)
    if levels is None:
        _, levels = _factor(s[s.notna()])
    levels = [_label(v) for v in levels]
    values = pd.Categorical([None if pd.isna(v) else _label(v) for v in s], categories=levels)
    return _transforms()["C"](values)


@dataclass(frozen=True)
class MatrixSpec:
    """Rebuilds a model matrix (fixed part or one random term) for new data."""

    model_spec: object  # formulaic ModelSpec
    columns: tuple[str, ...]  # R-style names of the kept columns
    keep: tuple[int, ...]  # indices of the kept columns among formulaic's
    ordered: tuple[str, ...] = ()  # ordered factors (polynomial contrasts)

    def matrix(self, data) -> np.ndarray:
        """(n, len(columns)) float64 matrix for ``data``; NaN where inputs are missing."""
        frame = _as_frame(data)
        prepared = pd.DataFrame({c: _new_column(frame[c]) for c in frame.columns})
        prepared, ctx = _formulaic_inputs(prepared, self.ordered)
        try:
            with np.errstate(all="ignore"):
                mm = self.model_spec.get_model_matrix(prepared, na_action="ignore", context=ctx)
        except Exception as exc:  # formulaic's own errors
            raise DataError(f"cannot rebuild the model matrix for new data: {_clean(exc)}") from exc
        return np.asarray(mm, dtype=np.float64)[:, list(self.keep)]


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | group)``: per-row matrix and group codes."""

    group: str  # "Subject", "cask:batch"
    columns: tuple[str, ...]  # "(Intercept)", "Days", ...
    Z: np.ndarray  # (n, q) float64
    codes: np.ndarray  # (n,) int32 in 0..G-1
    levels: tuple[str, ...]  # G level labels
    source: str  # the bar term as written
    spec: MatrixSpec | None = None  # rebuilds Z for new data

    @property
    def nlevels(self) -> int:
        return len(self.levels)


@dataclass(frozen=True)
class ModelFrame:
    """Everything the fitter needs, on the host, as numpy arrays."""

    formula: str
    response: str
    y: np.ndarray  # (n,)
    X: np.ndarray  # (n, p), full column rank
    fixef_names: tuple[str, ...]
    dropped: tuple[str, ...]  # fixed-effect columns dropped for rank deficiency
    terms: tuple[RandomTerm, ...]
    weights: np.ndarray | None  # (n,) prior weights
    offset: np.ndarray | None  # (n,) total offset
    n_dropped: int  # rows dropped for missing values (or NaN made by transformations)
    kept: np.ndarray  # (n,) 0-based positions of the used rows in the input
    messages: tuple[str, ...]
    fixed_spec: MatrixSpec  # rebuilds X for new data


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------


def mixed_formula(formula) -> ParsedFormula:
    """``formula`` parsed (or already a ParsedFormula), with at least one random-effects term."""
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    if not parsed.random:
        raise FormulaError(
            "no random-effects terms specified in formula", parsed.formula,
            hint="add a term such as (1 | group); for a model without random effects use "
                 "ordinary least squares")
    return parsed


def model_frame(formula, data, *, weights=None, offset=None) -> ModelFrame:
    """Build the host-side design of ``formula`` (lme4 syntax) on ``data``.

    ``weights`` / ``offset`` are a column name or an array of ``len(data)``;
    ``offset`` is added to the formula's ``offset()`` terms.
    """
    parsed = mixed_formula(formula)
    frame = _as_frame(data)
    n_in = len(frame)
    used, in_exprs = _used_columns(parsed, frame)
    w_in = _extra_vector(weights, frame, "weights")
    o_in = _extra_vector(offset, frame, "offset")

    na = np.zeros(n_in, dtype=bool)
    na_counts: dict[str, int] = {}
    for col in used:
        m = np.asarray(pd.isna(frame[col]), dtype=bool)
        na_counts[col] = int(m.sum())
        na |= m
    for label, vec in (w_in, o_in):
        if vec is not None:
            m = np.asarray(pd.isna(vec), dtype=bool)
            na_counts[label] = int(m.sum())
            na |= m
    rows = np.flatnonzero(~na)
    n_na = int(na.sum())
    if rows.size == 0:
        culprits = ", ".join(f"{k} ({v} missing)" for k, v in na_counts.items() if v)
        raise DataError(
            f"no rows left after dropping rows with missing values"
            f"{' (input has 0 rows)' if n_in == 0 else ''}; missing values in: {culprits or '-'}"
        )

    n_nan = 0
    for _ in range(3):
        built = _build(parsed, frame, rows, used, in_exprs, w_in, o_in)
        bad = built.pop("nan_rows")
        if not bad.any():
            break
        n_nan += int(bad.sum())
        rows = rows[~bad]
        if rows.size == 0:
            raise DataError("no rows left after dropping rows where transformations give NaN")
    else:  # pragma: no cover - transformations that keep creating NaN
        raise DataError("transformations in the formula keep producing NaN values")

    n = rows.size
    terms = built["terms"]
    _check_levels(terms, n)

    messages = []
    if n_na:
        messages.append(f"{n_na} row{'s' if n_na != 1 else ''} with missing values dropped")
    if n_nan:
        messages.append(
            f"{n_nan} row{'s' if n_nan != 1 else ''} dropped where transformations in the formula give NaN"
        )
    X, names, dropped, keep_cols = _drop_redundant(built["X"], built["x_names"])
    if dropped:
        k = len(dropped)
        s = "s" if k != 1 else ""
        messages.append(
            f"fixed-effect model matrix is rank deficient so dropping {k} column{s} / "
            f"coefficient{s}: {', '.join(dropped)}"
        )
    fixed_spec = replace(built["x_spec"], columns=tuple(names), keep=tuple(keep_cols))
    return ModelFrame(
        formula=parsed.formula,
        response=parsed.response,
        y=built["y"],
        X=X,
        fixef_names=tuple(names),
        dropped=tuple(dropped),
        terms=tuple(terms),
        weights=built["weights"],
        offset=built["offset"],
        n_dropped=n_na + n_nan,
        kept=rows.astype(np.int64),
        messages=tuple(messages),
        fixed_spec=fixed_spec,
    )


def _build(parsed: ParsedFormula, frame: pd.DataFrame, rows, used, in_exprs, w_in,
           o_in) -> dict:
    """Model matrices on ``rows``; ``nan_rows`` flags rows made NaN by transformations."""
    if rows.size == len(frame):  # nothing dropped: read the columns in place
        sub = frame
    else:
        sub = frame.iloc[rows][list(used)].reset_index(drop=True)
    y = _response(sub[parsed.response], parsed.response, rows)
    cache: dict = {}  # factor codes/levels per column, computed once
    # columns used only as grouping factors never reach formulaic
    cols = {c: _model_column(sub[c], c, cache) for c in used
            if c != parsed.response and c in in_exprs}
    cols[parsed.response] = pd.Series(y)  # usable in expressions too
    prepared = _Prepared(cols, len(y))
    nan_rows = np.zeros(len(sub), dtype=bool)

    X, x_names, x_spec = _model_matrix(parsed.fixed, prepared, parsed, "the fixed-effects part")
    nan_rows |= _nan_rows(X)

    terms = []
    for spec in parsed.random:
        Z, z_names, z_spec = _model_matrix(spec.expr, prepared, parsed, spec.source)
        nan_rows |= _nan_rows(Z)
        codes, levels = _group_factor(sub, spec.group, cache)
        terms.append(RandomTerm(spec.group, tuple(z_names), Z, codes, levels, spec.source, z_spec))

    offsets = [(f"offset({e})", _offset_values(e, prepared, parsed)) for e in parsed.offsets]
    if o_in[1] is not None:
        offsets.append((o_in[0], _numeric_vector(o_in[1], o_in[0])[rows]))
    for _, v in offsets:
        nan_rows |= np.isnan(v)
    off = sum(v for _, v in offsets) if offsets else None

    w = None
    if w_in[1] is not None:
        w = _numeric_vector(w_in[1], w_in[0])[rows]

    if not nan_rows.any():
        _check_finite(X, [f"fixed-effects column {c!r}" for c in x_names], rows)
        for t in terms:
            _check_finite(t.Z, [f"random-effects column {c!r} of {t.source}" for c in t.columns], rows)
        for label, v in offsets:
            _check_finite(v[:, None], [label], rows)
        if w is not None:
            _check_weights(w, w_in[0], rows)
    return dict(y=y, X=X, x_names=x_names, x_spec=x_spec, terms=terms,
                offset=off, weights=w, nan_rows=nan_rows)


# --------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------


def _as_frame(data) -> pd.DataFrame:
    """A DataFrame with string column names (dicts of arrays accepted)."""
    if isinstance(data, pd.DataFrame):
        if not all(isinstance(c, str) for c in data.columns):
            data = data.rename(columns=str)
        return data
    if isinstance(data, Mapping):
        try:
            return pd.DataFrame({k: np.asarray(v) if not isinstance(v, pd.Series) else v.to_numpy()
                                 for k, v in data.items()})
        except ValueError as exc:
            raise DataError(f"cannot turn the data mapping into a DataFrame: {exc}") from exc
    if type(data).__module__.split(".")[0] == "polars":
        return _from_polars(data)
    raise DataError(f"data must be a pandas DataFrame, a polars DataFrame or a mapping of arrays, "
                    f"got {type(data).__name__}")


def _from_polars(data) -> pd.DataFrame:
    """Column by column (no pyarrow needed). An Enum keeps its level order; a Categorical is
    treated as strings (levels sorted, as R's factor())."""
    import polars as pl

    if isinstance(data, pl.LazyFrame):
        raise DataError("data is a polars LazyFrame: call .collect() first")
    if not isinstance(data, pl.DataFrame):
        raise DataError(f"data must be a polars DataFrame, got {type(data).__name__}")
    cols = {}
    for name in data.columns:
        col = data.get_column(name)
        if isinstance(col.dtype, pl.Enum):
            cols[name] = pd.Categorical(col.cast(pl.String).to_list(),
                                        categories=col.dtype.categories.to_list())
        elif isinstance(col.dtype, pl.Categorical):
            cols[name] = col.cast(pl.String).to_numpy()
        else:
            cols[name] = col.to_numpy()
    return pd.DataFrame(cols)


def _unknown(name: str, frame: pd.DataFrame, where: str) -> DataError:
    cols = [str(c) for c in frame.columns]
    close = difflib.get_close_matches(str(name), cols, n=3, cutoff=0.6)
    if close:
        tip = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        shown = ", ".join(repr(c) for c in cols[:12]) + (", ..." if len(cols) > 12 else "")
        tip = f"available columns: {shown or '(none)'}"
    return DataError(f"column {name!r} (used in {where}) not found in data; {tip}")


_SKIP_NAMES = set(keyword.kwlist) | set(dir(builtins))


def _expr_columns(expr: str, frame: pd.DataFrame, where: str) -> list[str]:
    """Data columns an expression refers to; unknown plain names raise DataError."""
    cols = set(map(str, frame.columns))
    known = set(_transforms()) | set(_context()) | _SKIP_NAMES
    toks = tokenize(expr)
    out: list[str] = []

    def add(name):
        if name not in cols:
            raise _unknown(name, frame, where)
        if name not in out:
            out.append(name)

    for i, t in enumerate(toks):
        nxt = toks[i + 1].text if i + 1 < len(toks) and toks[i + 1].kind == "op" else None
        if t.kind == "bq":
            add(t.value)
        elif t.kind == "str":
            if i >= 2 and toks[i - 2].text == "Q" and toks[i - 1].text == "(":
                add(t.value)
        elif t.kind == "name":
            if nxt in ("(", "="):  # function call or keyword argument
                continue
            if t.text in cols:
                add(t.text)
            elif t.text.split(".")[0] in cols:
                add(t.text.split(".")[0])
            elif t.text.split(".")[0] not in known:
                add(t.text)
    return out


def _used_columns(parsed: ParsedFormula, frame: pd.DataFrame) -> tuple[list[str], set[str]]:
    """All data columns the model uses, response first (checks they exist), and the set of
    those that appear in model-matrix expressions (not only as grouping factors)."""
    used: list[str] = []
    in_exprs: set[str] = set()

    def extend(names, expression=True):
        used.extend(c for c in names if c not in used)
        if expression:
            in_exprs.update(names)

    extend(_expr_columns(quote_name(parsed.response), frame, "the response"), False)
    extend(_expr_columns(parsed.fixed, frame, "the fixed-effects part"))
    for spec in parsed.random:
        extend(_expr_columns(spec.expr, frame, spec.source))
        for name in group_variables(spec.group):
            if name not in set(map(str, frame.columns)):
                raise _unknown(name, frame, f"grouping factor of {spec.source}")
            extend([name], False)
    for expr in parsed.offsets:
        extend(_expr_columns(expr, frame, f"offset({expr})"))
    return used, in_exprs


def _extra_vector(arg, frame: pd.DataFrame, what: str):
    """``(label, values)`` for a weights/offset argument (name or array)."""
    if arg is None:
        return what, None
    if isinstance(arg, str):
        if arg not in frame.columns:
            raise _unknown(arg, frame, f"{what}=")
        return f"{what} column {arg!r}", frame[arg].to_numpy()
    vec = arg.to_numpy() if isinstance(arg, pd.Series) else np.asarray(arg)
    if vec.ndim != 1 or vec.shape[0] != len(frame):
        raise DataError(f"{what} must have one value per row of data ({len(frame)}), got shape {vec.shape}")
    return what, vec


def _numeric_vector(vec, label: str) -> np.ndarray:
    """float64 copy of a weights/offset vector; DataError when not numeric."""
    s = pd.Series(vec)
    if s.dtype == object:
        try:
            s = pd.to_numeric(s)
        except (TypeError, ValueError):
            pass
    if isinstance(s.dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
    ):
        raise DataError(f"{label} must be numeric, got dtype {s.dtype}")
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def _rows_text(rows, mask) -> str:
    pos = rows[np.flatnonzero(mask)]
    shown = ", ".join(str(int(p)) for p in pos[:5]) + (", ..." if pos.size > 5 else "")
    many = pos.size != 1
    return f"{pos.size} row{'s' if many else ''} (position{'s' if many else ''} {shown})"


def _response(s: pd.Series, name: str, rows) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)) or isinstance(
        s.dtype, pd.CategoricalDtype
    ):
        raise DataError(
            f"response {name!r} must be numeric, got dtype {s.dtype}; "
            "linear mixed models need a numeric response (convert or recode the column)"
        )
    y = s.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(y)
    if bad.any():
        raise DataError(f"response {name!r} has infinite values in {_rows_text(rows, bad)}")
    return y


def _nan_rows(M: np.ndarray) -> np.ndarray:
    """Rows of an (n, k) matrix with a NaN, column by column (a row-wise any over a few
    columns is several times slower on a million rows)."""
    out = np.zeros(M.shape[0], dtype=bool)
    for j in range(M.shape[1]):
        out |= np.isnan(M[:, j])
    return out


def _check_finite(M: np.ndarray, labels, rows) -> None:
    """DataError naming the first column of ``M`` with an infinite value."""
    for j in range(M.shape[1]):
        bad = ~np.isfinite(M[:, j])
        if bad.any():
            raise DataError(f"{labels[j]} has infinite values in {_rows_text(rows, bad)}")


def _check_weights(w: np.ndarray, label: str, rows) -> None:
    if not np.isfinite(w).all():
        raise DataError(f"{label} has infinite values in {_rows_text(rows, ~np.isfinite(w))}")
    if (w < 0).any():
        raise DataError(f"negative weights not allowed: {label} is negative in {_rows_text(rows, w < 0)}")
    if (w == 0).all():
        raise DataError(f"{label} is zero in every row")
    if (w == 0).any():
        raise DataError(
            f"{label} is zero in {_rows_text(rows, w == 0)}; drop those rows before fitting "
            "(the likelihood has a log(weights) term)"
        )


def _check_levels(terms, n: int) -> None:
    """lme4's checkNlevels / checkZdims (all 'stop' by default in lmerControl)."""
    few = [t for t in terms if t.nlevels < 2]
    if few:
        t = few[0]
        raise DataError(
            f"grouping factors must have > 1 sampled level (problems: {t.group} has "
            f"{t.nlevels} level in {t.source})"
        )
    many = [t for t in terms if t.nlevels >= n]
    if many:
        probs = ", ".join(dict.fromkeys(f"{t.group} ({t.nlevels} levels)" for t in many))
        raise DataError(
            f"number of levels of each grouping factor must be < number of observations "
            f"(problems: {probs}; {n} observations)"
        )
    for t in terms:
        n_re = t.nlevels * len(t.columns)
        if n_re >= n:
            raise DataError(
                f"number of observations (={n}) <= number of random effects (={n_re}) for term "
                f"{t.source} (group {t.group}, {len(t.columns)} column(s) x {t.nlevels} levels); "
                "the random-effects parameters and the residual variance are probably unidentifiable"
            )


# --------------------------------------------------------------------------
# columns, factors and R-style names
# --------------------------------------------------------------------------


def _label(v) -> str:
    """R's printed form of a level: TRUE/FALSE, 1 (not 1.0), strings as is."""
    if isinstance(v, (bool, np.bool_)):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return str(int(f)) if f.is_integer() and abs(f) < 1e15 else format(f, ".15g")
    return str(v)


def _factor(s: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Level codes and R-style labels of a column used as a factor (no NA)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        # on the Categorical itself: the .cat accessor builds Series (0.4 ms a call)
        cat = s.array
        codes = np.asarray(cat.codes, dtype=np.int32)
        cats = cat.categories
        used = np.bincount(codes[codes >= 0], minlength=len(cats)) > 0
        if not used.all():  # drop unused categories, as lme4's factor() of the used rows
            codes = np.where(codes >= 0, np.cumsum(used)[codes] - 1, -1).astype(np.int32)
            cats = cats[used]
        return codes, [_label(c) for c in cats]
    if pd.api.types.is_bool_dtype(s):
        v = s.to_numpy(dtype=bool)
        lev = [b for b in (False, True) if (v == b).any()]
        return np.searchsorted(np.array(lev), v).astype(np.int32), [_label(b) for b in lev]
    if pd.api.types.is_numeric_dtype(s):
        v = s.to_numpy(dtype=np.float64) if not pd.api.types.is_integer_dtype(s) else s.to_numpy(np.int64)
        lev, codes = np.unique(v, return_inverse=True)
        return codes.astype(np.int32), [_label(x) for x in lev]
    codes, uniq = pd.factorize(s, sort=False)  # hashing; then sort only the uniques
    string_dtype = pd.api.types.is_string_dtype(s) and s.dtype != object
    uniq = np.asarray(uniq, dtype=object)
    if string_dtype or pd.api.types.infer_dtype(uniq, skipna=False) == "string":
        order = np.argsort(uniq.astype(str), kind="stable")  # code-point order, as sorted()
        labels = uniq[order].tolist()
    else:
        order = np.array(sorted(range(len(uniq)), key=lambda i: _sort_key(uniq[i])), dtype=np.int64)
        labels = [_label(x) for x in uniq[order]]
    rank = np.empty(len(uniq), dtype=np.int32)
    rank[order] = np.arange(len(uniq), dtype=np.int32)
    return rank[codes], labels


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float, np.integer, np.floating)) else (1, 0, _label(v))


def _cached_factor(s: pd.Series, name: str, cache: dict | None):
    if cache is None:
        return _factor(s)
    if name not in cache:
        cache[name] = _factor(s)
    return cache[name]


def _model_column(s: pd.Series, name: str, cache: dict | None = None) -> pd.Series:
    """Column as formulaic should see it: float64, or Categorical in R's level order."""
    if isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(s):
        codes, labels = _cached_factor(s, name, cache)
        return pd.Series(pd.Categorical.from_codes(codes, categories=labels, ordered=_is_ordered(s)))
    if pd.api.types.is_numeric_dtype(s):
        if pd.api.types.is_complex_dtype(s):
            raise DataError(f"column {name!r} is complex; use real values")
        return pd.Series(s.to_numpy(dtype=np.float64, na_value=np.nan))
    if pd.api.types.is_string_dtype(s) or s.dtype == object:
        codes, labels = _cached_factor(s, name, cache)
        return pd.Series(pd.Categorical.from_codes(codes, categories=labels))
    raise DataError(
        f"column {name!r} has dtype {s.dtype}, which a model formula cannot use; "
        "convert it to numeric or categorical"
    )


def _new_column(s: pd.Series):
    """A new-data column for a stored ModelSpec: factors as label strings."""
    if isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(s) or not (
        pd.api.types.is_numeric_dtype(s)
    ):
        return pd.Series([None if pd.isna(v) else _label(v) for v in s], dtype=object)
    return pd.Series(s.to_numpy(dtype=np.float64, na_value=np.nan))


def _group_factor(sub: pd.DataFrame, group: str, cache: dict | None = None):
    """Codes and labels of a grouping factor ``a`` or interaction ``a:b:...``."""
    parts = [_cached_factor(sub[c], c, cache) for c in group_variables(group)]
    if len(parts) == 1:
        codes, labels = parts[0]
        return codes.astype(np.int32), tuple(labels)
    # one integer key per row, first variable slowest (mixed radix), then the observed keys
    key = np.zeros(len(sub), dtype=np.int64)
    for c, lab in parts:
        key = key * len(lab) + c
    uniq, codes = np.unique(key, return_inverse=True)
    digits = []
    rest = uniq
    for c, lab in reversed(parts):
        digits.append(rest % len(lab))
        rest = rest // len(lab)
    digits.reverse()
    labels = tuple(":".join(parts[k][1][d[i]] for k, d in enumerate(digits))
                   for i in range(uniq.size))
    return codes.reshape(-1).astype(np.int32), labels


def group_codes(term: RandomTerm, data) -> np.ndarray:
    """Codes of ``term``'s levels in new ``data``; -1 for unseen levels or missing values."""
    frame = _as_frame(data)
    names = group_variables(term.group)
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise _unknown(missing[0], frame, f"grouping factor of {term.source}")
    labels = [[None if pd.isna(v) else _label(v) for v in frame[c]] for c in names]
    index = {lev: i for i, lev in enumerate(term.levels)}
    out = np.full(len(frame), -1, dtype=np.int32)
    for r, row in enumerate(zip(*labels)):
        if None not in row:
            out[r] = index.get(":".join(row), -1)
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m|[⧛⧚]")


def _clean(exc: Exception) -> str:
    return " ".join(_ANSI.sub("", str(exc)).split()) or type(exc).__name__


def _formulaic_error(exc: Exception, parsed: ParsedFormula, where: str, expr: str) -> FormulaError:
    msg = _clean(exc)
    pos = None
    m = re.search(r"`([^`]+)`", msg)
    for snippet in ([m.group(1)] if m else []) + [expr]:
        pos = parsed.formula.find(snippet)
        if pos >= 0:
            span = len(snippet)
            break
    else:
        pos, span = None, 1
    return FormulaError(f"cannot evaluate {where}: {msg}", parsed.formula, pos, span=span)


def _is_ordered(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.CategoricalDtype) and bool(s.cat.ordered)


def _formulaic_inputs(prepared: pd.DataFrame, ordered) -> tuple[pd.DataFrame, dict]:
    """Data and context for formulaic: ordered factors get R's contr.poly."""
    ordered = [c for c in ordered if c in prepared.columns]
    ctx = dict(_context())
    if ordered:
        C, Poly = _transforms()["C"], _transforms()["Poly"]
        for c in ordered:
            ctx[c] = C(prepared[c], Poly())
        prepared = prepared.drop(columns=ordered)
    return prepared, ctx


_SPEC_CACHE: dict = {}  # formulaic ModelSpecs of recent (expression, column layout) pairs


def _spec_key(expr: str, prepared: pd.DataFrame):
    """Cache key for a formulaic spec, or None when the spec could depend on the data values.

    Parsing the formula is most of the per-fit cost of a small model (about 1 ms per matrix).
    A spec is reused only for expressions without function calls (a stateful transform such
    as center(x) would carry the first data set's mean) and only when every column has the
    same name, dtype and categories.
    """
    if "(" in expr:
        return None
    cols = []
    for c in prepared.columns:
        dt = prepared[c].dtype
        cats = tuple(dt.categories) if isinstance(dt, pd.CategoricalDtype) else None
        ordered = bool(dt.ordered) if isinstance(dt, pd.CategoricalDtype) else None
        cols.append((c, str(dt) if cats is None else "category", cats, ordered))
    return expr, tuple(cols)


class _Prepared:
    """The model columns by name; a DataFrame is built only if formulaic needs one (building
    it cost 0.4 ms, a fifth of a sleepstudy fit, for formulas that never reach formulaic)."""

    def __init__(self, cols: dict, n: int):
        self._cols, self._n, self._frame = cols, n, None
        self.columns = list(cols)

    def __getitem__(self, name):
        return self._cols[name]

    def __len__(self):
        return self._n

    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = pd.DataFrame(self._cols, index=pd.RangeIndex(self._n))
        return self._frame


class _PlainSpec:
    """Stands in for a formulaic ModelSpec when ``expr`` is plain numeric columns (see below)."""

    def __init__(self, columns: tuple[str, ...], intercept: bool):
        self.columns, self.intercept = columns, intercept

    def get_model_matrix(self, data, **_):
        n = len(data)
        cols = ([np.ones(n)] if self.intercept else []) + [
            np.asarray(data[c], dtype=np.float64) for c in self.columns]
        return np.column_stack(cols) if cols else np.empty((n, 0))


def _plain_terms(expr: str, prepared: pd.DataFrame):
    """(columns, intercept) when ``expr`` is a sum of numeric column names, else None.

    ``1 + x + z``, ``x``, ``0 + x``, ``x - 1``: the model matrix is those columns (after an
    intercept unless removed), exactly what formulaic builds, without its per-call parsing
    and pandas work (about 0.7 ms per matrix, half of a sleepstudy fit).
    """
    text = expr.strip()
    intercept = True
    for tail in ("- 1", "-1"):
        if text.endswith(tail):
            text, intercept = text[: -len(tail)].rstrip(), False
            break
    tokens = [t.strip() for t in text.split("+")]
    cols = []
    for t in tokens:
        if t == "1":
            continue
        if t == "0":
            intercept = False
            continue
        if not t.isidentifier() or t in cols or t not in prepared.columns:
            return None
        dt = prepared[t].dtype
        if not (pd.api.types.is_float_dtype(dt) or pd.api.types.is_integer_dtype(dt)) \
                or pd.api.types.is_bool_dtype(dt):
            return None
        cols.append(t)
    if ("1" in tokens and not intercept) or (not cols and not intercept):
        return None
    return tuple(cols), intercept


def _python_powers(expr: str) -> str:
    """R's arithmetic ``^`` inside function calls (``I(x^2)``, ``log(x^2)``) as Python's
    ``**``; a ``^`` outside calls stays the formula operator (``(a + b)^2``: interactions)."""
    toks = tokenize(expr)
    stack, cuts = [], []
    for k, t in enumerate(toks):
        if t.kind != "op":
            continue
        if t.text == "(":
            stack.append(k > 0 and toks[k - 1].kind in ("name", "bq"))
        elif t.text == ")" and stack:
            stack.pop()
        elif t.text == "^" and any(stack):
            cuts.append(t)
    for t in reversed(cuts):
        expr = expr[:t.start] + "**" + expr[t.end:]
    return expr


def _model_matrix(expr: str, prepared: pd.DataFrame, parsed: ParsedFormula, where: str):
    """formulaic model matrix of ``expr`` with R-style names; returns (M, names, MatrixSpec)."""
    from formulaic import model_matrix

    from .rcoding import RMaterializer

    plain = _plain_terms(expr, prepared)
    if plain is not None:
        spec = _PlainSpec(*plain)
        names = (["(Intercept)"] if spec.intercept else []) + [quote_name(c) for c in spec.columns]
        M = spec.get_model_matrix(prepared)
        return M, names, MatrixSpec(spec, tuple(names), tuple(range(M.shape[1])), ())
    if isinstance(prepared, _Prepared):
        prepared = prepared.frame()
    ordered = tuple(c for c in prepared.columns if _is_ordered(prepared[c]))
    data, ctx = _formulaic_inputs(prepared, ordered)
    expr = _python_powers(expr)
    key = _spec_key(expr, prepared)
    try:
        with np.errstate(all="ignore"):
            if key is not None and key in _SPEC_CACHE:
                mm = _SPEC_CACHE[key].get_model_matrix(data, na_action="ignore", context=ctx)
            else:
                mm = model_matrix(expr, data, ensure_full_rank=True, na_action="ignore",
                                  context=ctx, materializer=RMaterializer,
                                  materializer_params={"text": expr})
                if key is not None:
                    if len(_SPEC_CACHE) >= 64:
                        _SPEC_CACHE.pop(next(iter(_SPEC_CACHE)))
                    _SPEC_CACHE[key] = mm.model_spec
    except DataError:
        raise
    except Exception as exc:  # formulaic parse / evaluation errors
        raise _formulaic_error(exc, parsed, where, expr) from exc
    names = [_r_name(c, mm.model_spec, prepared.columns) for c in mm.columns]
    M = np.asarray(mm, dtype=np.float64).reshape(len(prepared), -1)
    spec = MatrixSpec(mm.model_spec, tuple(names), tuple(range(M.shape[1])), ordered)
    return M, names, spec


def _split_top(name: str, sep: str = ":") -> list[str]:
    parts, depth, start, quote = [], 0, 0, None
    for i, c in enumerate(name):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(name[start:i])
            start = i + 1
    parts.append(name[start:])
    return parts


def _r_name(col: str, spec, columns) -> str:
    """formulaic column name -> R's: ``Intercept`` -> ``(Intercept)``, ``f[T.B]`` -> ``fB``."""
    if col == "Intercept":
        return "(Intercept)"
    state = spec.encoder_state
    keys = sorted(state, key=len, reverse=True)
    cols = set(map(str, columns))
    out = []
    for part in _split_top(col):
        for key in keys:
            if part.startswith(key + "[") and part.endswith("]"):
                inner = part[len(key) + 1 : -1]
                if str(state[key][0]).lower().endswith("categorical") and inner.startswith("T."):
                    inner = inner[2:]
                part = (quote_name(key) if key in cols else key) + inner
                break
        else:
            if part in cols:
                part = quote_name(part)
        if part.startswith("I("):  # R deparses powers without spaces: I(x^2)
            part = part.replace(" ** ", "^")
        out.append(part)
    return ":".join(out)


def _offset_values(expr: str, prepared: pd.DataFrame, parsed: ParsedFormula) -> np.ndarray:
    toks = tokenize(expr)
    if len(toks) == 1 and toks[0].kind in ("name", "bq") and toks[0].value in prepared.columns:
        s = prepared[toks[0].value]
        if isinstance(s.dtype, pd.CategoricalDtype):
            raise DataError(f"offset column {toks[0].value!r} must be numeric")
        return s.to_numpy(dtype=np.float64)
    M, _, _ = _model_matrix(f"0 + I({expr})", prepared, parsed, f"offset({expr})")
    if M.shape[1] != 1:
        raise FormulaError(f"offset({expr}) must give one numeric column", parsed.formula,
                           max(parsed.formula.find("offset("), 0))
    return M[:, 0]


# --------------------------------------------------------------------------
# rank deficiency
# --------------------------------------------------------------------------


def _drop_redundant(X: np.ndarray, names, tol: float = RANK_TOL):
    """Drop columns that are linear combinations of earlier ones (R's dqrdc2 rule).

    Returns ``(X_kept, kept_names, dropped_names, kept_indices)``.
    """
    n, p = X.shape
    if p == 0:
        return X, list(names), [], []
    norms = np.linalg.norm(X, axis=0)
    R = np.linalg.qr(X, mode="r")  # (min(n, p), p): scipy's mode="r" returns all n rows
    diag = np.zeros(p)
    k = min(n, p)
    diag[:k] = np.abs(np.diag(R)[:k])
    # |R_jj| of an unpivoted QR is the distance of column j from the span of the earlier
    # columns (= the span of the earlier kept ones), so this is R's greedy keep-first rule.
    keep = [j for j in range(p) if norms[j] > 0 and diag[j] > tol * norms[j]]
    dropped = [names[j] for j in range(p) if j not in set(keep)]
    return X[:, keep], [names[j] for j in keep], dropped, keep


# --------------------------------------------------------------------------
# new data (predict): the fitted model's encoding applied to other rows
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NewRows:
    """A fitted model's matrices for new data (``new_rows``), row for row with the data.

    Rows with a missing value in an input of a matrix get NaN in that matrix (R's
    ``na.pass``); group codes are -1 for a level not seen when fitting or a missing value.
    """

    n: int
    X: np.ndarray | None  # (n, p) fixed-effects model matrix (the fit's kept columns)
    offset: np.ndarray | None  # (n,) the formula's offset() terms, None if it has none
    Z: dict  # term index -> (n, q_t) per-row model matrix of the term
    codes: dict  # term index -> (n,) int32 level codes into term.levels, -1 new or missing
    missing: dict  # term index -> (n,) bool: a grouping variable is missing in the row
    new_levels: dict  # term index -> sorted labels of levels not seen when fitting


def new_rows(frame: ModelFrame, data, *, fixed: bool = True, terms=(), groups=()) -> NewRows:
    """X and offset (``fixed``), each term's Z (``terms``: indices into ``frame.terms``)
    and group codes (``groups``) of ``frame``'s model for new ``data``.

    Uses the fit's encoding: factor levels and contrasts (polynomial for ordered factors),
    stateful transforms, the columns dropped for rank deficiency. The response is not
    needed. A missing column, or a level of a factor in X or Z not seen when fitting, raises
    a DataError naming it; unseen levels of grouping factors are reported in ``new_levels``.
    """
    if frame.fixed_spec is None:
        raise DataError("this model was built from arrays (design_from_arrays), so it has no "
                        "encoding for new data; build the new rows' matrices yourself")
    parsed = parse_formula(frame.formula)
    df = _as_frame(data)
    n = len(df)
    X = offset = None
    if fixed:
        cols = _expr_columns(parsed.fixed, df, "the fixed-effects part")
        X = _new_matrix(frame.fixed_spec, df, cols, "the fixed-effects part")
        if parsed.offsets:
            offset = np.zeros(n)
            for e in parsed.offsets:
                ocols = _expr_columns(e, df, f"offset({e})")
                prepared = _Prepared({c: _model_column(df[c], c) for c in ocols}, n)
                offset = offset + _offset_values(e, prepared, parsed)
    Z = {}
    for t in terms:
        term, spec = frame.terms[t], parsed.random[t]
        if term.spec is None or spec.group != term.group:  # pragma: no cover - defensive
            raise DataError(f"cannot rebuild the random term {term.source} for new data")
        Z[t] = _new_matrix(term.spec, df, _expr_columns(spec.expr, df, spec.source), spec.source)
    codes, missing, new = {}, {}, {}
    for t in groups:
        term = frame.terms[t]
        codes[t] = group_codes(term, df)
        names = group_variables(term.group)
        miss = np.zeros(n, dtype=bool)
        for c in names:
            miss |= np.asarray(pd.isna(df[c]), dtype=bool)
        missing[t] = miss
        rows = np.flatnonzero((codes[t] < 0) & ~miss)
        new[t] = tuple(sorted({":".join(_label(df[c].iloc[r]) for c in names) for r in rows}))
    return NewRows(n, X, offset, Z, codes, missing, new)


def _new_matrix(spec: MatrixSpec, df: pd.DataFrame, cols, where: str) -> np.ndarray:
    """``spec.matrix`` on the rows of ``df`` without missing inputs; NaN rows elsewhere."""
    import warnings

    from formulaic.errors import DataMismatchWarning

    na = np.zeros(len(df), dtype=bool)
    for c in cols:
        na |= np.asarray(pd.isna(df[c]), dtype=bool)
    ok = np.flatnonzero(~na)
    out = np.full((len(df), len(spec.columns)), np.nan)
    if ok.size == 0:
        return out
    sub = df.iloc[ok][list(cols)].reset_index(drop=True)
    _check_known_levels(spec, sub, where)
    if not cols:  # intercept only: MatrixSpec.matrix reads the row count off the columns
        sub = pd.DataFrame({"(rows)": np.zeros(ok.size)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataMismatchWarning)
        try:
            M = spec.matrix(sub)
        except DataMismatchWarning as exc:  # a level the checks above could not name
            raise DataError(f"new data have factor levels not seen when fitting in {where}: "
                            f"{_clean(exc)}") from None
    out[ok] = M
    return out


def _check_known_levels(spec: MatrixSpec, df: pd.DataFrame, where: str) -> None:
    """DataError naming a factor column of ``df`` with a level the fitted encoding lacks."""
    state = getattr(spec.model_spec, "encoder_state", None) or {}
    for key, (kind, st) in state.items():
        levels = st.get("categories") if isinstance(st, dict) else None
        if getattr(kind, "value", kind) != "categorical" or levels is None:
            continue
        m = re.fullmatch(r"\s*(?:factor|C)\(\s*`?([^`,()]+?)`?\s*[,)].*", key)
        col = key if key in df.columns else (m.group(1) if m else None)
        if col not in df.columns:
            continue
        known = set(map(str, levels))
        seen = dict.fromkeys(_label(v) for v in df[col] if not pd.isna(v))
        unseen = [v for v in seen if v not in known]
        if unseen:
            shown = ", ".join(repr(v) for v in unseen[:10]) + (", ..." if len(unseen) > 10 else "")
            raise DataError(
                f"column {col!r} (used in {where}) has level{'s' if len(unseen) > 1 else ''} "
                f"{shown} not seen when fitting; the model knows "
                f"{', '.join(repr(str(v)) for v in levels)}; drop or recode those rows")
