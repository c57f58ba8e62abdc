"""Fits from a Parquet/Arrow dataset read batch by batch: data larger than memory.

``dataset_stats(formula, source, batch_rows=)`` gives the design and the sufficient
statistics of ``formula`` on a Parquet file, a directory of them, or a pyarrow Dataset or
Table, without ever holding its numeric columns; ``fit(formula, source, batch_rows=)``
(model.py) fits from them. The model is the one ``fit`` makes of the whole table in memory
(``pyarrow.parquet.read_table(source).to_pandas()``), from two scans (Parquet files with
ParquetFile.iter_batches, other sources with pyarrow.dataset):

1. the *level columns* only (grouping factors, string, categorical and boolean variables,
   the arguments of ``factor()`` and ``C()``): each row's level code (int32, kept). From
   them, as for a DataFrame: the levels in R's order, the grouping factors, their nesting and
   crossed pairs (layout.py, pattern.py), and the encoding of X and Z (frame.py's matrix
   specifications, built on one row per level);
2. the numeric columns, ``batch_rows`` rows at a time: each batch's y, X, Z, weights and
   offset built with that encoding, its rows with a missing value (or a NaN made by a
   transformation) dropped as na.omit does, and its blocks of [Z X y]'W[Z X y] computed with
   one Scale, from the first batch (``_batch_scale``), and added (stats.chunk_stats: every
   block is a sum over rows). Batches are padded with weight-0 rows to one size, so they
   share one compiled pass.

Then, from the summed cross-products A = Xs'W Xs alone (``_final_scale``): lme4's rank check
of X = Xs T (frame._drop_redundant's rule, on the columns of C T with C'C = A; the first
batch's redundant columns enter Xs as residuals, so the rule keeps its precision; with prior
weights it is applied to the weighted X, lme4 to the unweighted one: they differ only for a
column within the tolerance of being redundant), the
check that the response varies, and a final Scale with the weighted means and QR factor of
all rows: the statistics are re-expressed in it ([Xs2 ys2] = [Xs ys] P), so a first batch
unlike the rest costs nothing in conditioning.

A row with a missing numeric value (seen only in pass 2) that removes a level or a crossed
pair changes the structure: pass 2 then runs again with the structure of the rows left.

Memory: the level codes of every row (4 bytes a row for each level column, grouping factor
and crossed pair list), one batch of rows and the statistics; never the numeric columns.
The model keeps no per-row data (``NotKept``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import layout
from .errors import DataError, FormulaError, RowsNotKeptError
from .formula import group_variables, tokenize
from .frame import (RANK_TOL, ModelFrame, RandomTerm, _check_finite, _check_levels,
                    _check_weights, _drop_redundant, _factor, _formulaic_inputs, _group_factor,
                    _label, _model_column, _model_matrix, _nan_rows, _numeric_vector,
                    _offset_values, _PlainSpec, _Prepared, _response, _unknown, _used_columns,
                    mixed_formula)
from .modeldesign import Design, DesignInfo
from .pattern import Pattern, index_lists
from .stats import Scale, Stats, _pass, _rows

__all__ = ["dataset_stats", "fit_dataset", "ArrowStream", "NotKept", "is_source", "BATCH_ROWS"]

BATCH_ROWS = 1_000_000  # default rows per batch
_FACTOR_CALLS = ("factor", "C")  # calls whose argument's values are levels
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "ipc", ".feather": "ipc",
            ".ipc": "ipc"}


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.dataset as ds
    except ImportError:
        raise ImportError('reading Parquet/Arrow data in batches needs pyarrow: '
                          'pip install "jaxlmm[parquet]"') from None
    return pa, ds


def is_source(data) -> bool:
    """Whether ``fit`` reads ``data`` in batches: a path (a Parquet/Arrow file or a directory
    of them), a list of paths, or a pyarrow object (Dataset, Table)."""
    if isinstance(data, (str, os.PathLike)):
        return True
    if isinstance(data, (list, tuple)) and data and all(isinstance(p, (str, os.PathLike))
                                                        for p in data):
        return True
    return type(data).__module__.split(".")[0] == "pyarrow"


def _as_dataset(source):
    """(pyarrow Dataset, name for the summary, its Parquet files or None) of a source
    (``is_source``)."""
    pa, ds = _pyarrow()
    if isinstance(source, ds.Dataset):
        return source, "pyarrow Dataset", None
    if isinstance(source, pa.Table):
        return ds.dataset(source), "pyarrow Table", None
    if isinstance(source, pa.RecordBatch):
        return ds.dataset(pa.Table.from_batches([source])), "pyarrow RecordBatch", None
    paths = [source] if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(paths, (list, tuple)) or not paths:
        raise DataError(f"cannot read {type(source).__name__} in batches: give a Parquet file, "
                        "a directory of them, a list of files, or a pyarrow Dataset or Table")
    paths = [os.fspath(p) for p in paths]
    for p in paths:
        if not os.path.exists(p):
            raise DataError(f"data file not found: {p}")
    ext = {os.path.splitext(p)[1].lower() for p in paths if not os.path.isdir(p)}
    fmts = {_FORMATS.get(e) for e in ext} or {"parquet"}
    if len(fmts) != 1 or None in fmts:
        raise DataError(f"cannot read {', '.join(sorted(ext))} files in batches: give Parquet "
                        "(.parquet) or Arrow IPC/Feather (.arrow, .feather) files (convert a "
                        "CSV first, e.g. with pyarrow.csv and pyarrow.parquet)")
    src = paths[0] if len(paths) == 1 else paths
    name = os.path.basename(os.path.normpath(paths[0])) + (" ..." if len(paths) > 1 else "")
    fmt = fmts.pop()
    dataset = ds.dataset(src, format=fmt)
    return dataset, name, list(dataset.files) if fmt == "parquet" else None


def _batch_rows(batch_rows) -> int:
    if batch_rows is None:
        return BATCH_ROWS
    try:
        b = int(batch_rows)
    except (TypeError, ValueError):
        b = 0
    if b < 1 or b != batch_rows:
        raise ValueError(f"batch_rows must be a positive number of rows, got {batch_rows!r}")
    return b


def _kind(t) -> str:
    """The role an Arrow type can play: numeric, string, category, bool or other."""
    import pyarrow.types as pt

    if pt.is_dictionary(t):
        return "category"
    if pt.is_string(t) or pt.is_large_string(t) or getattr(pt, "is_string_view", lambda _: False)(t):
        return "string"
    if pt.is_boolean(t):
        return "bool"
    if pt.is_integer(t) or pt.is_floating(t) or pt.is_decimal(t) or pt.is_null(t):
        return "numeric"
    return "other"


def _factor_columns(expr: str, names) -> set:
    """Columns that appear inside factor(...) or C(...) in ``expr``."""
    toks, stack, out = tokenize(expr), [], set()
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text in "([{":
            prev = toks[i - 1] if i else None
            stack.append(prev.text if prev is not None and prev.kind == "name" else None)
        elif t.kind == "op" and t.text in ")]}" and stack:
            stack.pop()
        elif t.kind in ("name", "bq") and t.value in names and any(
                f in _FACTOR_CALLS for f in stack):
            out.add(t.value)
    return out


# ---------------------------------------------------------------- per-row data not kept


class NotKept:
    """Stands in for a per-row array of a model fitted from batches: the array's shape and
    dtype, no values. Using the values raises RowsNotKeptError (a DataError) saying so. A
    pytree without leaves: a design holding it passes through jax transformations until
    the values are used."""

    __array_priority__ = 1000
    nbytes = 0

    def __init__(self, shape, dtype=np.float64, source: str = "a dataset", gram=None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.source = source
        self.gram = gram  # X'X, for X of an unweighted fit (anova's type I hypotheses)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"NotKept(shape={self.shape}, rows read in batches from {self.source})"

    def _fail(self, *args, **kwargs):
        raise RowsNotKeptError(
            f"the rows of this model were read in batches from {self.source} and not kept: "
            "per-row results (fitted values, residuals, predict() without newdata, simulate, "
            "bootstrap, shrinkage, jaxlmm.anova(m0, m1)) need them. "
            "predict(newdata=...), fixef, ranef, coef, VarCorr, summary, coef_table and "
            "confint work; for the rest fit the data in memory (a DataFrame)")

    __array__ = __getitem__ = __iter__ = __jax_array__ = __neg__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _fail
    __truediv__ = __rtruediv__ = __matmul__ = __rmatmul__ = __pow__ = _fail

    def __array_ufunc__(self, *args, **kwargs):
        self._fail()

    def __array_function__(self, func, types, args, kwargs):
        if func is np.shape:
            return self.shape
        if func is np.ndim:
            return self.ndim
        self._fail()


jax.tree_util.register_pytree_node(
    NotKept, lambda a: ((), (a.shape, a.dtype, a.source)), lambda aux, _: NotKept(*aux))


# ---------------------------------------------------------------- pass 1: level columns


class _Levels:
    """A level column read in pass 1: each row's code into the values met so far, in order
    of first appearance (-1: missing); categorical columns keep their categories' order
    (dictionaries of successive batches united, as pyarrow's to_pandas does)."""

    def __init__(self):
        self.known = None  # pd.Index of the values met so far: provisional code = position
        self.chunks: list = []
        self.categorical = False
        self.ordered = False
        self.codes = None

    def add(self, s: pd.Series) -> None:
        if isinstance(s.dtype, pd.CategoricalDtype):
            cat = s.array
            self.categorical = True
            self.ordered = self.ordered or bool(cat.ordered)
            values, codes = cat.categories, np.asarray(cat.codes)
        else:
            codes, values = pd.factorize(s)
        if self.known is None:
            self.known = pd.Index(values)
            look = np.arange(len(values), dtype=np.int32)
        else:
            look = np.asarray(self.known.get_indexer(values), np.int32)
            new = look < 0
            if new.any():
                look[new] = np.arange(len(self.known), len(self.known) + int(new.sum()))
                self.known = self.known.append(pd.Index(values[new]))
        if look.size == 0:
            self.chunks.append(np.full(codes.shape[0], -1, np.int32))
        else:
            self.chunks.append(np.where(codes >= 0, look[np.maximum(codes, 0)], -1)
                               .astype(np.int32))

    def close(self) -> None:
        self.codes = (np.concatenate(self.chunks) if self.chunks
                      else np.zeros(0, np.int32))
        self.chunks = []

    def final(self, kept: np.ndarray) -> "_Final":
        """The levels of the rows ``kept``, ordered as frame._factor orders them (unused
        values dropped), and those rows' codes."""
        c = self.codes[kept]
        vals = [] if self.known is None else list(self.known)
        used = np.bincount(c, minlength=len(vals)) > 0
        uvals = [v for v, u in zip(vals, used) if u]
        if self.categorical:
            rank_used = np.arange(len(uvals), dtype=np.int32)
            labels, values = [_label(v) for v in uvals], uvals
        else:
            rank_used, labels = _factor(pd.Series(uvals))
            values = [uvals[i] for i in np.argsort(rank_used, kind="stable")]
        rank = np.zeros(len(vals), np.int32)
        rank[used] = rank_used
        return _Final(rank[c], tuple(labels), values, self.ordered)


@dataclass(frozen=True)
class _Final:
    codes: np.ndarray  # (kept rows,) int32
    labels: tuple
    values: list  # level values in level order
    ordered: bool


class _Rows:
    """The kept rows for frame._group_factor, which reads every column from its cache."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, name):
        return None


@dataclass
class _Skeleton:
    """The structure of the kept rows: levels, encoding, factors, block pattern."""

    finals: dict
    x_names: list
    x_spec: object
    terms: list  # RandomTerm with Z of 0 rows
    facs: list  # layout.Factor in elimination order
    nchain: int
    entries: list
    struct: layout.Structure
    pattern: Pattern
    intercept: int | None
    n: int

    @property
    def signature(self):
        pat = self.pattern
        arrays = tuple(np.asarray(a).tobytes() for d in (pat.parent, pat.pi, pat.pj)
                       for a in d.values())
        return (tuple((c, f.labels) for c, f in self.finals.items()),
                tuple(t.levels for t in self.terms), tuple(f.group for f in self.facs),
                self.nchain, self.struct, arrays)


@dataclass
class _Batch:
    """A batch's rows for the pass, and what was dropped."""

    y: np.ndarray
    X: np.ndarray
    Z: tuple  # per factor, elimination order
    codes: tuple
    prows: tuple  # in pattern.pi's key order
    w: np.ndarray | None
    offset: np.ndarray | None
    dropped: np.ndarray  # positions dropped for missing numeric values or NaN
    n_na: int
    n_nan: int
    na_counts: dict  # missing values per numeric column (all rows of the batch)


class ArrowStream:
    """``formula`` on an Arrow dataset (``dataset_stats``' sources), prepared by pass 1 (the
    level columns). ``stats()`` makes pass 2 and returns (design, statistics);
    ``batches(scale)`` yields each batch's statistics (stats.Stats, before the rank check)."""

    def __init__(self, formula, source, *, batch_rows=None, weights=None, offset=None):
        self.dataset, self.name, self._files = _as_dataset(source)
        self.batch_rows = _batch_rows(batch_rows)
        parsed = mixed_formula(formula)
        self.parsed = parsed
        schema = self.dataset.schema
        names = pd.DataFrame(columns=list(schema.names))  # the column names, for the checks
        used, in_exprs = _used_columns(parsed, names)
        self.weights = _column_arg(weights, names, "weights")
        self.offset = _column_arg(offset, names, "offset")
        extra = [c for c in (self.weights, self.offset) if c is not None]
        kinds = {c: _kind(schema.field(c).type) for c in used + extra}
        resp = parsed.response
        if kinds[resp] not in ("numeric", "bool"):
            raise DataError(f"response {resp!r} must be numeric, got Arrow type "
                            f"{schema.field(resp).type}; linear mixed models need a numeric "
                            "response (convert or recode the column)")
        groups = {v for spec in parsed.random for v in group_variables(spec.group)}
        exprs = [parsed.fixed] + [s.expr for s in parsed.random] + list(parsed.offsets)
        calls = set().union(*(_factor_columns(e, used) for e in exprs))
        self.cat_cols = [c for c in used if c in in_exprs and kinds[c] != "numeric"]
        for c in self.cat_cols:
            if kinds[c] == "other":
                raise DataError(f"column {c!r} has Arrow type {schema.field(c).type}, which a "
                                "model formula cannot use; convert it to numeric or "
                                "categorical")
        self.level_cols = [c for c in used
                           if c in groups or c in calls or c in self.cat_cols]
        self.in_exprs = [c for c in used if c in in_exprs and c != resp]
        self.numeric_cols = list(dict.fromkeys(
            [resp] + [c for c in self.in_exprs if c not in self.cat_cols] + extra))
        self._pass1()

    # ---------------------------------------------------------------- reading

    def _scan(self, columns):
        """The dataset's record batches (columns ``columns``, in order). Parquet files given
        by path are read file by file with ParquetFile.iter_batches, which holds about one
        row group (the dataset scanner reads ahead several); other sources are scanned with
        little read-ahead."""
        if self._files is None:
            yield from self.dataset.to_batches(columns=list(columns), batch_size=self.batch_rows,
                                               batch_readahead=1, fragment_readahead=1)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([self.dataset.schema.field(c) for c in columns])
        for path in self._files:
            with self.dataset.filesystem.open_input_file(path) as fh:
                for b in pq.ParquetFile(fh).iter_batches(batch_size=self.batch_rows,
                                                         columns=list(columns)):
                    if b.schema != schema:  # as the dataset scanner: the dataset's types
                        b = pa.Table.from_batches([b]).cast(schema).combine_chunks()
                        b = b.to_batches()[0] if b.num_rows else schema.empty_table().to_batches()
                    yield b

    def _tables(self, columns):
        """Tables of exactly ``batch_rows`` rows (the last one shorter): the scan's batches
        end at row groups and files."""
        pa, _ = _pyarrow()
        buf, have = [], 0
        for b in self._scan(columns):
            while b.num_rows:
                take = min(self.batch_rows - have, b.num_rows)
                buf.append(b.slice(0, take))
                have += take
                b = b.slice(take)
                if have == self.batch_rows:
                    yield pa.Table.from_batches(buf)
                    buf, have = [], 0
        if have:
            yield pa.Table.from_batches(buf)

    def _pass1(self) -> None:
        levels = {c: _Levels() for c in self.level_cols}
        n = 0
        for batch in self._scan(self.level_cols):
            for c in self.level_cols:
                levels[c].add(batch.column(c).to_pandas())
            n += batch.num_rows
        na = np.zeros(n, bool)
        self.na_counts = {}
        for c, lv in levels.items():
            lv.close()
            m = lv.codes < 0
            self.na_counts[c] = int(m.sum())
            na |= m
        self.levels, self.n_rows, self.kept = levels, n, ~na
        if not self.kept.any():
            culprits = ", ".join(f"{k} ({v} missing)" for k, v in self.na_counts.items() if v)
            raise DataError(f"no rows left after dropping rows with missing values"
                            f"{' (input has 0 rows)' if n == 0 else ''}; missing values in: "
                            f"{culprits or '-'}")

    # ---------------------------------------------------------------- structure

    def _skeleton(self, kept: np.ndarray, first: pd.DataFrame) -> _Skeleton:
        """The structure of the rows ``kept``; ``first``: a batch of the numeric columns, whose
        values fill the prototype rows the encoding is built on."""
        parsed = self.parsed
        n = int(kept.sum())
        finals = {c: self.levels[c].final(kept) for c in self.level_cols}
        x_names, x_spec, zs = self._encoding(finals, first)
        cache = {c: (f.codes, list(f.labels)) for c, f in finals.items()}
        terms = []
        for spec, (z_names, z_spec) in zip(parsed.random, zs):
            codes, levels = _group_factor(_Rows(n), spec.group, cache)
            terms.append(RandomTerm(spec.group, tuple(z_names), np.empty((0, len(z_names))),
                                    codes, levels, spec.source, z_spec))
        factors = layout.amalgamate(terms)
        elim, nchain = layout.order_factors(factors)
        entries = layout.theta_layout(terms, factors, elim)
        i0 = x_names.index("(Intercept)") if "(Intercept)" in x_names else None
        struct = layout.structure(factors, elim, nchain, entries, len(x_names), i0)
        facs = [factors[f] for f in elim]
        pattern = index_lists([f.codes for f in facs], nchain, struct)
        return _Skeleton(finals, x_names, x_spec, terms, facs, nchain, entries, struct,
                         pattern, i0, n)

    def _encoding(self, finals: dict, first: pd.DataFrame):
        """X's and each term's Z's specifications (frame.MatrixSpec), built on prototype rows
        holding every level of the level columns (numeric values from ``first``)."""
        parsed = self.parsed
        k = max([len(finals[c].labels) for c in self.in_exprs if c in finals] + [2])
        cols = {}
        for c in self.in_exprs:
            if c in self.cat_cols:
                f = finals[c]
                cols[c] = pd.Series(pd.Categorical.from_codes(
                    np.arange(k) % len(f.labels), categories=list(f.labels), ordered=f.ordered))
            else:
                vals = (finals[c].values if c in finals
                        else first[c][first[c].notna()].to_numpy()[:k])
                cols[c] = _model_column(pd.Series(np.resize(np.asarray(vals), k)
                                                  if len(vals) else np.ones(k)), c)
        y = first[parsed.response].to_numpy(dtype=np.float64, na_value=np.nan)
        y = y[np.isfinite(y)][:k]
        cols[parsed.response] = pd.Series(np.resize(y, k) if y.size else np.ones(k))
        prepared = _Prepared(cols, k)
        _, x_names, x_spec = _model_matrix(parsed.fixed, prepared, parsed,
                                           "the fixed-effects part")
        self._stateless(x_spec, parsed.fixed)
        zs = []
        for spec in parsed.random:
            _, z_names, z_spec = _model_matrix(spec.expr, prepared, parsed, spec.source)
            self._stateless(z_spec, spec.expr)
            zs.append((z_names, z_spec))
        for e in parsed.offsets:
            if e not in prepared.columns:
                _, _, o_spec = _model_matrix(f"0 + I({e})", prepared, parsed, f"offset({e})")
                self._stateless(o_spec, e)
        return list(x_names), x_spec, zs

    def _stateless(self, spec, expr: str) -> None:
        state = getattr(spec.model_spec, "transform_state", None)
        if state:
            f = self.parsed.formula
            key = next(iter(state))
            raise FormulaError(
                f"{', '.join(state)} learns from the data (a mean, scale or basis), so with "
                "the data read in batches it would learn from one batch only; compute that "
                "column beforehand (e.g. when writing the Parquet file)", f,
                max(f.find(key), f.find(expr), 0), span=len(key) if key in f else 1)

    # ---------------------------------------------------------------- pass 2: numeric columns

    def _batch(self, df: pd.DataFrame, start: int, sk: _Skeleton, kept_b: np.ndarray,
               ki: int) -> _Batch:
        """The rows of ``df`` (data rows start, start + 1, ...) for the pass: those ``kept_b``
        (kept so far; the first of them is row ``ki`` of sk's codes) without a missing
        numeric value or a NaN from a transformation, as frame.model_frame drops them."""
        parsed, resp = self.parsed, self.parsed.response
        pos = np.arange(start, start + len(df))
        na, na_counts = ~kept_b, {}
        for c in self.numeric_cols:
            m = np.asarray(pd.isna(df[c]), dtype=bool)
            na_counts[c] = int(m.sum())
            na |= m
        n_na = int(np.sum(na & kept_b))
        ok = np.flatnonzero(~na)
        sel = ~na[kept_b]  # which kept rows of the batch stay
        kb = int(kept_b.sum())
        sub = df if ok.size == len(df) else df.iloc[ok].reset_index(drop=True)
        y = _response(sub[resp], resp, pos[ok])
        cols = {}
        for c in self.in_exprs:
            if c in self.cat_cols:
                f = sk.finals[c]
                cols[c] = pd.Series(pd.Categorical.from_codes(
                    f.codes[ki:ki + kb][sel], categories=list(f.labels), ordered=f.ordered))
            else:
                cols[c] = _model_column(sub[c], c)
        cols[resp] = pd.Series(y)
        prepared = _Prepared(cols, len(y))
        X = _matrix(sk.x_spec, prepared)
        nan = _nan_rows(X)
        Zt = []
        for t in sk.terms:
            Zt.append(_matrix(t.spec, prepared))
            nan |= _nan_rows(Zt[-1])
        offsets = [(f"offset({e})", _offset_values(e, prepared, parsed)) for e in parsed.offsets]
        if self.offset is not None:
            label = f"offset column {self.offset!r}"
            offsets.append((label, _numeric_vector(sub[self.offset], label)))
        for _, v in offsets:
            nan |= np.isnan(v)
        w = None
        wlabel = f"weights column {self.weights!r}"
        if self.weights is not None:
            w = _numeric_vector(sub[self.weights], wlabel)
        n_nan = int(nan.sum())
        if n_nan:
            keep = ~nan
            y, X, Zt = y[keep], X[keep], [Z[keep] for Z in Zt]
            offsets = [(lab, v[keep]) for lab, v in offsets]
            w = None if w is None else w[keep]
            sel[np.flatnonzero(sel)[nan]] = False
            ok = ok[keep]
        rows = pos[ok]
        _check_finite(X, [f"fixed-effects column {c!r}" for c in sk.x_names], rows)
        for t, Z in zip(sk.terms, Zt):
            _check_finite(Z, [f"random-effects column {c!r} of {t.source}" for c in t.columns],
                          rows)
        for label, v in offsets:
            _check_finite(v[:, None], [label], rows)
        if w is not None and w.size:
            _check_weights(w, wlabel, rows)
        Zs = tuple(np.concatenate([Zt[t] for t in f.terms], axis=1) for f in sk.facs)
        codes = tuple(np.asarray(f.codes)[ki:ki + kb][sel] for f in sk.facs)
        prows = tuple(np.asarray(sk.pattern.prow[key])[ki:ki + kb][sel]
                      for key in sk.pattern.pi)
        kept_pos = pos[kept_b]
        return _Batch(y, X, Zs, codes, prows, w,
                      sum(v for _, v in offsets) if offsets else None,
                      kept_pos[~sel], n_na, n_nan, na_counts)

    def _pass2(self, kept: np.ndarray, run: "_Run", scale: Scale | None = None, dtype=None):
        """Pass 2 over the rows ``kept``: yields each batch's pass outputs (D, C, P, E, M, n,
        ldw); ``run`` collects the structure, the Scale, and the rows dropped."""
        dtype = jnp.dtype(jnp.float64 if dtype is None else dtype)
        pad_to = min(self.batch_rows, self.n_rows)
        start = ki = 0
        prev = None  # the previous batch's pass: at most one in flight (async dispatch)
        for table in self._tables(self.numeric_cols):
            df = table.to_pandas(split_blocks=True)
            nb = len(df)
            kept_b = kept[start:start + nb]
            kb = int(kept_b.sum())
            if kb:
                if run.sk is None:
                    run.sk = self._skeleton(kept, df)
                    run.first = df.head(1000).copy()  # prototype values for a rebuild
                    _check_memory(run.sk, pad_to, dtype)
                b = self._batch(df, start, run.sk, kept_b, ki)
                run.add(b)
                if b.y.size:
                    if scale is None:
                        w = np.ones(b.y.size) if b.w is None else b.w
                        y = b.y if b.offset is None else b.y - b.offset
                        scale = _batch_scale(b.X, y, w, run.sk.intercept)
                    run.scale = scale
                    out = _batch_pass(b, run.sk, scale, pad_to, dtype)
                    if prev is not None:
                        jax.block_until_ready(prev)
                    prev = out
                    yield out
            start += nb
            ki += kb
        if start != self.n_rows:
            raise DataError(f"the data changed between the two passes over them ({self.n_rows} "
                            f"rows, then {start})")

    def batches(self, scale: Scale | None = None, *, dtype=None):
        """Each batch's statistics (stats.Stats of the rows kept by pass 1, less those with a
        missing numeric value; batches with no row left are skipped), with one Scale:
        ``scale``, or the first batch's. Statistics of batches add up (Stats.__add__) to those
        of their union."""
        run = _Run()
        for out in self._pass2(self.kept, run, scale, dtype):
            yield _stats(out, run.scale, run.sk.struct, run.sk.pattern)

    def stats(self, *, dtype=None) -> tuple[Design, Stats]:
        """Pass 2, then the rank check and final Scale from the sums: (design, statistics)."""
        kept, n_na, n_nan = self.kept, 0, 0
        for _ in range(3):
            run = _Run()
            total = None
            for out in self._pass2(kept, run, dtype=dtype):
                total = out if total is None else jax.tree_util.tree_map(jnp.add, total, out)
            n_na, n_nan = n_na + run.n_na, n_nan + run.n_nan
            if total is None:
                counts = {**self.na_counts, **run.na_counts}
                culprits = ", ".join(f"{k} ({v} missing)" for k, v in counts.items() if v)
                what = "missing values" if not n_nan else "missing values or NaN values"
                raise DataError(f"no rows left after dropping rows with {what}; missing "
                                f"values in: {culprits or '-'}")
            if not run.dropped:
                break
            kept = kept.copy()
            kept[np.concatenate(run.dropped)] = False
            sk = self._skeleton(kept, run.first)
            if sk.signature == run.sk.signature:  # no level or pair lost: the sums stand
                run.sk = sk
                break
        else:  # pragma: no cover - a second pass 2 drops nothing
            raise RuntimeError("pass 2 did not settle on a structure")
        self.n_na = int(self.n_rows - self.kept.sum()) + n_na
        self.n_nan = n_nan
        return _finish(total, run, self, kept)


class _Run:
    """What one pass 2 found: structure, Scale, rows dropped, counts."""

    def __init__(self):
        self.sk = None
        self.scale = None
        self.first = None
        self.dropped = []
        self.n_na = self.n_nan = 0
        self.na_counts: dict = {}
        self.ymin, self.ymax = np.inf, -np.inf

    def add(self, b: _Batch) -> None:
        if b.dropped.size:
            self.dropped.append(b.dropped)
        self.n_na += b.n_na
        self.n_nan += b.n_nan
        for c, k in b.na_counts.items():
            self.na_counts[c] = self.na_counts.get(c, 0) + k
        if b.y.size:
            self.ymin = min(self.ymin, float(b.y.min()))
            self.ymax = max(self.ymax, float(b.y.max()))


def _column_arg(arg, names: pd.DataFrame, what: str):
    """A weights/offset argument: a column name (checked) or None."""
    if arg is None:
        return None
    if not isinstance(arg, str):
        raise DataError(f"with data read in batches, {what}= must be a column name of the "
                        f"data, got {type(arg).__name__}; add the values as a column")
    if arg not in names.columns:
        raise _unknown(arg, names, f"{what}=")
    return arg


def _matrix(spec, prepared: _Prepared) -> np.ndarray:
    """A batch's model matrix from a frame.MatrixSpec built on the prototype (all columns;
    ``spec.keep`` is applied to the statistics later): MatrixSpec.matrix on columns already
    prepared (factors as Categoricals of every level)."""
    ms, n = spec.model_spec, len(prepared)
    if isinstance(ms, _PlainSpec):
        return ms.get_model_matrix(prepared)
    data, ctx = _formulaic_inputs(prepared.frame(), spec.ordered)
    with np.errstate(all="ignore"):
        mm = ms.get_model_matrix(data, na_action="ignore", context=ctx)
    return np.asarray(mm, dtype=np.float64).reshape(n, -1)


def _batch_pass(b: _Batch, sk: _Skeleton, scale: Scale, pad_to: int, dtype):
    """stats._pass on a batch padded with weight-0 rows to ``pad_to`` rows."""
    k = b.y.size
    pad = pad_to - k
    w = np.ones(k) if b.w is None else b.w
    pair_rows = {key: (_rows(r, slice(None), pad), pi)
                 for r, (key, pi) in zip(b.prows, sk.pattern.pi.items())}
    out = _pass(tuple(_rows(Z, slice(None), pad) for Z in b.Z),
                tuple(_rows(c, slice(None), pad) for c in b.codes), pair_rows,
                _rows(b.X, slice(None), pad), _rows(b.y, slice(None), pad),
                _rows(w, slice(None), pad),
                None if b.offset is None else _rows(b.offset, slice(None), pad),
                sk.struct, dtype, scale=scale, valid=np.arange(pad_to) < k)
    return out[:-1]


def _check_memory(sk: _Skeleton, rows: int, dtype) -> None:
    """memory.check (an InsufficientMemoryError before the pass) for the skeleton's
    statistics and a pass over ``rows`` rows (the per-row arrays stay on the host)."""
    from . import memory

    n, p = sk.n, sk.struct.p
    pattern = replace(sk.pattern, prow={k: NotKept((n,)) for k in sk.pattern.prow})
    d = Design(y=NotKept((n,)), X=NotKept((n, p)), Z=tuple(NotKept((n, f.q)) for f in sk.facs),
               codes=tuple(NotKept((n,)) for _ in sk.facs), weights=None, offset=None,
               pattern=pattern, struct=sk.struct, info=None)
    memory.check(d, dtype=dtype, chunk_rows=rows)


def _stats(out, scale: Scale, struct, pat: Pattern) -> Stats:
    D, C, P, E, M, n, ldw = out
    return Stats(D=D, C=C, P=P, E=E, M=M, n=n, ldw=ldw, scale=scale, struct=struct,
                 parent=pat.parent, pi=pat.pi, pj=pat.pj, pmap=pat.pmap, ppa=pat.ppa,
                 ppb=pat.ppb, ppt=pat.ppt, ppj=pat.ppj)


# ---------------------------------------------------------------- scales


def _batch_scale(X, y, w, i0) -> Scale:
    """stats.Scale from one batch's rows (y less the offset), safe for a rank-deficient X:
    columns that frame._drop_redundant drops on the batch get scale 1 and are only
    residualized on the earlier kept columns (R_dd = 1, R[d, j] = 0 for j != d), so no
    other column of Xs mixes them in and a column redundant in all rows is (to rounding) a
    zero column of Xs."""
    n, p = X.shape
    w = np.asarray(w, np.float64) / np.sum(w)
    if i0 is not None:
        x0 = X[:, i0]
        c, m = float(w @ y), w @ X
        m[i0] = 0.0
    else:
        x0, c, m = np.zeros(n), 0.0, np.zeros(p)
    s = float(np.sqrt(w @ (y - c * x0) ** 2))
    s = s if np.isfinite(s) and s > 0 else 1.0
    R = np.eye(p)
    cols = [j for j in range(p) if j != i0]
    keep = set(_drop_redundant(X, [""] * p)[3])
    good = [j for j in cols if j in keep]
    if good:
        Xc = (X - x0[:, None] * m) * np.sqrt(w)[:, None]
        Q, Rg = np.linalg.qr(Xc[:, good])
        sgn = np.where(np.diag(Rg) < 0, -1.0, 1.0)
        Q, Rg = Q * sgn, Rg * sgn[:, None]
        R[np.ix_(good, good)] = Rg
        for d in cols:
            if d not in keep:
                e = [t for t, g in enumerate(good) if g < d]
                R[[good[t] for t in e], d] = Q[:, e].T @ Xc[:, d]
    return Scale(np.float64(c), np.float64(s), m, R)


def _chol_psd(A: np.ndarray) -> np.ndarray:
    """Upper C with C'C = A for a positive semi-definite A; a pivot that is rounding noise
    (column j in the span of the earlier ones) gives a zero row."""
    p = A.shape[0]
    C = np.zeros_like(A)
    eps = np.finfo(A.dtype).eps
    for j in range(p):
        d = A[j, j] - C[:j, j] @ C[:j, j]
        if d > 64 * eps * max(A[j, j], 0.0):
            C[j, j] = np.sqrt(d)
            C[j, j + 1:] = (A[j, j + 1:] - C[:j, j] @ C[:j, j + 1:]) / C[j, j]
    return C


def _kept_columns(Y: np.ndarray, tol: float = RANK_TOL) -> list:
    """frame._drop_redundant's rule on the columns of Y (X = Q Y, Q orthonormal): column j is
    kept when its distance from the span of the kept earlier columns exceeds ``tol`` times
    its norm (Gram-Schmidt, twice)."""
    basis, keep = np.zeros((Y.shape[0], 0)), []
    for j in range(Y.shape[1]):
        v = Y[:, j].copy()
        norm = np.linalg.norm(v)
        for _ in range(2):
            v -= basis @ (basis.T @ v)
        d = np.linalg.norm(v)
        if norm > 0 and d > tol * norm:
            keep.append(j)
            basis = np.column_stack([basis, v / d])
    return keep


def _final_scale(A: np.ndarray, scale: Scale, i0, nobs: float):
    """From the summed weighted cross-products A of [Xs ys] (in ``scale``): the columns kept
    by lme4's rank rule, the Scale of all rows for them (weighted means, QR factor of the
    centred columns; as stats._scale) and P with [Xs2 ys2] = [Xs ys] P.

    X = Xs T with T = R + e0 m' (stats.Scale), and A_XX = C'C, so X's columns are those of
    C T in an orthonormal basis of the rows: the rank rule and the new QR factor are computed
    on that p x p matrix."""
    p = A.shape[0] - 1
    R, m = np.asarray(scale.R, np.float64), np.asarray(scale.m, np.float64)
    c, s = float(scale.c), float(scale.s)
    T = R.copy()
    if i0 is not None:
        T[i0] += m
    C = _chol_psd(A[:p, :p])
    keep = _kept_columns(C @ T)
    TK = T[:, keep]
    e0 = np.zeros(p)
    if i0 is not None:
        e0[i0] = 1.0
        k0 = keep.index(i0)
        sw = A[i0, i0]
        mu = A[i0, :p] @ TK / sw
        mu[k0] = 0.0
        c2 = c + s * A[i0, p] / sw
        var = (A[p, p] - A[i0, p] ** 2 / sw) / sw
    else:
        k0, sw, mu, c2 = None, nobs, np.zeros(len(keep)), 0.0
        var = A[p, p] / sw
    s2 = s * np.sqrt(var) if var > 0 and np.isfinite(var) else 1.0
    s2 = s2 if s2 > 0 else 1.0
    B = TK - np.outer(e0, mu)  # X_K - x0 mu' = Xs B
    rest = [k for k in range(len(keep)) if k != k0]
    R2 = np.eye(len(keep))
    if rest:
        Rc = np.linalg.qr(C @ B[:, rest] / np.sqrt(sw), mode="r")[:len(rest)]
        dg = np.diagonal(Rc)
        ok = np.abs(dg) > 1e-300
        Rc = Rc * np.where(ok, np.sign(dg), 1.0)[:, None]
        Rc[np.diag(~ok)] = 1.0
        R2[np.ix_(rest, rest)] = Rc
    import scipy.linalg

    P = np.zeros((p + 1, len(keep) + 1))
    P[:p, :len(keep)] = scipy.linalg.solve_triangular(R2, B.T, trans="T", lower=False).T
    if i0 is not None:
        P[i0, -1] = (c - c2) / s2
    P[p, -1] = s / s2
    return keep, Scale(np.float64(c2), np.float64(s2), mu, R2), P


def _rebase(out, P: np.ndarray, r: int):
    """The pass outputs re-expressed in the basis [Xs ys] P (E's and M's X and y parts)."""
    D, C, Pb, E, M, n, ldw = out
    P = jnp.asarray(P, M.dtype)
    E = tuple(jnp.einsum("ba,gbq->gaq", P, e) for e in E)
    Mrx = M[:r, r:] @ P
    M = jnp.block([[M[:r, :r], Mrx], [Mrx.T, P.T @ M[r:, r:] @ P]])
    return D, C, Pb, E, M, n, ldw


def _check_response(A: np.ndarray, i0, y_range, response: str) -> None:
    """modeldesign._check_response_varies from the cross-products A of [Xs ys] (Xs weighted
    orthonormal): the residual sum of squares of ys on Xs relative to ys's (centred) sum of
    squares, with the tolerance 1e-12 a cross-product can resolve."""
    p = A.shape[0] - 1
    yy = A[p, p] - (A[i0, p] ** 2 / A[i0, i0] if i0 is not None else 0.0)
    b = np.linalg.lstsq(A[:p, :p], A[:p, p], rcond=None)[0] if p else np.zeros(0)
    rss = A[p, p] - A[p, :p] @ b
    if y_range[0] == y_range[1] or rss <= 1e-12 * yy:
        what = (f"is constant (every value is {y_range[0]:g})" if y_range[0] == y_range[1]
                else "is fitted exactly by the fixed effects (zero residuals)")
        raise DataError(f"response {response!r} {what}, so there is no variation left "
                        "for the random effects or the residual (sigma would be 0); check the "
                        "response column, or drop fixed-effects terms that reproduce it")


def _finish(total, run: _Run, stream: ArrowStream, kept: np.ndarray):
    """The design and statistics from pass 2's sums: levels checked, X's rank checked, the
    final Scale applied, per-row arrays replaced by NotKept."""
    sk, parsed = run.sk, stream.parsed
    n = sk.n
    _check_levels(sk.terms, n)
    r = sk.struct.m_rand
    A = np.asarray(total[4][r:, r:], np.float64)
    keep, scale, P = _final_scale(A, run.scale, sk.intercept, float(total[5]))
    out = _rebase(total, P, r)
    i0 = None if sk.intercept is None else keep.index(sk.intercept)
    _check_response(np.asarray(out[4][r:, r:], np.float64), i0, (run.ymin, run.ymax),
                    parsed.response)
    names = [sk.x_names[j] for j in keep]
    dropped = [nm for j, nm in enumerate(sk.x_names) if j not in keep]
    struct = replace(sk.struct, p=len(keep), intercept=i0)
    pattern = index_lists([f.codes for f in sk.facs], sk.nchain, struct)
    src = stream.name
    nk = lambda *shape, dtype=np.float64: NotKept(shape, dtype, src)  # noqa: E731
    dev = {f: jax.device_put(getattr(pattern, f)) for f in
           ("parent", "pi", "pj", "pmap", "ppa", "ppb", "ppt", "ppj")}
    pattern = Pattern(prow={k: nk(n, dtype=np.int32) for k in pattern.prow}, **dev)
    terms = tuple(replace(t, Z=nk(n, len(t.columns)), codes=nk(n, dtype=np.int32))
                  for t in sk.terms)
    facs = [replace(f, Z=nk(n, f.q), codes=nk(n, dtype=np.int32)) for f in sk.facs]
    messages = []
    if stream.n_na:
        messages.append(f"{stream.n_na} row{'s' if stream.n_na != 1 else ''} with missing "
                        "values dropped")
    if stream.n_nan:
        messages.append(f"{stream.n_nan} row{'s' if stream.n_nan != 1 else ''} dropped where "
                        "transformations in the formula give NaN")
    if dropped:
        k = len(dropped)
        sfx = "s" if k != 1 else ""
        messages.append(f"fixed-effect model matrix is rank deficient so dropping {k} "
                        f"column{sfx} / coefficient{sfx}: {', '.join(dropped)}")
    gram = None
    if stream.weights is None:  # X'X = T2' A2 T2 with X = Xs2 T2, T2 = R2 + e0 m2'
        T2 = np.asarray(scale.R, np.float64).copy()
        if i0 is not None:
            T2[i0] += np.asarray(scale.m, np.float64)
        A2 = np.asarray(out[4][r:, r:], np.float64)[:len(keep), :len(keep)]
        gram = T2.T @ A2 @ T2
    frame = ModelFrame(
        formula=parsed.formula, response=parsed.response, y=nk(n),
        X=NotKept((n, len(keep)), np.float64, src, gram),
        fixef_names=tuple(names), dropped=tuple(dropped), terms=terms,
        weights=None if stream.weights is None else nk(n),
        offset=None if stream.offset is None and not parsed.offsets else nk(n),
        n_dropped=stream.n_na + stream.n_nan, kept=nk(n, dtype=np.int64),
        messages=tuple(messages),
        fixed_spec=replace(sk.x_spec, columns=tuple(names), keep=tuple(keep)))
    design = Design(y=frame.y, X=frame.X, Z=tuple(f.Z for f in facs),
                    codes=tuple(f.codes for f in facs), weights=frame.weights,
                    offset=frame.offset, pattern=pattern, struct=struct,
                    info=DesignInfo(frame, facs, sk.nchain, sk.entries))
    dtype = out[4].dtype
    scale = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), scale)
    return design, _stats(out, scale, struct, pattern)


