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
from .pls import LARGE_DENSE
from .solve import Solution, solve
from .stats import Stats


class FitResult(NamedTuple):
    opt: OptResult
    sol: Solution


def use_exact_hessian(struct, hessian: str = "auto") -> bool:
    """Exact Hessians pay off unless a large dense Schur block makes them costly.

    Past LARGE_DENSE rows an exact Hessian (deviance.py's closed-form route) costs about
    2.5 gradients, more than the iterations it saves, so the optimizer switches to BFGS on
    exact gradients, started from the exact Hessian at theta0.
    """
    if hessian not in ("auto", "exact", "bfgs"):
        raise ValueError(f"hessian must be 'auto', 'exact' or 'bfgs', got {hessian!r}")
    if hessian != "auto":
        return hessian == "exact"
    return struct.m_rand <= LARGE_DENSE


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
