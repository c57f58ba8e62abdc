"""A whole simulation study as ONE jitted function: simulate, fit by vmap, summarize by scan.

Model (lme4's sleepstudy, ``Reaction ~ Days + (Days | Subject)``), per factor k with
template T_k built from theta:  y = X beta + sum_k Z_k b_k + e,  b_k = sigma * u_k T_k',
u_k ~ N(0, I), e ~ N(0, sigma^2 I); so Var(b_k) = sigma^2 T_k T_k'.

Inside one ``jax.jit``: a ``jax.lax.scan`` over K batches; each batch draws R responses with
``jax.random``, fits them all with ``jax.vmap(fit_stats(suffstats(design, y=y)))`` (REML) and
adds to running sums: bias and RMSE of beta-hat and sigma-hat, coverage of Wald 95% intervals
beta-hat +- 1.96 se (vcov = sigma^2 * solution.xtx_inv), singular fits (a template diagonal
below 1e-4, lme4's isSingular rule) and the optimizer's status codes. So a mixed-model fit is
just one step of a larger jitted program. The truth is the REML fit to the real data.

Run: python examples/simulation_study.py [--small]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jaxlmm

FORMULA = "Reaction ~ Days + (Days | Subject)"


def simulate(key, design, beta, theta, sigma):
    """One response vector from the model (module docstring); generic in the factors."""
    y = jnp.asarray(design.X) @ beta
    for (G, q), tmpl, Z, codes in zip(design.struct.factors, design.struct.templates,
                                      design.Z, design.codes):
        T = jnp.zeros((q, q))
        for i, r, c in tmpl:  # theta_index, row, col (static)
            T = T.at[r, c].set(theta[i])
        key, sub = jax.random.split(key)
        b = sigma * jax.random.normal(sub, (G, q)) @ T.T  # (G, q) random effects
        y = y + jnp.sum(jnp.asarray(Z) * b[codes], axis=1)
    return y + sigma * jax.random.normal(key, y.shape)


@partial(jax.jit, static_argnames=("n_batches", "batch_size"))
def simulation_study(design, key, beta, theta, sigma, n_batches, batch_size):
    """K = n_batches batches of R = batch_size replicates; returns the accumulated sums."""
    diag = jnp.array([i for tmpl in design.struct.templates for i, r, c in tmpl if r == c])

    def one_batch(sums, key):
        Y = jax.vmap(lambda k: simulate(k, design, beta, theta, sigma))(
            jax.random.split(key, batch_size))
        fits = jax.vmap(lambda y: jaxlmm.fit_stats(jaxlmm.suffstats(design, y=y)))(Y)
        se = jnp.sqrt(jnp.diagonal(fits.sigma[:, None, None] ** 2 * fits.solution.xtx_inv,
                                   axis1=1, axis2=2))
        err = fits.beta - beta
        new = dict(
            n=sums["n"] + batch_size,
            beta_err=sums["beta_err"] + err.sum(0),
            beta_sq=sums["beta_sq"] + (err ** 2).sum(0),
            covered=sums["covered"] + (jnp.abs(err) <= 1.96 * se).sum(0),
            sigma_err=sums["sigma_err"] + (fits.sigma - sigma).sum(),
            sigma_sq=sums["sigma_sq"] + ((fits.sigma - sigma) ** 2).sum(),
            singular=sums["singular"] + jnp.any(fits.theta[:, diag] < 1e-4, axis=1).sum(),
            status=sums["status"] + jnp.bincount(fits.status, length=4),
        )
        return new, fits.beta.mean(0)  # per-batch mean of beta-hat, stacked by scan

    p = beta.shape[0]
    zeros = dict(n=0, beta_err=jnp.zeros(p), beta_sq=jnp.zeros(p),
                 covered=jnp.zeros(p, int), sigma_err=0.0, sigma_sq=0.0,
                 singular=0, status=jnp.zeros(4, int))
    return jax.lax.scan(one_batch, zeros, jax.random.split(key, n_batches))


def main(small: bool = False) -> dict:
    df = jaxlmm.datasets.load("sleepstudy")
    design = jaxlmm.design(FORMULA, df)
    truth = jaxlmm.fit_stats(jaxlmm.suffstats(design))  # REML fit to the real data
    beta, theta, sigma = truth.beta, truth.theta, truth.sigma
    n_batches, batch_size = (2, 25) if small else (10, 100)

    args = (design, jax.random.PRNGKey(2024), beta, theta, sigma)
    t0 = time.perf_counter()
    study = simulation_study.lower(*args, n_batches=n_batches, batch_size=batch_size).compile()
    t1 = time.perf_counter()
    sums, batch_means = jax.block_until_ready(study(*args))
    t2 = time.perf_counter()

    R = int(sums["n"])
    names = design.info.fixef_names
    bias = np.asarray(sums["beta_err"]) / R
    rmse = np.sqrt(np.asarray(sums["beta_sq"]) / R)
    coverage = np.asarray(sums["covered"]) / R
    sigma_bias = float(sums["sigma_err"]) / R
    sigma_rmse = float(np.sqrt(float(sums["sigma_sq"]) / R))
    status = {jaxlmm.STATUS[i].split(";")[0]: int(c)
              for i, c in enumerate(np.asarray(sums["status"])) if c}
    singular = int(sums["singular"]) / R

    print(f"{FORMULA}: {R} replicates ({n_batches} scan steps x {batch_size} vmapped fits), "
          f"compiled in {t1 - t0:.1f} s, ran in {t2 - t1:.2f} s")
    print(f"truth: beta = {np.round(np.asarray(beta), 3)}, theta = "
          f"{np.round(np.asarray(theta), 4)}, sigma = {float(sigma):.3f}")
    print(f"{'':>12} {'bias':>9} {'RMSE':>9} {'Wald 95% coverage':>18}")
    for j, nm in enumerate(names):
        print(f"{nm:>12} {bias[j]:9.4f} {rmse[j]:9.4f} {coverage[j]:18.3f}")
    print(f"{'sigma':>12} {sigma_bias:9.4f} {sigma_rmse:9.4f}")
    print(f"singular fits: {singular:.3f}; optimizer status: {status}")
    print("per-batch mean of beta-hat:\n", np.round(np.asarray(batch_means), 3))
    return dict(replicates=R, beta_bias=bias, beta_rmse=rmse, coverage=coverage,
                sigma_bias=sigma_bias, sigma_rmse=sigma_rmse, singular_fraction=singular,
                status_counts=np.asarray(sums["status"]), compile_seconds=t1 - t0,
                run_seconds=t2 - t1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="50 replicates instead of 1000")
    main(parser.parse_args().small)
