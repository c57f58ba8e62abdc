"""The ``jaxlmm`` command line.

::

    jaxlmm fit FORMULA --data NAME_OR_PATH [--ml] [--weights COL] [--offset COL]
                       [--json] [--ranef] [--max-iter N] [--verbose] [--batch-rows N]
    jaxlmm datasets

``--data`` is a bundled lme4 dataset (``jaxlmm datasets`` lists them; the name
is case-insensitive) or a .csv / .tsv / .txt (optionally .gz/.bz2/.xz/.zip
compressed) or .parquet file.  With ``--batch-rows N`` a .parquet file or a directory of
them is read N rows at a time and never held whole (arrowio.py).  Errors in the model or
the data are reported as ``error: <message>`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

__all__ = ["main", "load_data"]

_COMPRESSION = (".gz", ".bz2", ".xz", ".zip", ".zst")
_DELIMITED = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None}


class CliError(Exception):
    """A usage problem reported as ``error: ...`` with exit status 2."""


# ---------------------------------------------------------------------------- data
def _split_ext(path: str) -> tuple[str, str]:
    """(format extension, compression extension) of a file name, lower case."""
    name = os.path.basename(path).lower()
    comp = ""
    for c in _COMPRESSION:
        if name.endswith(c):
            comp, name = c, name[: -len(c)]
            break
    return os.path.splitext(name)[1], comp


def _read_file(path: str):
    import pandas as pd

    ext, comp = _split_ext(path)
    try:
        if ext == ".parquet":
            if comp:
                raise CliError(f"compressed parquet files are not supported: {path}")
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                try:
                    import fastparquet  # noqa: F401
                except ImportError:
                    raise CliError(
                        f"reading {path} needs pyarrow (pip install pyarrow), which is not installed"
                    ) from None
            return pd.read_parquet(path)
        if ext in _DELIMITED:
            sep = _DELIMITED[ext]
            if sep is None:
                return pd.read_csv(path, sep=None, engine="python")
            return pd.read_csv(path, sep=sep)
    except CliError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pandas parser errors are ValueErrors
        raise CliError(f"cannot read {path}: {exc}") from None
    raise CliError(f"unsupported data file type: {path} "
                   "(use .csv, .tsv, .txt, optionally compressed, or .parquet)")


def load_data(spec: str):
    """(DataFrame, name) for ``--data``: a bundled dataset name or a file path."""
    from . import datasets

    if os.path.isfile(spec):
        return _read_file(spec), os.path.basename(spec)
    lookup = {n.lower(): n for n in datasets.names()}
    key = lookup.get(spec.lower())
    if key is not None:
        return datasets.load(key), key
    ext, comp = _split_ext(spec)
    if os.sep in spec or "/" in spec or ext or comp:
        if os.path.isdir(spec):
            raise CliError(f"data path is a directory, not a file: {spec}")
        raise CliError(f"data file not found: {spec}")
    import difflib

    close = difflib.get_close_matches(spec.lower(), list(lookup), n=1)
    hint = f"; did you mean {lookup[close[0]]!r}?" if close else ""
    raise CliError(f"unknown dataset {spec!r}: not a bundled dataset "
                   f"({', '.join(datasets.names())}) and no such file{hint}")


# ---------------------------------------------------------------------------- output
def _jsonable(obj):
    """Plain-JSON copy of ``obj``: numpy scalars/arrays to Python, NaN/Inf to None."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    try:
        import pandas as pd

        if pd.isna(obj):
            return None
    except (TypeError, ValueError):
        pass
    return str(obj)


def _ranef_table(m) -> str:
    import pandas as pd

    from .summary import format_number_vector

    re = m.ranef()
    shown = pd.DataFrame({c: (format_number_vector(re[c].to_numpy(float), 5)
                              if c in ("condval", "condsd") else re[c].astype(str))
                          for c in re.columns})
    return "Conditional modes of the random effects:\n" + shown.to_string(index=False)


