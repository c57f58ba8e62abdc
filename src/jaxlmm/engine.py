"""Pure, jittable composition of the kernels: statistics -> optimum -> solution.

``fit_stats`` is the whole numerical fit as one compiled program: the projected-Newton loop
over theta (optimize.py) on the profiled criterion (deviance.py), then the solve at the
optimum (solve.py). Data enter only through the ``Stats`` pytree, never through closures.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .deviance import derivatives, objective
from .optimize import OptResult, minimize
from .solve import Solution, solve
from .stats import Stats


class FitResult(NamedTuple):
    opt: OptResult
    sol: Solution


def use_exact_hessian(struct, hessian: str = "auto") -> bool:
    """Whether the optimizer runs exact Newton ("exact") or BFGS ("bfgs", and "auto").

    "auto" is BFGS on exact gradients, started from the exact Hessian at theta0 (its
    eigenvalues made positive). Measured on the benchmark workloads (2-core CPU) it reaches
    the same optimum (theta within 1e-6 relative) as Newton, as fast or faster: the
    10k-group ``(x | g)`` fit 10 against 20 ms, nested 10 against 15 ms, 100k groups 0.18
    against 0.26 s, sleepstudy and the crossed models even. A Hessian costs about k
    gradients (forward over forward), more than the iterations it saves. ``struct`` is kept
    for policies that depend on the model's shape.
    """
    del struct
    if hessian not in ("auto", "exact", "bfgs"):
        raise ValueError(f"hessian must be 'auto', 'exact' or 'bfgs', got {hessian!r}")
    return hessian == "exact"


def fit_stats(stats: Stats, theta0, *, reml: bool = True, max_iter: int = 200,
              hessian: str = "auto") -> FitResult:
    """Optimize the profiled criterion over theta >= lower and solve at the optimum."""
    lower = jnp.asarray(stats.struct.lower, theta0.dtype)
    opt = minimize(objective, theta0, lower, (stats, reml), max_iter=max_iter,
                   exact_hessian=use_exact_hessian(stats.struct, hessian),
                   derivs=derivatives(stats.struct, theta0.shape[0]))
    return FitResult(opt, solve(opt.theta, stats, reml))


fit_stats_jit = jax.jit(fit_stats, static_argnames=("reml", "max_iter", "hessian"))


@partial(jax.jit, static_argnames=("reml",))
def objective_jit(theta, stats: Stats, reml: bool = True):
    return objective(theta, stats, reml)
