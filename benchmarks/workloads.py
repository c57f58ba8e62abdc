"""Benchmark workloads: model specifications and seeded data generators.

Every workload is described by a :class:`Workload`: the lme4-syntax formula
(used verbatim by jaxlmm, lme4 and mixedlm), REML/ML, the columns that must be
treated as factors, and -- for single-grouping-factor models only -- the
statsmodels-style description used by statsmodels MixedLM and mixedlm-rs.

Data are produced once per benchmark run by :meth:`Workload.make` and written
to disk by ``run.py`` so that every tool (Python and R) fits identical numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "src" / "jaxlmm" / "datasets" / "data"


# --------------------------------------------------------------------------
# specifications
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SingleFactor:
    """statsmodels-style description of a one-grouping-factor model."""

    fixed: str  # e.g. "Reaction ~ Days"
    group: str  # grouping column
    re_formula: str  # e.g. "~Days" ("1" for a random intercept only)


@dataclass
class Workload:
    name: str
    title: str
    formula: str  # lme4 syntax
    reml: bool
    factor_cols: tuple[str, ...]
    maker: object  # callable() -> (DataFrame, source description)
    single_factor: SingleFactor | None = None
    # tools that ``--skip-slow`` drops for this workload
    slow_tools: frozenset[str] = field(default_factory=frozenset)
    params: dict = field(default_factory=dict)
    # grouping factors as column tuples (interaction / nesting), for level counts in the report
    groupings: tuple[tuple[str, ...], ...] = ()

    def make(self) -> tuple[pd.DataFrame, str]:
        df, source = self.maker()
        df = normalize(df, self.factor_cols)
        return df, source

    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"


def normalize(df: pd.DataFrame, factor_cols) -> pd.DataFrame:
    """Factors become plain ``str`` (object) columns, everything else float64.

    Plain strings keep the pickle / CSV round trip exact and are understood as
    categorical by formulaic, patsy and mixedlm alike; R converts the same
    columns with ``factor()``.
    """
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for col in df.columns:
        s = df[col].reset_index(drop=True)
        if col in factor_cols:
            out[col] = s.astype(str).astype(object)
        else:
            out[col] = pd.to_numeric(s).astype("float64")
    return out


# --------------------------------------------------------------------------
# real data sets
# --------------------------------------------------------------------------


def _load_packaged(name: str, csv_names: list[str]) -> tuple[pd.DataFrame, str]:
    """jaxlmm.datasets.load(name), else the CSV shipped in src/, else mixedlm's copy.

    The fallbacks exist so that the harness can run while the library is being
    written; the source actually used is recorded in results.json/results.md.
    """
    try:
        from jaxlmm import datasets  # type: ignore

        return datasets.load(name), f"jaxlmm.datasets.load({name!r})"
    except Exception:
        pass
    for fname in csv_names:
        p = DATA_DIR / fname
        if p.exists():
            return pd.read_csv(p), str(p.relative_to(REPO_ROOT))
    import mixedlm  # type: ignore

    loader = {"sleepstudy": "load_sleepstudy", "InstEval": "load_insteval"}[name]
    return getattr(mixedlm, loader)(), f"mixedlm.{loader}() (jaxlmm copy not found)"


def _sleepstudy():
    df, src = _load_packaged("sleepstudy", ["sleepstudy.csv", "sleepstudy.csv.gz"])
    return df[["Reaction", "Days", "Subject"]], src


def _insteval(subsample: int | None, seed: int):
    def make():
        df, src = _load_packaged("InstEval", ["InstEval.csv.gz", "InstEval.csv"])
        df = df[["y", "s", "d", "dept", "service"]]
        if subsample is not None and subsample < len(df):
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(len(df), size=subsample, replace=False))
            df = df.iloc[idx]
            src += f", random subsample of {subsample} rows (seed {seed})"
        return df, src

    return make


# --------------------------------------------------------------------------
# simulated data sets
# --------------------------------------------------------------------------


def sim_slopes(n_groups: int, mean_size: float = 10.0, seed: int = 1):
    """``y ~ x + (x | g)``: unequal group sizes 1 + Poisson(mean_size - 1)."""

    def make():
        rng = np.random.default_rng(seed)
        sizes = 1 + rng.poisson(mean_size - 1.0, size=n_groups)
        g = np.repeat(np.arange(n_groups), sizes)
        n = g.size
        x = rng.normal(size=n)
        sd = np.array([1.0, 0.5])
        corr = np.array([[1.0, 0.3], [0.3, 1.0]])
        cov = corr * np.outer(sd, sd)
        b = rng.multivariate_normal(np.zeros(2), cov, size=n_groups)
        y = 1.0 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(size=n)
        df = pd.DataFrame({"y": y, "x": x, "g": np.char.add("g", g.astype(str))})
        return df, f"simulated (seed {seed}): {n_groups} groups, sizes 1+Poisson({mean_size - 1:g})"

    return make


def sim_vector3(n_groups: int, mean_size: float = 10.0, seed: int = 4):
    """``y ~ x1 + x2 + (x1 + x2 | g)``: a three-dimensional vector term, unequal group sizes
    1 + Poisson(mean_size - 1)."""

    def make():
        rng = np.random.default_rng(seed)
        sizes = 1 + rng.poisson(mean_size - 1.0, size=n_groups)
        g = np.repeat(np.arange(n_groups), sizes)
        n = g.size
        x1, x2 = rng.normal(size=n), rng.normal(size=n)
        sd = np.array([1.0, 0.5, 0.3])
        corr = np.array([[1.0, 0.3, -0.2], [0.3, 1.0, 0.1], [-0.2, 0.1, 1.0]])
        b = rng.multivariate_normal(np.zeros(3), corr * np.outer(sd, sd), size=n_groups)
        y = (1.0 + 0.5 * x1 - 0.3 * x2 + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2
             + rng.normal(size=n))
        df = pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": np.char.add("g", g.astype(str))})
        return df, f"simulated (seed {seed}): {n_groups} groups, sizes 1+Poisson({mean_size - 1:g})"

    return make


def sim_nested(n_schools: int, n_classes: int, n_rows: int, seed: int = 2):
    """``y ~ x + (1 | school/cls)``; class labels 1..n_classes repeat across schools.

    Every class receives at least one row; the remaining rows are spread
    uniformly at random, so class sizes are unequal.
    """

    def make():
        rng = np.random.default_rng(seed)
        n_cells = n_schools * n_classes
        if n_rows < n_cells:
            raise ValueError("nested workload needs n_rows >= schools * classes")
        cell = np.concatenate([np.arange(n_cells), rng.integers(n_cells, size=n_rows - n_cells)])
        rng.shuffle(cell)
        school = cell // n_classes
        cls = cell % n_classes
        x = rng.normal(size=n_rows)
        u_school = rng.normal(scale=1.0, size=n_schools)
        u_cls = rng.normal(scale=0.5, size=n_cells)
        y = 1.0 + 0.5 * x + u_school[school] + u_cls[cell] + rng.normal(size=n_rows)
        df = pd.DataFrame(
            {
                "y": y,
                "x": x,
                "school": np.char.add("s", school.astype(str)),
                "cls": np.char.add("c", (cls + 1).astype(str)),
            }
        )
        return df, (
            f"simulated (seed {seed}): {n_schools} schools x {n_classes} classes, {n_rows} rows"
        )

    return make


def sim_crossed(n_users: int, n_items: int, n_rows: int, zipf_s: float = 1.0, seed: int = 3):
    """``y ~ x + (1|u) + (1|i)``: uniform users, Zipf(s) item popularity.

    Every user and every item appears at least once.
    """

    def make():
        rng = np.random.default_rng(seed)
        if n_rows < max(n_users, n_items):
            raise ValueError("crossed workload needs n_rows >= max(users, items)")
        u = np.concatenate([np.arange(n_users), rng.integers(n_users, size=n_rows - n_users)])
        p = 1.0 / np.arange(1, n_items + 1) ** zipf_s
        p /= p.sum()
        i = np.concatenate([np.arange(n_items), rng.choice(n_items, size=n_rows - n_items, p=p)])
        rng.shuffle(u)
        rng.shuffle(i)
        x = rng.normal(size=n_rows)
        y = (
            1.0
            + 0.5 * x
            + rng.normal(scale=0.8, size=n_users)[u]
            + rng.normal(scale=0.4, size=n_items)[i]
            + rng.normal(size=n_rows)
        )
        df = pd.DataFrame(
            {
                "y": y,
                "x": x,
                "u": np.char.add("u", u.astype(str)),
                "i": np.char.add("i", i.astype(str)),
            }
        )
        return df, (
            f"simulated (seed {seed}): {n_users} users (uniform) x {n_items} items "
            f"(Zipf s={zipf_s:g}), {n_rows} rows"
        )

    return make


# --------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------


@dataclass
class Sizes:
    slope_groups: tuple[int, ...] = (10_000, 100_000)
    slope_mean_size: float = 10.0
    vector_groups: tuple[int, ...] = ()  # y ~ x1 + x2 + (x1 + x2 | g) (the scale runs)
    nested_schools: int = 2_000
    nested_classes: int = 10
    nested_rows: int = 100_000
    crossed_users: int = 5_000
    crossed_items: int = 1_000
    crossed_rows: int = 100_000
    insteval_rows: int | None = None  # None = full data set
    # tools dropped by --skip-slow on slope workloads with >= this many groups
    slow_groups: int = 50_000


QUICK = Sizes(
    slope_groups=(100, 400),
    nested_schools=50,
    nested_classes=5,
    nested_rows=2_000,
    crossed_users=300,
    crossed_items=60,
    crossed_rows=3_000,
    insteval_rows=3_000,
    slow_groups=400,
)


def human(n: int) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def suite(sizes: Sizes, seed: int = 0) -> list[Workload]:
    wl = [
        Workload(
            name="sleepstudy",
            title="sleepstudy: Reaction ~ Days + (Days | Subject), REML",
            formula="Reaction ~ Days + (Days | Subject)",
            reml=True,
            factor_cols=("Subject",),
            maker=_sleepstudy,
            single_factor=SingleFactor("Reaction ~ Days", "Subject", "~Days"),
            groupings=(("Subject",),),
        ),
        Workload(
            name="insteval",
            title="InstEval: y ~ 1 + service + (1|s) + (1|d) + (1|dept:service), ML",
            formula="y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)",
            reml=False,
            factor_cols=("s", "d", "dept", "service"),
            maker=_insteval(sizes.insteval_rows, seed + 11),
            params={"rows": sizes.insteval_rows},
            groupings=(("s",), ("d",), ("dept", "service")),
        ),
    ]
    # single-factor vector terms: (name, sizes, formula, statsmodels fixed part and
    # re_formula, data maker, seed offset)
    vector_terms = [
        ("slopes", sizes.slope_groups, "y ~ x + (x | g)", "y ~ x", "~x", sim_slopes, 100),
        ("vector3", sizes.vector_groups, "y ~ x1 + x2 + (x1 + x2 | g)", "y ~ x1 + x2",
         "~x1 + x2", sim_vector3, 150),
    ]
    for prefix, groups, formula, fixed, re_formula, sim, offset in vector_terms:
        for k, G in enumerate(groups):
            wl.append(
                Workload(
                    name=f"{prefix}_{human(G)}",
                    title=f"simulated {formula}, {G} groups, REML",
                    formula=formula,
                    reml=True,
                    factor_cols=("g",),
                    maker=sim(G, sizes.slope_mean_size, seed=seed + offset + k),
                    single_factor=SingleFactor(fixed, "g", re_formula),
                    slow_tools=(frozenset({"lme4", "statsmodels"}) if G >= sizes.slow_groups
                                else frozenset()),
                    params={"groups": G},
                    groupings=(("g",),),
                )
            )
    wl.append(
        Workload(
            name="nested",
            title=(
                f"simulated y ~ x + (1 | school/cls), {sizes.nested_schools} schools x "
                f"{sizes.nested_classes} classes, REML"
            ),
            formula="y ~ x + (1 | school/cls)",
            reml=True,
            factor_cols=("school", "cls"),
            maker=sim_nested(sizes.nested_schools, sizes.nested_classes, sizes.nested_rows, seed=seed + 200),
            groupings=(("school",), ("school", "cls")),
        )
    )
    wl.append(
        Workload(
            name="crossed",
            title=(
                f"simulated y ~ x + (1|u) + (1|i), {sizes.crossed_users} x {sizes.crossed_items} "
                "levels (Zipf items), REML"
            ),
            formula="y ~ x + (1 | u) + (1 | i)",
            reml=True,
            factor_cols=("u", "i"),
            maker=sim_crossed(sizes.crossed_users, sizes.crossed_items, sizes.crossed_rows, seed=seed + 300),
            groupings=(("u",), ("i",)),
        )
    )
    return wl


def replace_sizes(base: Sizes, **changes) -> Sizes:
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(base, **changes)
