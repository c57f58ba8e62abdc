"""Example datasets from the R package lme4 (GPL-2 or later; see LICENSE-lme4-data.txt).

>>> from jaxlmm.datasets import load, names
>>> names()
['sleepstudy', 'Dyestuff', 'Dyestuff2', 'Penicillin', 'Pastes', 'InstEval', 'cake']
>>> df = load("sleepstudy")

Factor columns are pandas Categoricals with R's level order (ordered where R's
factor is ordered); integer and double columns stay numeric.  The CSV files
are produced by ``export_datasets.R`` in this directory.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import pandas as pd

__all__ = ["load", "names"]


def _data_dir():
    return resources.files(__name__).joinpath("data")


@lru_cache(maxsize=None)
def _json(fname: str) -> dict:
    return json.loads(_data_dir().joinpath(fname).read_text(encoding="utf-8"))


def _levels() -> dict:
    return _json("levels.json")


_DTYPES = {"double": "float64", "integer": "int64", "factor": str}


def names() -> list[str]:
    """Names of the bundled datasets (R's spelling)."""
    return list(_levels())


def load(name: str) -> pd.DataFrame:
    """Load a bundled lme4 dataset by name (case-insensitive)."""
    lookup = {n.lower(): n for n in names()}
    key = lookup.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(names())}")
    factors = _levels()[key]
    data = _data_dir()
    path = data.joinpath(f"{key}.csv")
    if not path.is_file():
        path = data.joinpath(f"{key}.csv.gz")
    with resources.as_file(path) as p:
        df = pd.read_csv(p, dtype={c: _DTYPES[t] for c, t in _json("columns.json")[key].items()})
    for col, spec in factors.items():
        cat = pd.Categorical(df[col], categories=spec["levels"], ordered=spec["ordered"])
        if (cat.isna() & df[col].notna()).any():  # label not among R's levels
            raise RuntimeError(f"{key}.{col}: values outside the recorded levels")
        df[col] = cat
    return df
