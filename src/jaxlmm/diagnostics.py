"""Convergence and singularity diagnostics at the optimum, with what to try.

At theta_hat the free coordinates F (those not on their lower bound of 0) should satisfy the
first- and second-order conditions with the exact gradient g and Hessian H of the criterion
f (deviance.derivatives):

* the Newton decrement  delta = g_F' H_FF^{-1} g_F / 2,  the decrease in f (in deviance
  units) a Newton step would still bring. It is invariant to rescaling theta and to the
  size of the data, unlike lme4's absolute-gradient check (tol 0.002), which flags fits of
  large data whose gradient is large only because f is (lme4 issue #783). Converged when
  delta <= 1e-6;
* H_FF positive definite (a minimum, not a saddle): smallest eigenvalue > 0 relative to the
  largest; a relative eigenvalue below 1e-8 is a flat direction (parameters not identified);
* on the bound, g_A >= 0 (the criterion increases into the feasible region).

A boundary fit (a template diagonal at 0: lme4's isSingular, tol 1e-4) is reported by the
names of the components at zero.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .deviance import derivatives
from .stats import Stats

SINGULAR_TOL = 1e-4  # lme4's isSingular() tolerance on template diagonals
DECREMENT_TOL = 1e-6  # deviance units
FLAT_TOL = 1e-8  # smallest / largest eigenvalue of H_FF

WHAT_TO_TRY = {
    1: ("the optimizer used all its iterations: refit with more (fit(..., max_iter=1000)), "
        "or with hessian='exact' (Newton); if you gave start=, try the default start (a "
        "theta far above the optimum sits on a plateau of the criterion); centre and scale "
        "continuous predictors"),
    2: ("the line search could not decrease the criterion further: if the Newton decrement "
        "below is tiny the optimum is reached to rounding precision; otherwise centre and "
        "scale continuous predictors, simplify the random effects (e.g. (x || g) instead of "
        "(x | g)), or refit with hessian='exact'"),
    3: ("the criterion is not finite at the start: look for extreme values in the response "
        "or predictors (rescale them), or give a start=..."),
}
NON_FINITE = ("the criterion or its derivatives are not finite at the end point; refit from "
              "the default start (omit start=) or rescale the data")
SADDLE = ("the Hessian of the criterion has a negative eigenvalue at the end point: it is a "
          "saddle, not a minimum; refit from another start (start=...) or with "
          "hessian='exact'")
FLAT = ("the criterion is flat in some direction at the optimum (relative Hessian eigenvalue "
        "{ratio:.1e}): some variance parameters are not identified by the data; simplify the "
        "random effects")
NOT_STATIONARY = ("the Newton decrement {dec:.2g} (in deviance units) is above {tol:g}: the "
                  "optimum is not reached; refit with more iterations (max_iter=) or with "
                  "hessian='exact'")
SINGULAR = ("boundary (singular) fit: variance component(s) at zero: {names}. The data do not "
            "support them; the estimates are a valid boundary optimum, but consider removing "
            "those terms or their correlations (e.g. (1 | g) or (x || g) instead of (x | g))")


BOUND_SADDLE = ("a variance component at 0 has zero gradient but negative curvature: a saddle "
                "on the boundary, not a minimum (the criterion decreases inward); refit with "
                "hessian='exact'")


def stuck_on_bound(theta, lower, f, g):
    """Coordinates at a zero lower bound with (near) zero gradient, |g_i| <= 1e-9 (1 + |f|)."""
    theta, lower, g = (np.asarray(a, float) for a in (theta, lower, g))
    return (lower == 0.0) & (theta <= 0.0) & (np.abs(g) <= 1e-9 * (1.0 + abs(float(f))))


def bound_saddle(theta, lower, f, g, H):
    """Coordinates stuck on their bound (``stuck_on_bound``) with clearly negative curvature,
    H_ii < -1e-6 max(1, max_j |H_jj|): the criterion decreases moving inward."""
    h = np.diagonal(np.asarray(H, float))
    return stuck_on_bound(theta, lower, f, g) & (
        h < -1e-6 * max(1.0, float(np.max(np.abs(h), initial=0.0))))


@partial(jax.jit, static_argnames=("reml",))
def value_grad_hessian(theta, stats: Stats, reml: bool):
    """The criterion, its exact gradient and Hessian in theta (one evaluation)."""
    theta = jnp.asarray(theta, stats.dtype)
    return derivatives(stats.struct, theta.shape[0]).value_grad_hessian(theta, stats, reml)


def check(theta, lower, f, g, H, status: int) -> dict:
    """Convergence report from the criterion's value, gradient and Hessian at theta."""
    theta, lower, g, H = (np.asarray(a, float) for a in (theta, lower, g, H))
    if not (np.isfinite(f) and np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
        nan = float("nan")
        return _report(False, nan, nan, nan, nan, nan, lower != 0.0, np.zeros(0),
                       [NON_FINITE], status)
    bound = (lower == 0.0) & (theta <= 0.0)
    free = ~bound
    gF, HF = g[free], H[np.ix_(free, free)]
    if free.any():
        eig = np.linalg.eigvalsh(0.5 * (HF + HF.T))
        scale = max(abs(eig[-1]), 1e-300)
        try:
            step = np.linalg.solve(HF, gF)
            dec = float(0.5 * gF @ step)
            rel = float(np.max(np.abs(step)))
        except np.linalg.LinAlgError:
            dec, rel = float("inf"), float("inf")
        eig_min, eig_max = float(eig[0]), float(eig[-1])
        ratio = eig_min / scale
    else:
        dec, rel, eig_min, eig_max, ratio = 0.0, 0.0, float("nan"), float("nan"), 1.0
    gA = g[bound]
    notes = []
    if ratio < -FLAT_TOL:
        notes.append(SADDLE)
    elif ratio < FLAT_TOL:
        notes.append(FLAT.format(ratio=ratio))
    if status == 0 and not (dec <= DECREMENT_TOL):
        notes.append(NOT_STATIONARY.format(dec=dec, tol=DECREMENT_TOL))
    inward = bool(np.any(gA < -1e-6 * (1.0 + abs(float(f)))))
    if inward:
        notes.append("a variance component on its bound has a gradient pointing inward: "
                     "the boundary point is not a minimum; refit with hessian='exact'")
    curved = bool(bound_saddle(theta, lower, f, g, H).any())
    if curved:
        notes.append(BOUND_SADDLE)
    ok = (status == 0 and dec <= DECREMENT_TOL and ratio >= -FLAT_TOL and not inward
          and not curved)
    return _report(ok, dec, rel, eig_min, eig_max, ratio, free, gA, notes, status)


def _report(ok, dec, rel, eig_min, eig_max, ratio, free, gA, notes, status: int) -> dict:
    return {
        "ok": bool(ok),
        "newton_decrement": dec,
        "max_rel_step": rel,
        "hessian_min_eig": eig_min,
        "hessian_max_eig": eig_max,
        "hessian_rel_min_eig": float(ratio),
        "free": np.asarray(free).tolist(),
        "bound_gradient": np.asarray(gA).tolist(),
        "notes": notes,
        "what_to_try": WHAT_TO_TRY.get(status) if status != 0 else None,
    }


def singular_message(names) -> str:
    return SINGULAR.format(names=", ".join(names))
