"""The bounded optimizer on functions with known minimizers, in both Hessian modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlmm
from jaxlmm.optimize import STATUS, minimize

MODES = [True, False]  # exact Hessian (Newton), BFGS on exact gradients


def _run(fun, theta0, lower, exact, **kw):
    f = jax.jit(lambda t0: minimize(fun, t0, jnp.asarray(lower), exact_hessian=exact, **kw))
    return f(jnp.asarray(theta0, dtype=jnp.float64))


@pytest.mark.parametrize("exact", MODES)
def test_interior_minimum(exact):
    # a convex function whose minimizer is interior: not stalled on the bound
    fun = lambda t: (t[0] - 0.7) ** 2 + 3 * (t[1] + 0.4) ** 2 + 0.5 * t[0] * t[1]  # noqa: E731
    r = _run(fun, [1.0, 0.0], [0.0, -np.inf], exact)
    assert int(r.status) == 0, STATUS[int(r.status)]
    H = np.array([[2.0, 0.5], [0.5, 6.0]])
    expected = np.linalg.solve(H, [1.4, -2.4])
    np.testing.assert_allclose(np.asarray(r.theta), expected, atol=1e-7)
    assert float(r.proj_grad) < 1e-6


@pytest.mark.parametrize("exact", MODES)
def test_minimum_on_the_bound_is_reached_exactly(exact):
    fun = lambda t: (t[0] + 0.5) ** 2 + (t[1] - 2.0) ** 2  # noqa: E731
    r = _run(fun, [1.0, 1.0], [0.0, 0.0], exact)
    assert int(r.status) == 0
    assert float(r.theta[0]) == 0.0  # exactly on the bound, not 1e-9
    assert float(r.theta[1]) == pytest.approx(2.0, abs=1e-8)


@pytest.mark.parametrize("exact", MODES)
def test_stationary_point_at_zero_is_escaped(exact):
    # theta = 0 is stationary (the function depends on theta^2, as a variance does), but the
    # minimum is interior at theta^2 = 1/2; started exactly at 0 the optimizer must leave it.
    fun = lambda t: (t[0] ** 2 - 0.5) ** 2  # noqa: E731
    r = _run(fun, [0.0], [0.0], exact)
    assert int(r.status) == 0
    assert float(r.theta[0]) == pytest.approx(np.sqrt(0.5), abs=1e-6)


@pytest.mark.parametrize("exact", MODES)
def test_iteration_budget_reported(exact):
    fun = lambda t: jnp.sum((t - 3.0) ** 4) + jnp.sum(jnp.exp(-t))  # noqa: E731
    r = _run(fun, [10.0, 10.0], [-np.inf, -np.inf], exact, max_iter=2)
    assert int(r.status) == 1
    assert "max_iter" in STATUS[1]
    assert int(r.iterations) == 2


def test_sleepstudy_started_at_zero_reaches_interior_optimum(sleepstudy):
    # the pitfall of architecture.md: a gradient method started on theta = 0 can stop there
    m = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, start=[0.0, 0.0, 0.0])
    assert m.converged
    assert m.objective == pytest.approx(1743.6282719, abs=1e-4)
    assert not m.is_singular


def test_not_converged_fit_says_so(sleepstudy):
    m = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, max_iter=1)
    assert not m.converged
    assert m.optinfo["status"] == 1
    assert any("max_iter" in s for s in m.messages)


@pytest.mark.parametrize("seed", [5, 29])
def test_ill_conditioned_fixed_effects_converge(seed):
    """Smooth tanh features (cond(X) 6e3 and 1.9e7, full rank) once made the criterion's value
    jitter near the optimum, and the line search accepted noise until max_iter (thousands of
    evaluations, status 1). With X orthogonalized before the cross-products (stats.Scale)
    the fit converges quickly, by REML and ML, and matches a dense GLS solve at its theta."""
    rng = np.random.default_rng(0)
    n, G = 400, 40
    g = np.repeat(np.arange(G), n // G)
    x = rng.uniform(-3, 3, n)
    y = np.sin(2 * x) + 0.5 * rng.normal(size=G)[g] + 0.3 * rng.normal(size=n)
    r = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), np.tanh(np.outer(x, r.normal(size=8))
                                             + 0.5 * r.normal(size=8))])
    assert np.linalg.cond(X) > 1e3
    d = jaxlmm.design_from_arrays(y, X, [("g", g)])
    st = jaxlmm.suffstats(d)
    for reml in (True, False):
        for hessian in ("auto", "exact"):
            f = jaxlmm.fit_stats(st, reml=reml, hessian=hessian)
            assert int(f.status) == 0 and int(f.iterations) < 30, (reml, hessian)
    # beta at the optimum equals GLS with V = I + theta^2 Z Z', solved stably (whitened
    # least squares by QR; the normal equations square cond(X), 1.9e7 for seed 29)
    th = float(f.theta[0])
    Z = (g[:, None] == np.arange(G)[None, :]).astype(float)
    L = np.linalg.cholesky(np.eye(n) + th ** 2 * Z @ Z.T)
    beta = np.linalg.lstsq(np.linalg.solve(L, X), np.linalg.solve(L, y), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(f.beta), beta, rtol=1e-8)
