"""Closed-form gradient for one grouping factor (onefactor.py) against autodiff through the
blocked factor: value, gradient and Hessian at arbitrary theta, REML and ML, with prior
weights, uncorrelated terms, a 3-dimensional term and no fixed effects; and the optimizer
path that uses it reaches the same optimum as Newton on autodiff derivatives."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import autodiff, onefactor
from jaxlmm.deviance import derivatives, objective


def _vector3(n_groups=300, seed=5):
    rng = np.random.default_rng(seed)
    sizes = 1 + rng.poisson(6, n_groups)
    g = np.repeat(np.arange(n_groups), sizes)
    n = g.size
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    b = rng.normal(size=(n_groups, 3)) * [1.0, 0.5, 0.3]
    y = 1 + 0.5 * x1 + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2 + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": g.astype(str)})


SS = jaxlmm.datasets.load("sleepstudy")
W = np.random.default_rng(3).uniform(0.5, 2.0, len(SS))
CASES = {
    "slope": ("Reaction ~ Days + (Days | Subject)", SS, None),
    "weights": ("Reaction ~ Days + (Days | Subject)", SS, W),
    "uncorrelated": ("Reaction ~ Days + (Days || Subject)", SS, None),
    "intercept": ("Reaction ~ Days + (1 | Subject)", SS, None),
    "no fixed effects": ("Reaction ~ 0 + (Days | Subject)", SS, None),
    "vector3": ("y ~ x1 + x2 + (x1 + x2 | g)", _vector3(), None),
}


@partial(jax.jit, static_argnames="reml")
def _both(th, st, reml):
    k = th.shape[0]
    ref = autodiff.value_grad_hessian(lambda t: objective(t, st, reml), k)(th)
    return (ref, onefactor.value_grad_hessian(th, st, reml), onefactor.value_grad(th, st, reml),
            onefactor.value(th, st, reml))


@pytest.mark.parametrize("name", list(CASES))
def test_matches_autodiff(name):
    formula, data, w = CASES[name]
    st = jaxlmm.suffstats(jaxlmm.design(formula, data, weights=w))
    assert onefactor.applies(st.struct)
    k = st.struct.n_theta
    for seed, reml in [(0, True), (1, False), (2, True)]:
        th = jnp.asarray(np.random.default_rng(seed).uniform(-0.5, 1.5, k))
        th = jnp.where(jnp.asarray(st.struct.lower) == 0, jnp.abs(th) + 0.05, th)
        (f, g, H), (f1, g1, H1), (f2, g2), f0 = _both(th, st, reml)
        scale = 1.0 + abs(float(f))
        assert abs(float(f0) - float(f)) <= 1e-12 * scale
        assert abs(float(f1) - float(f)) <= 1e-12 * scale and float(f2) == float(f1)
        np.testing.assert_allclose(np.asarray(g2), np.asarray(g), rtol=1e-9,
                                   atol=1e-10 * scale)
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=0, atol=0)
        np.testing.assert_allclose(np.asarray(H1), np.asarray(H), rtol=1e-8,
                                   atol=1e-9 * float(jnp.max(jnp.abs(H))))


def test_used_only_for_one_factor():
    pen = jaxlmm.suffstats(jaxlmm.design("diameter ~ 1 + (1 | plate) + (1 | sample)",
                                         jaxlmm.datasets.load("Penicillin")))
    nested = jaxlmm.suffstats(jaxlmm.design("strength ~ 1 + (1 | batch/cask)",
                                            jaxlmm.datasets.load("Pastes")))
    one = jaxlmm.suffstats(jaxlmm.design(*CASES["slope"][:2]))
    assert not onefactor.applies(pen.struct) and not onefactor.applies(nested.struct)
    assert derivatives(one.struct, 3).value_grad is onefactor.value_grad


def test_fit_same_optimum_as_newton():
    formula, data, _ = CASES["vector3"]
    quasi = jaxlmm.fit(formula, data)  # BFGS on the closed-form gradient
    newton = jaxlmm.fit(formula, data, hessian="exact")
    assert quasi.converged and newton.converged
    np.testing.assert_allclose(quasi.theta, newton.theta, rtol=1e-5, atol=1e-6)
    assert abs(quasi.objective - newton.objective) < 1e-7 * abs(newton.objective)
