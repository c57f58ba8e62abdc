"""``fit_stats``: the whole numerical fit as one pure, jittable program.

statistics -> start (start.py) -> optimum over theta (implicit.optimum: the bounded
quasi-Newton loop of optimize.py on the profiled criterion of deviance.py, differentiable
by implicit differentiation) -> solve at the optimum (solution.py). Data enter only through
the ``Stats`` pytree, never through closures; ``reml``, ``max_iter`` and ``hessian`` are
static. No host callback unless ``progress=True``: it runs under jit, vmap (many responses
in one call) and grad.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import start
from .deviance import objective as _objective
from .implicit import optimum, use_exact_hessian  # noqa: F401  (re-exported)
from .optimize import OptResult
from .solution import Solution
from .solution import solve as _solve
from .stats import Stats


class FitResult(NamedTuple):
    """What ``fit_stats`` returns (a pytree; batched along a leading axis under vmap).

    ``opt``: the optimizer's record (theta, criterion, gradient, projected gradient,
    iterations, evaluations, status; optimize.STATUS). ``solution``: beta, sigma,
    conditional modes and variances at theta (solution.Solution). ``theta0``: the start.
    """

    opt: OptResult
    solution: Solution
    theta0: jax.Array

    @property
    def theta(self):
        return self.opt.theta

    @property
    def beta(self):
        return self.solution.beta

    @property
    def sigma(self):
        return self.solution.sigma

    @property
    def objective(self):
        """The criterion at theta, from the solve (differentiable in the data)."""
        return self.solution.objective

    @property
    def status(self):
        return self.opt.status

    @property
    def iterations(self):
        return self.opt.iterations

    @property
    def converged(self):
        return self.opt.status == 0


@partial(jax.jit, static_argnames=("reml", "max_iter", "hessian", "progress"))
def fit_stats(stats: Stats, *, reml: bool = True, theta0=None, max_iter: int = 200,
              hessian: str = "auto", progress: bool = False) -> FitResult:
    """Fit by REML (``reml=True``) or ML from sufficient statistics; pure and jittable.

    ``theta0``: the start, in lme4's theta order (default: start.default, lme4's start with
    moment estimates for scalar factors of large crossed models). ``max_iter``: optimizer
    iterations (0 solves at theta0). ``hessian``: "auto"/"bfgs" (quasi-Newton on exact
    gradients) or "exact" (Newton). ``progress``: print iteration, criterion and elapsed
    time on stderr (a host callback). Non-convergence is reported in ``status``, never raised.
    Derivatives of the result with respect to the statistics (hence y and X) are exact at a
    converged optimum (implicit.py).
    """
    use_exact_hessian(hessian)  # validates the name
    theta0 = start.default(stats) if theta0 is None else jnp.asarray(theta0, stats.dtype)
    if theta0.shape != (stats.struct.n_theta,):
        raise ValueError(f"theta0 must have {stats.struct.n_theta} elements (lme4's theta "
                         f"order), got shape {theta0.shape}")
    opt = optimum(stats, theta0, reml, max_iter, hessian, progress)
    return FitResult(opt, _solve(opt.theta, stats, reml), theta0)


@partial(jax.jit, static_argnames=("reml",))
def objective(theta, stats: Stats, reml: bool = True):
    """The profiled criterion at theta: lme4's REMLcrit() (``reml=True``) or deviance().

    A plain JAX function of (theta, stats), differentiable in both.
    """
    return _objective(jnp.asarray(theta, stats.dtype), stats, reml)


@partial(jax.jit, static_argnames=("reml",))
def solve(theta, stats: Stats, reml: bool = True) -> Solution:
    """beta, sigma, conditional modes (u, b) and variances, the criterion and the factor's
    pieces (pwrss, log-determinants) at theta; differentiable in theta and the statistics."""
    return _solve(jnp.asarray(theta, stats.dtype), stats, reml)
