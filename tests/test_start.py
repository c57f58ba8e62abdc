"""Starting values: moment estimates for scalar factors of models with a large dense block."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import start


def _crossed(n=6000, nu=500, ni=300, su=0.8, si=0.4, seed=3):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, nu, n)
    pop = 1.0 / np.arange(1, ni + 1) ** 0.7  # skewed popularity, as in the benchmarks
    i = rng.choice(ni, n, p=pop / pop.sum())
    x = rng.normal(size=n)
    y = 2 + 0.5 * x + su * rng.normal(size=nu)[u] + si * rng.normal(size=ni)[i] \
        + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "u": [f"u{k}" for k in u],
                         "i": [f"i{k}" for k in i]})


def _setup(formula, df):
    d = jaxlmm.design(formula, df)
    return d, jaxlmm.suffstats(d)


def test_moments_close_to_the_optimum():
    """On a crossed design the moment start lands near the REML optimum, in lme4's theta
    order; a fit from it reaches the same optimum as one from lme4's start."""
    df = _crossed()
    formula = "y ~ x + (1 | u) + (1 | i)"
    ms, stats = _setup(formula, df)
    assert start.use_moments(ms.struct)
    theta0 = ms.theta_start
    th = np.asarray(start.moments(stats, jnp.asarray(theta0)))
    m = jaxlmm.fit(formula, df)
    np.testing.assert_allclose(th, m.theta, rtol=0.25)
    assert not np.allclose(th, theta0)
    np.testing.assert_allclose(m.optinfo["theta0"], th)
    m1 = jaxlmm.fit(formula, df, start=theta0)
    assert m.optinfo["iterations"] < m1.optinfo["iterations"]
    assert m.objective == pytest.approx(m1.objective, abs=1e-6)
    np.testing.assert_allclose(m.theta, m1.theta, rtol=1e-4)


def test_moments_leave_vector_terms_and_small_models_alone():
    df = _crossed()
    ms, stats = _setup("y ~ x + (1 | u) + (x | i)", df)
    theta0 = ms.theta_start
    th = np.asarray(start.moments(stats, jnp.asarray(theta0)))
    names = [(e.factor, e.row, e.col) for e in ms.info.entries]
    vector = [k for k, e in enumerate(ms.info.entries) if ms.info.factors[e.factor].q > 1]
    np.testing.assert_array_equal(th[vector], theta0[vector])
    assert len(vector) == 3 and len(names) == 4
    assert th[[k for k in range(4) if k not in vector]][0] != 1.0
    small, _ = _setup("y ~ x + (1 | u)", df.head(400))
    assert not start.use_moments(small.struct)


def test_moments_floor_and_no_variance():
    """A factor with no variance starts at THETA_MIN, not on the boundary."""
    df = _crossed(si=0.0, seed=5)
    ms, stats = _setup("y ~ x + (1 | u) + (1 | i)", df)
    th = np.asarray(start.moments(stats, jnp.asarray(ms.theta_start)))
    assert np.all(th >= start.THETA_MIN)
    assert th[1] < 0.15
