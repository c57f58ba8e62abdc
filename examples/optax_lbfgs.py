"""The profiled criterion is a plain JAX function: minimize it with optax.lbfgs.

``jaxlmm.objective(theta, stats)`` is lme4's REML criterion with beta and sigma profiled out,

    -2 l_R(theta) = log|L_theta|^2 + log|R_X|^2 + (n - p) (1 + log(2 pi r^2(theta) / (n - p))),

differentiable in theta by autodiff. Any JAX optimizer can minimize it; here optax's L-BFGS
(zoom line search, ``optax.value_and_grad_from_state`` to reuse the line search's value and
gradient) on sleepstudy's ``Reaction ~ Days + (Days | Subject)``, theta = the template
T = [[t0, 0], [t1, t2]] (covariance sigma^2 T T').

The bound: lme4 requires t0, t2 >= 0 (diagonals of T). L-BFGS is unconstrained, so we
optimize phi with theta = (|phi0|, phi1, |phi2|): every T with a non-negative diagonal is
reached and the criterion of phi is smooth wherever the diagonal is non-zero (an interior
optimum, as here). A singular fit (a diagonal at 0) would sit on the kink of |.|, where
jaxlmm.fit_stats's bounded projected quasi-Newton optimizer is the better tool.

The result is compared with jaxlmm.fit_stats (functional layer), jaxlmm.fit (pandas level)
and lme4's published REML criterion (lme4 1.1: "REML criterion at convergence: 1743.6").

Run: python examples/optax_lbfgs.py [--small]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

import jaxlmm

FORMULA = "Reaction ~ Days + (Days | Subject)"
LME4_REML = 1743.6283  # lme4 1.1, REMLcrit() of this model


def to_theta(phi, diag):
    """theta with |.| on the template diagonals (bounded below by 0)."""
    return jnp.where(diag, jnp.abs(phi), phi)


@partial(jax.jit, static_argnames=("max_iter",))
def lbfgs(phi0, stats, diag, max_iter=100, tol=1e-9):
    """optax.lbfgs in one lax.while_loop (as in optax's docs); stats is an argument."""
    def fun(phi):  # stats is a tracer here, not a compile-time constant
        return jaxlmm.objective(to_theta(phi, diag), stats)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        phi, state = carry
        value, grad = value_and_grad(phi, state=state)
        updates, state = solver.update(grad, state, phi, value=value, grad=grad,
                                       value_fn=fun)
        return optax.apply_updates(phi, updates), state

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        gnorm = jnp.linalg.norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (gnorm >= tol))

    phi, state = jax.lax.while_loop(keep_going, step, (phi0, solver.init(phi0)))
    return to_theta(phi, diag), otu.tree_get(state, "value"), otu.tree_get(state, "count")


def main(small: bool = False) -> dict:
    df = jaxlmm.datasets.load("sleepstudy")
    design = jaxlmm.design(FORMULA, df)
    stats = jaxlmm.suffstats(design)
    diag = jnp.asarray(design.lower == 0.0)  # template diagonals carry the bound 0
    max_iter = 50 if small else 200

    t0 = time.perf_counter()
    theta, value, iters = jax.block_until_ready(
        lbfgs(jnp.asarray(design.theta_start), stats, diag, max_iter=max_iter))
    seconds = time.perf_counter() - t0
    crit = float(jaxlmm.objective(theta, stats))  # re-evaluated at the returned theta
    sol = jaxlmm.solve(theta, stats)
    ref = jaxlmm.fit_stats(stats)
    model = jaxlmm.fit(FORMULA, df)

    names = design.info.theta_names
    print(f"{FORMULA}: optax.lbfgs, {int(iters)} iterations, {seconds:.2f} s "
          f"(compilation included)")
    print(f"{'theta':>26} {'optax.lbfgs':>13} {'fit_stats':>13} {'jaxlmm.fit':>13}")
    for j, nm in enumerate(names):
        print(f"{nm:>26} {float(theta[j]):13.7f} {float(ref.theta[j]):13.7f} "
              f"{model.theta[j]:13.7f}")
    print(f"{'REML criterion':>26} {crit:13.6f} {float(ref.objective):13.6f} "
          f"{model.objective:13.6f}")
    print(f"{'sigma':>26} {float(sol.sigma):13.6f} {float(ref.sigma):13.6f} "
          f"{model.sigma:13.6f}")
    for j, nm in enumerate(design.info.fixef_names):
        print(f"{nm:>26} {float(sol.beta[j]):13.6f} {float(ref.beta[j]):13.6f} "
              f"{model.fixef.iloc[j]:13.6f}")
    print(f"lme4 1.1 published REML criterion: {LME4_REML}; optax - lme4 = "
          f"{crit - LME4_REML:+.2e}, fit_stats - optax = {float(ref.objective) - crit:+.2e}")
    return dict(theta=np.asarray(theta), criterion=crit, iterations=int(iters),
                lbfgs_value=float(value), fit_stats_theta=np.asarray(ref.theta),
                fit_stats_criterion=float(ref.objective), fit_criterion=model.objective,
                fit_theta=np.asarray(model.theta), lme4_criterion=LME4_REML, seconds=seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="at most 50 iterations")
    main(parser.parse_args().small)
