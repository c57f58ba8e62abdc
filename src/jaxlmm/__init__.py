"""jaxlmm: linear mixed-effects models with lme4's semantics, fitted with JAX.

Importing jaxlmm switches on JAX's float64 mode (see README).

Two layers (docs/jax.md):

* pandas level: ``fit(formula, data)`` -> ``LinearMixedModel`` (tables, summary, ranef);
* functional JAX layer, of which ``fit`` is the composition:
  ``design(formula, data)`` (host side) -> ``suffstats(design)`` -> ``fit_stats(stats)``,
  with ``objective(theta, stats)`` and ``solve(theta, stats)`` for custom optimizers.
  All but ``design`` are pure JAX functions: jit, vmap and grad apply.
  ``dataset_stats(formula, parquet_source)`` gives a design and statistics from data read
  in batches (arrowio.py; ``fit`` takes such a source too).
"""

from ._config import configure as _configure

_configure()

from . import datasets  # noqa: E402
from .arrowio import dataset_stats  # noqa: E402  (pyarrow is imported only when used)
from .engine import FitResult, fit_stats, objective, solve  # noqa: E402
from .errors import DataError, FormulaError, JaxlmmError  # noqa: E402
from .formula import parse_formula  # noqa: E402
from .frame import ModelFrame, model_frame  # noqa: E402
from .joint import joint_logdensity, joint_logdensity_u  # noqa: E402
from .compare import anova  # noqa: E402
from .model import LinearMixedModel, fit  # noqa: E402
from .modeldesign import Design, design, design_from_arrays  # noqa: E402
from .optimize import STATUS  # noqa: E402
from .placement import shard_stats  # noqa: E402
from .solution import Solution  # noqa: E402
from .stats import Stats, chunk_stats, sample_scale, sharded_suffstats, suffstats  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "fit",
    "anova",
    "LinearMixedModel",
    "design",
    "design_from_arrays",
    "Design",
    "suffstats",
    "dataset_stats",
    "chunk_stats",
    "sharded_suffstats",
    "shard_stats",
    "sample_scale",
    "Stats",
    "objective",
    "solve",
    "joint_logdensity",
    "joint_logdensity_u",
    "Solution",
    "fit_stats",
    "FitResult",
    "STATUS",
    "model_frame",
    "ModelFrame",
    "parse_formula",
    "datasets",
    "JaxlmmError",
    "FormulaError",
    "DataError",
]
