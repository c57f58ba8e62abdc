"""Learning fixed-effects features with optax.adam through a mixed model's likelihood.

Data: y_ij = f(x_ij) + b_i + e_ij with f(x) = sin(2x), b_i ~ N(0, sigma_b^2), e ~ N(0, sigma^2)
(known sigma_b = 0.5, sigma = 0.3). A tiny MLP h (1 -> 8 -> 8, tanh; pure jax.numpy, params
a pytree) gives the fixed-effects matrix X = [1, h(x)], and the loss is the profiled ML
deviance of the random-intercept model y = X beta + Z b + e with b integrated out:

    loss(params) = -2 max_{theta, beta, sigma} log p(y | X(params))
                 = fit_stats(suffstats(design, X=X(params)), reml=False).objective

theta is fitted inside the loss (warm-started from the previous step) and jax.grad reaches
the MLP through the optimum by implicit differentiation (the envelope theorem). ML, not
REML: REML's extra term log|X'V^{-1}X| makes it a likelihood of error contrasts defined by
X, not of y alone; with X learned it is not even scale-free (multiplying a column of X by c
changes the REML criterion by 2 log c), so minimizing it would shrink features towards 0.
At the end: the recovered sigma_b = sigma * theta and sigma against the truth, and how well
X beta-hat tracks f(x). Inner fits that did not converge are counted by status (their
gradient is then only approximate).

Run: python examples/optax_features.py [--small]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlmm

SIGMA_B, SIGMA = 0.5, 0.3


def f(x):
    return jnp.sin(2.0 * x)


def init_mlp(key, widths=(1, 8, 8)):
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(widths) - 1), zip(widths, widths[1:])):
        kw, kb = jax.random.split(k)
        params.append(dict(W=jax.random.normal(kw, (a, b)) / np.sqrt(a),
                           b=0.5 * jax.random.normal(kb, (b,))))
    return params


def features(params, x):
    """X = [1, h(x)]: the intercept column stays ones, as suffstats requires."""
    h = x[:, None]
    for layer in params:
        h = jnp.tanh(h @ layer["W"] + layer["b"])
    return jnp.concatenate([jnp.ones((x.shape[0], 1)), h], axis=1)


def simulate(key, n_groups, per_group):
    kx, kb, ke = jax.random.split(key, 3)
    g = np.repeat(np.arange(n_groups), per_group)
    x = jax.random.uniform(kx, (g.size,), minval=-3.0, maxval=3.0)
    b = SIGMA_B * jax.random.normal(kb, (n_groups,))
    y = f(x) + b[g] + SIGMA * jax.random.normal(ke, (g.size,))
    return np.asarray(x), g, np.asarray(y)


def loss_and_fit(params, design, x, theta0):
    fit = jaxlmm.fit_stats(jaxlmm.suffstats(design, X=features(params, x)), reml=False,
                           theta0=theta0)
    return fit.objective, fit


@partial(jax.jit, static_argnames=("tx",))
def train_step(params, opt_state, design, x, theta0, tx):
    (loss, fit), grads = jax.value_and_grad(loss_and_fit, has_aux=True)(
        params, design, x, theta0)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, fit


def r_squared(X, beta, x):
    """Squared correlation of X beta-hat with f(x) (the intercept also absorbs mean(b))."""
    return float(jnp.corrcoef(jnp.asarray(X) @ beta, f(jnp.asarray(x)))[0, 1] ** 2)


def main(small: bool = False) -> dict:
    n_groups, per_group, steps, every = (40, 10, 30, 5) if small else (100, 20, 300, 25)
    key_data, key_mlp = jax.random.split(jax.random.PRNGKey(0))
    x, g, y = simulate(key_data, n_groups, per_group)
    params = init_mlp(key_mlp)
    # the design is built once, from the initial features (full rank, checked here)
    design = jaxlmm.design_from_arrays(y, np.asarray(features(params, jnp.asarray(x))),
                                       [("g", g)])
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    theta = jnp.asarray(design.theta_start)

    print(f"{len(y)} rows, {n_groups} groups; truth sigma_b = {SIGMA_B}, sigma = {SIGMA}")
    losses, statuses, t0 = [], [], time.perf_counter()
    for step in range(steps):
        params, opt_state, loss, fit = train_step(params, opt_state, design, x, theta, tx)
        theta = fit.theta  # warm start for the next step's inner fit
        losses.append(float(loss))
        statuses.append(int(fit.status))
        if step % every == 0 or step == steps - 1:
            print(f"step {step:4d}  ML deviance {losses[-1]:10.3f}  sigma_b "
                  f"{float(fit.sigma * fit.theta[0]):.3f}  sigma {float(fit.sigma):.3f}")
    seconds = time.perf_counter() - t0

    # the fit at the trained parameters (the loop's last fit is one update behind)
    X = features(params, jnp.asarray(x))
    fit = jaxlmm.fit_stats(jaxlmm.suffstats(design, X=X), reml=False, theta0=theta)
    sigma_b, sigma = float(fit.sigma * fit.theta[0]), float(fit.sigma)
    r2_init = r_squared(design.X, jaxlmm.fit_stats(jaxlmm.suffstats(design), reml=False).beta, x)
    r2 = r_squared(X, fit.beta, x)
    not_converged = {i: statuses.count(i) for i in sorted(set(statuses)) if i}
    print(f"{steps} adam steps in {seconds:.1f} s (compilation included); inner fits not "
          f"converged (status: count): {not_converged or 'none'}")
    print(f"final ML deviance {float(fit.objective):.3f} (status {int(fit.status)})")
    print(f"sigma_b: {sigma_b:.3f} (truth {SIGMA_B});  sigma: {sigma:.3f} (truth {SIGMA})")
    print(f"fixed part X beta-hat vs f(x): R^2 {r2_init:.4f} (initial features) -> {r2:.4f}")
    return dict(first_loss=losses[0], last_loss=float(fit.objective), losses=losses,
                sigma_b=sigma_b, sigma=sigma, r2_init=r2_init, r2=r2, status=int(fit.status),
                statuses=statuses, seconds=seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="400 rows, 30 steps")
    main(parser.parse_args().small)
