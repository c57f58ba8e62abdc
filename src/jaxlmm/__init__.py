"""jaxlmm: linear mixed-effects models with lme4's semantics, fitted with JAX.

Importing jaxlmm switches on JAX's float64 mode (see README).
"""

from ._config import configure as _configure

_configure()

from . import datasets  # noqa: E402
from .design import Design, build_design  # noqa: E402
from .errors import DataError, FormulaError, JaxlmmError  # noqa: E402
from .formula import parse_formula  # noqa: E402
from .model import LinearMixedModel, fit  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "fit",
    "LinearMixedModel",
    "build_design",
    "Design",
    "parse_formula",
    "datasets",
    "JaxlmmError",
    "FormulaError",
    "DataError",
]