# ---------------------------------------------------------------------------- commands
def _cmd_fit(args) -> int:
    import jaxlmm

    t0 = time.perf_counter()
    if args.batch_rows is not None:  # read in batches by fit itself (arrowio.py)
        if not os.path.exists(args.data):
            raise CliError(f"data file not found: {args.data}")
        data, name = args.data, os.path.basename(os.path.normpath(args.data))
    else:
        data, name = load_data(args.data)
    t1 = time.perf_counter()
    try:
        m = jaxlmm.fit(args.formula, data, reml=not args.ml, weights=args.weights,
                       offset=args.offset, max_iter=args.max_iter, data_name=name,
                       progress=args.progress, chunk_rows=args.chunk_rows,
                       batch_rows=args.batch_rows)
    except ImportError as exc:  # pyarrow missing
        raise CliError(str(exc)) from None
    t2 = time.perf_counter()
    if args.json:
        out = m.to_dict()
        if args.ranef:
            out["ranef"] = m.ranef().to_dict(orient="records")
        print(json.dumps(_jsonable(out), indent=2, allow_nan=False))
    else:
        sys.stdout.write(m.summary(ddf=args.ddf))
        if args.ranef:
            print()
            print(_ranef_table(m))
        if args.anova:
            tab = m.anova()
            print()
            print(tab.attrs.get("heading", "Analysis of Variance Table"))
            print(tab.to_string(float_format=lambda v: f"{v:.6g}"))
        if args.confint:
            print()
            ci = m.confint(method=args.confint)
            print(f"Confidence intervals ({args.confint}):")
            print(ci.to_string(float_format=lambda v: f"{v:.6g}"))
    if args.verbose:
        tm = getattr(m, "timings", {}) or {}
        parts = [f"read data {t1 - t0:.3f} s", f"fit {t2 - t1:.3f} s"]
        if tm:
            parts.append("(" + ", ".join(f"{k} {v:.3f} s" for k, v in tm.items()) + ")")
        print("timing: " + " ".join(parts), file=sys.stderr)
    return 0


def _cmd_datasets(args) -> int:
    from . import datasets

    rows = []
    for n in datasets.names():
        df = datasets.load(n)
        rows.append((n, f"{len(df)} x {df.shape[1]}", ", ".join(map(str, df.columns))))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for n, dims, cols in rows:
        print(f"{n:<{w0}}  {dims:>{w1}}  {cols}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="jaxlmm",
        description="Linear mixed models with lme4's semantics, fitted with JAX.")
    p.add_argument("--version", action="version", version=f"jaxlmm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser("fit", help="fit a linear mixed model and print its summary",
                       description="Fit a linear mixed model (lme4 formula syntax).")
    f.add_argument("formula", metavar="FORMULA",
                   help="model formula, e.g. 'Reaction ~ Days + (Days | Subject)'")
    f.add_argument("--data", "-d", required=True, metavar="NAME_OR_PATH",
                   help="bundled dataset name (see 'jaxlmm datasets') or a "
                        ".csv/.tsv/.txt[.gz] or .parquet file")
    f.add_argument("--ml", action="store_true",
                   help="maximum likelihood instead of REML")
    f.add_argument("--weights", metavar="COL", help="column of prior weights")
    f.add_argument("--offset", metavar="COL", help="column of offsets")
    f.add_argument("--json", action="store_true", help="print the fit as JSON")
    f.add_argument("--ranef", action="store_true",
                   help="also print the conditional modes of the random effects")
    f.add_argument("--ddf", default="Satterthwaite", choices=["Satterthwaite", "lme4"],
                   help="fixed-effects table: with Satterthwaite df and p-values "
                        "(lmerTest's, default) or lme4's (no df)")
    f.add_argument("--anova", action="store_true",
                   help="also print the type III F tests of the fixed-effect terms")
    f.add_argument("--confint", nargs="?", const="profile", default=None,
                   choices=["profile", "Wald", "boot"], metavar="METHOD",
                   help="also print confidence intervals: profile (default), Wald or boot")
    f.add_argument("--max-iter", type=int, default=200, metavar="N",
                   help="maximum optimizer iterations (default 200)")
    f.add_argument("--verbose", "-v", action="store_true",
                   help="print timings to stderr")
    f.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a line per optimizer iteration on stderr (default: on for big fits)")
    f.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="compute the sufficient statistics in chunks of N rows (less memory)")
    f.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="read --data (a .parquet file or a directory of them) in batches of N "
                        "rows, never whole: for data larger than memory (needs pyarrow)")
    f.set_defaults(func=_cmd_fit)

    d = sub.add_parser("datasets", help="list the bundled datasets",
                       description="List the bundled lme4 datasets.")
    d.set_defaults(func=_cmd_datasets)
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2

    from .errors import JaxlmmError

    try:
        return args.func(args)
    except (JaxlmmError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