# ---------------------------------------------------------------- entry points


def dataset_stats(formula, source, *, batch_rows: int | None = None, weights=None,
                  offset=None, dtype=None) -> tuple[Design, Stats]:
    """The design and sufficient statistics of ``formula`` on ``source``, read in batches of
    ``batch_rows`` rows (default 1,000,000): a Parquet file, a directory or list of Parquet
    (or Arrow IPC/Feather) files, or a pyarrow Dataset or Table. Needs pyarrow
    (``pip install "jaxlmm[parquet]"``).

    The same model as the whole table in memory (module docstring): rows with missing values
    dropped, rank-deficient columns of X dropped (``design.info.frame.messages`` says so).
    ``weights``/``offset``: column names. The design's per-row arrays are ``NotKept``; the
    statistics are those of ``suffstats`` on the table (another Scale: an exact
    reparametrization). ``fit_stats(stats)`` fits them.
    """
    stream = ArrowStream(formula, source, batch_rows=batch_rows, weights=weights,
                         offset=offset)
    return stream.stats(dtype=dtype)


def fit_dataset(formula, source, *, batch_rows: int | None = None, reml: bool = True,
                weights=None, offset=None, start=None, max_iter: int = 200,
                hessian: str = "auto", data_name: str | None = None,
                progress: bool | None = None, devices=None):
    """``fit`` (model.py) on data read in batches (``dataset_stats``): a LinearMixedModel
    whose per-row results raise RowsNotKeptError (NotKept)."""
    from . import model

    t0 = time.perf_counter()
    stream = ArrowStream(formula, source, batch_rows=batch_rows, weights=weights,
                         offset=offset)
    t1 = time.perf_counter()
    d, stats = stream.stats()
    t2 = time.perf_counter()
    return model.fitted(d, stats, {"levels": t1 - t0, "statistics": t2 - t1}, t2, reml=reml,
                        start=start, max_iter=max_iter, hessian=hessian, progress=progress,
                        devices=devices,
                        data_name=data_name if data_name is not None else stream.name,
                        weights=weights, offset=offset)
