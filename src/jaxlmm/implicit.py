"""The optimum theta_hat(stats) with derivatives by implicit differentiation.

The optimizer's iterations are not differentiated. At a converged optimum the free
coordinates F (those above their lower bound) satisfy g_F(theta_hat, s) = 0, with
g = df/dtheta and s the statistics, so by the implicit function theorem

    d theta_F = -H_FF^{-1} (dg_F/ds) ds,    d theta_A = 0 on the bound (active) set A,

with H the exact Hessian at theta_hat. The criterion's own tangent is the envelope
df = (df/ds) ds + g' d theta, and the gradient's is dg = H d theta + (dg/ds) ds.
``optimum`` carries this rule as a ``custom_jvp``, so forward mode (jax.jvp, jacfwd) and
reverse mode (jax.grad, vjp) both work, under jit and vmap; the rule is linear in ds, which
is what reverse mode needs. Derivatives of beta_hat and sigma_hat then follow by ordinary
autodiff of the solve at theta_hat (engine.fit_stats). Assumes strict complementarity: a
coordinate on its bound stays there under small changes of the data.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import autodiff
from .deviance import derivatives, objective
from .optimize import OptResult, minimize
from .stats import Stats


def use_exact_hessian(hessian: str = "auto") -> bool:
    """Whether the optimizer runs exact Newton ("exact") or BFGS ("bfgs", and "auto").

    "auto" is BFGS on exact gradients, started from the exact Hessian at theta0 (its
    eigenvalues made positive). Measured on the benchmark workloads (2-core CPU) it reaches
    the same optimum (theta within 1e-6 relative) as Newton, as fast or faster: the
    10k-group ``(x | g)`` fit 10 against 20 ms, nested 10 against 15 ms, 100k groups 0.18
    against 0.26 s, sleepstudy and the crossed models even. A Hessian costs about k
    gradients (forward over forward), more than the iterations it saves.
    """
    if hessian not in ("auto", "exact", "bfgs"):
        raise ValueError(f"hessian must be 'auto', 'exact' or 'bfgs', got {hessian!r}")
    return hessian == "exact"


def tolerances(dtype) -> dict:
    """Convergence tolerances (relative to 1 + |f|) for the floating type of the statistics:
    gtol = max(1e-10, 100 eps) on the projected gradient, ftol = max(1e-12, 10 eps) on the
    Newton decrement. float64: 1e-10 and 1e-12; float32: 1.2e-5 and 1.2e-6, near the
    criterion's rounding noise (tighter float32 tolerances made the Pastes fit cycle on
    noise until max_iter).
    """
    eps = float(jnp.finfo(dtype).eps)
    return dict(gtol=max(1e-10, 100.0 * eps), ftol=max(1e-12, 10.0 * eps))


def column_flips(struct) -> np.ndarray:
    """(k, k) signs: row j flips the entries below template diagonal j in its column (the
    covariance T T' is unchanged when a whole column of T changes sign); rows of
    off-diagonal thetas are all ones."""
    k = struct.n_theta
    F = np.ones((k, k))
    for entries in struct.templates:
        for i, r, c in entries:
            if r == c:
                for i2, r2, c2 in entries:
                    if c2 == c and r2 > r:
                        F[i, i2] = -1.0
    return F


def _run(stats: Stats, theta0, reml: bool, max_iter: int, hessian: str,
         progress: bool = False) -> OptResult:
    lower = jnp.asarray(stats.struct.lower, theta0.dtype)
    return minimize(objective, theta0, lower, (stats, reml), max_iter=max_iter,
                    exact_hessian=use_exact_hessian(hessian),
                    derivs=derivatives(stats.struct, theta0.shape[0]),
                    flips=column_flips(stats.struct), progress=progress,
                    **tolerances(theta0.dtype))


@partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def optimum(stats: Stats, theta0, reml: bool, max_iter: int, hessian: str,
            progress: bool = False) -> OptResult:
    """Minimize the profiled criterion over theta >= lower from theta0 (optimize.minimize);
    differentiable in ``stats`` by implicit differentiation (module docstring). ``progress``:
    print a line per iteration (optimize.minimize)."""
    return _run(stats, theta0, reml, max_iter, hessian, progress)


def _zero_tangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


@optimum.defjvp
def _optimum_jvp(reml, max_iter, hessian, progress, primals, tangents):
    stats, theta0 = primals
    stats_dot, _ = tangents  # the optimum does not depend on the start
    opt = _run(stats, theta0, reml, max_iter, hessian, progress)
    theta = opt.theta
    k = theta.shape[0]

    def value_grad(s):  # (f, df/dtheta) at theta_hat as functions of the statistics
        return autodiff.value_grad(lambda t: objective(t, s, reml), k)(theta)

    (_, g), (f_s, g_s) = jax.jvp(value_grad, (stats,), (stats_dot,))
    _, _, H = derivatives(stats.struct, k).value_grad_hessian(theta, stats, reml)
    lower = jnp.asarray(stats.struct.lower, theta.dtype)
    free = theta > lower
    both = free[:, None] & free[None, :]
    HF = jnp.where(both, H, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
    theta_dot = -jnp.linalg.solve(HF, jnp.where(free, g_s, 0.0))
    theta_dot = jnp.where(free, theta_dot, 0.0)
    out_dot = OptResult(theta=theta_dot, fun=f_s + jnp.dot(g, theta_dot),
                        grad=H @ theta_dot + g_s, proj_grad=_zero_tangent(opt.proj_grad),
                        iterations=_zero_tangent(opt.iterations),
                        evaluations=_zero_tangent(opt.evaluations),
                        status=_zero_tangent(opt.status))
    return opt, out_dot
