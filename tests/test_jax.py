"""The functional JAX layer: design -> suffstats -> fit_stats / objective / solve, under jit,
vmap and grad, and in float32."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlmm
from jaxlmm.datasets import load

SLEEP = "Reaction ~ Days + (Days | Subject)"
PENICILLIN = "diameter ~ 1 + (1 | plate) + (1 | sample)"
PASTES = "strength ~ 1 + (1 | batch/cask)"

_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def count_compilations():
    """Counts traces and backend compilations (JAX's monitoring events) inside the block."""
    counts = {e: 0 for e in _EVENTS}

    def listener(event, duration, **_):
        if event in counts:
            counts[event] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def sleep_design():
    return jaxlmm.design(SLEEP, load("sleepstudy"))


def test_fit_is_the_composition_of_the_layers(sleep_design):
    m = jaxlmm.fit(SLEEP, load("sleepstudy"))
    r = jaxlmm.fit_stats(jaxlmm.suffstats(sleep_design))
    np.testing.assert_array_equal(m.theta, np.asarray(r.theta))
    np.testing.assert_array_equal(m.fixef.values, np.asarray(r.beta))
    assert m.sigma == float(r.sigma) and m.objective == float(r.objective)
    assert int(r.status) == 0 and bool(r.converged)
    assert sleep_design.info.theta_names == m.theta_names
    # solve and objective at the optimum reproduce the fit's numbers
    sol = jaxlmm.solve(r.theta, jaxlmm.suffstats(sleep_design))
    np.testing.assert_allclose(np.asarray(sol.beta), np.asarray(r.beta), rtol=1e-13)
    obj = jaxlmm.objective(r.theta, jaxlmm.suffstats(sleep_design))
    assert float(obj) == pytest.approx(m.objective, rel=1e-13)


def test_design_from_arrays_matches_formula(sleep_design):
    df = load("sleepstudy")
    X = np.column_stack([np.ones(len(df)), df.Days])
    d = jaxlmm.design_from_arrays(df.Reaction.values, X,
                                  [("Subject", df.Subject.values, X)],
                                  fixef_names=["(Intercept)", "Days"])
    a = jaxlmm.fit_stats(jaxlmm.suffstats(d))
    b = jaxlmm.fit_stats(jaxlmm.suffstats(sleep_design))
    np.testing.assert_allclose(np.asarray(a.theta), np.asarray(b.theta), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(a.beta), np.asarray(b.beta), rtol=1e-12)
    with pytest.raises(jaxlmm.DataError, match="rank deficient"):
        jaxlmm.design_from_arrays(df.Reaction.values, np.column_stack([X, 2 * X[:, 1]]),
                                  [("Subject", df.Subject.values)])
    with pytest.raises(jaxlmm.DataError, match="codes of term 0"):
        jaxlmm.design_from_arrays(df.Reaction.values, X, [("Subject", df.Subject.values[:5])])
    with pytest.raises(jaxlmm.DataError, match="non-finite"):
        jaxlmm.design_from_arrays(np.r_[np.nan, df.Reaction.values[1:]], X,
                                  [("Subject", df.Subject.values)])


def test_shape_errors_are_clear(sleep_design):
    with pytest.raises(ValueError, match=r"y must have shape \(180,\)"):
        jaxlmm.suffstats(sleep_design, y=np.zeros(10))
    with pytest.raises(ValueError, match=r"X must have shape \(180, 2\)"):
        jaxlmm.suffstats(sleep_design, X=np.zeros((180, 3)))
    with pytest.raises(ValueError, match="theta0 must have 3 elements"):
        jaxlmm.fit_stats(jaxlmm.suffstats(sleep_design), theta0=jnp.ones(2))
    with pytest.raises(ValueError, match="hessian must be"):
        jaxlmm.fit_stats(jaxlmm.suffstats(sleep_design), hessian="newton")


def test_design_is_a_pytree_compared_by_content(sleep_design):
    leaves, tree = jax.tree_util.tree_flatten(sleep_design)
    again = jax.tree_util.tree_unflatten(tree, leaves)
    assert again.info is sleep_design.info and again.struct == sleep_design.struct
    other = jaxlmm.design(SLEEP, load("sleepstudy"))  # rebuilt: equal static part
    assert jax.tree_util.tree_structure(other) == tree
    df = load("sleepstudy")
    df["Subject"] = "s" + df["Subject"].astype(str)  # other level labels: not equal
    assert jaxlmm.design(SLEEP, df).info != sleep_design.info


def test_no_recompilation_on_same_shapes(sleep_design):
    """A second call with new data of the same shapes neither retraces nor recompiles:
    fit_stats itself, and a user's jitted function taking the design as an argument."""
    rng = np.random.default_rng(0)
    y1 = sleep_design.y + rng.normal(size=sleep_design.n)
    y2 = sleep_design.y + rng.normal(size=sleep_design.n)
    jax.block_until_ready(jaxlmm.fit_stats(jaxlmm.suffstats(sleep_design, y=y1)))
    with count_compilations() as c:
        r = jaxlmm.fit_stats(jaxlmm.suffstats(sleep_design, y=y2))
        jax.block_until_ready(r)
    assert c == {e: 0 for e in _EVENTS}

    @jax.jit
    def pipeline(design, y):
        res = jaxlmm.fit_stats(jaxlmm.suffstats(design, y=y))
        return res.theta, res.beta, res.objective

    jax.block_until_ready(pipeline(sleep_design, y1))
    rebuilt = jaxlmm.design(SLEEP, load("sleepstudy"))
    with count_compilations() as c:
        out = pipeline(rebuilt, y2)
        jax.block_until_ready(out)
    assert c == {e: 0 for e in _EVENTS}
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(r.theta), rtol=1e-10)
    with count_compilations() as c:  # the counter does see a compilation
        jax.block_until_ready(pipeline(jaxlmm.design(SLEEP, load("sleepstudy").iloc[:170]),
                                       y2[:170]))
    assert c[_EVENTS[0]] > 0


def _simulate(design, fit, nsim, seed):
    """Responses simulated from a fitted sleepstudy model (b ~ N(0, sigma^2 T T'))."""
    rng = np.random.default_rng(seed)
    th = np.asarray(fit.theta)
    T = np.array([[th[0], 0.0], [th[1], th[2]]])
    sig = float(fit.sigma)
    Z, codes = design.Z[0], design.codes[0]
    G = int(codes.max()) + 1
    b = rng.normal(size=(nsim, G, 2)) @ T.T * sig
    return (design.X @ np.asarray(fit.beta) + np.einsum("nq,bnq->bn", Z, b[:, codes])
            + sig * rng.normal(size=(nsim, design.n)))


def test_vmap_over_1000_responses(sleep_design):
    """1,000 responses sharing one design fitted in one vmapped call equal 1,000 separate
    fits (the covariance T T', identified also where a singular fit leaves theta's
    rotation free, beta, sigma and the criterion)."""
    fit0 = jaxlmm.fit_stats(jaxlmm.suffstats(sleep_design))
    Y = _simulate(sleep_design, fit0, 1000, seed=1)

    @jax.jit
    def many(design, Y):
        return jax.vmap(lambda y: jaxlmm.fit_stats(jaxlmm.suffstats(design, y=y)))(Y)

    R = many(sleep_design, Y)
    assert np.asarray(R.theta).shape == (1000, 3)
    assert np.all(np.asarray(R.status) == 0)
    one = jax.jit(lambda design, y: jaxlmm.fit_stats(jaxlmm.suffstats(design, y=y)))
    singles = [one(sleep_design, y) for y in Y]
    S = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *singles)
    np.testing.assert_allclose(np.asarray(R.objective), S.opt.fun, rtol=1e-12, atol=1e-8)
    np.testing.assert_allclose(np.asarray(R.beta), S.solution.beta, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(np.asarray(R.sigma), S.solution.sigma, rtol=1e-7)

    def cov(th):
        T = np.zeros((len(th), 2, 2))
        T[:, 0, 0], T[:, 1, 0], T[:, 1, 1] = th[:, 0], th[:, 1], th[:, 2]
        return T @ np.swapaxes(T, 1, 2)

    # (equal criteria, but the surface is flat enough that the stopping points of the two
    # routes differ by up to ~1e-6 in the covariance)
    np.testing.assert_allclose(cov(np.asarray(R.theta)), cov(S.opt.theta), atol=3e-6)
    # the quasi-Newton and Newton routes reach the same optimum for every response: before
    # the column-flip and second-order checks at bound points (optimize.py) 11 of these
    # 1,000 ended on a boundary point 1-14 units above the other route's optimum
    E = jax.jit(lambda design, Y: jax.vmap(lambda y: jaxlmm.fit_stats(
        jaxlmm.suffstats(design, y=y), hessian="exact"))(Y))(sleep_design, Y)
    assert np.all(np.asarray(E.status) == 0)
    np.testing.assert_allclose(np.asarray(E.objective), np.asarray(R.objective), atol=1e-6)


@pytest.mark.parametrize("dataset,formula", [("sleepstudy", SLEEP),
                                             ("Penicillin", PENICILLIN),
                                             ("Pastes", PASTES)])
def test_grad_of_the_optimum_by_implicit_differentiation(dataset, formula):
    """d/dy of the fitted criterion, beta-hat, sigma-hat and theta-hat (reverse mode through
    the implicit-function rule, and forward mode) against central finite differences of
    refits; d beta-hat / dX on sleepstudy likewise."""
    d = jaxlmm.design(formula, load(dataset))

    def fitted(y=None, X=None):
        r = jaxlmm.fit_stats(jaxlmm.suffstats(d, y=y, X=X), hessian="exact")
        return r.objective, r.beta, r.sigma, r.theta

    y0 = jnp.asarray(d.y)
    rng = np.random.default_rng(3)
    v = rng.normal(size=d.n) * np.std(d.y)
    h = 1e-4  # refits stop within ~1e-8 of the optimum: a smaller h amplifies that noise
    plus, minus = fitted(y0 + h * v), fitted(y0 - h * v)
    for i, name in enumerate(["objective", "beta", "sigma", "theta"]):
        J = jax.jacrev(lambda y: fitted(y)[i])(y0)
        fd = (np.asarray(plus[i]) - np.asarray(minus[i])) / (2 * h)
        np.testing.assert_allclose(np.asarray(J @ v), fd, rtol=2e-5, atol=1e-7,
                                   err_msg=name)
    _, fwd = jax.jvp(lambda y: fitted(y)[1], (y0,), (jnp.asarray(v),))
    np.testing.assert_allclose(np.asarray(fwd), (np.asarray(plus[1]) - np.asarray(minus[1]))
                               / (2 * h), rtol=2e-5, atol=1e-7)
    if dataset == "sleepstudy":
        X0 = jnp.asarray(d.X)
        V = rng.normal(size=X0.shape)
        V[:, 0] = 0.0  # the intercept column stays ones
        JX = jax.jacrev(lambda X: fitted(X=X)[1])(X0)
        fd = (np.asarray(fitted(X=X0 + h * V)[1]) - np.asarray(fitted(X=X0 - h * V)[1])) / (2 * h)
        np.testing.assert_allclose(np.einsum("pij,ij->p", np.asarray(JX), V), fd, rtol=2e-5)


def test_grad_of_the_criterion_in_theta():
    """The profiled criterion is a plain differentiable function of theta (and of the
    statistics): gradient and Hessian against finite differences."""
    d = jaxlmm.design(PENICILLIN, load("Penicillin"))
    stats = jaxlmm.suffstats(d)
    th = jnp.asarray([1.2, 0.8])
    g = jax.grad(jaxlmm.objective)(th, stats)
    H = jax.hessian(jaxlmm.objective)(th, stats)
    h = 1e-5
    for i in range(2):
        e = jnp.zeros(2).at[i].set(h)
        fd = (jaxlmm.objective(th + e, stats) - jaxlmm.objective(th - e, stats)) / (2 * h)
        assert float(g[i]) == pytest.approx(float(fd), rel=1e-6)
        fdg = (jax.grad(jaxlmm.objective)(th + e, stats)
               - jax.grad(jaxlmm.objective)(th - e, stats)) / (2 * h)
        np.testing.assert_allclose(np.asarray(H[i]), np.asarray(fdg), rtol=1e-5)
    # d criterion / d y through the statistics, at fixed theta
    gy = jax.grad(lambda y: jaxlmm.objective(th, jaxlmm.suffstats(d, y=y)))(jnp.asarray(d.y))
    v = np.random.default_rng(0).normal(size=d.n)
    fd = (jaxlmm.objective(th, jaxlmm.suffstats(d, y=d.y + h * v))
          - jaxlmm.objective(th, jaxlmm.suffstats(d, y=d.y - h * v))) / (2 * h)
    assert float(gy @ v) == pytest.approx(float(fd), rel=1e-6)


@pytest.mark.parametrize("dataset,formula", [("sleepstudy", SLEEP),
                                             ("Penicillin", PENICILLIN),
                                             ("Pastes", PASTES),
                                             ("Dyestuff", "Yield ~ 1 + (1 | Batch)"),
                                             ("Dyestuff2", "Yield ~ 1 + (1 | Batch)")])
def test_float32_accuracy(dataset, formula):
    """float32 statistics and fit against float64 (documented in docs/jax.md): theta within
    5e-3 relative, beta 1e-4, sigma 1e-3, the criterion within 5e-3 absolute."""
    d = jaxlmm.design(formula, load(dataset))
    r64 = jaxlmm.fit_stats(jaxlmm.suffstats(d))
    r32 = jaxlmm.fit_stats(jaxlmm.suffstats(d, dtype=jnp.float32))
    assert r32.theta.dtype == jnp.float32 and r32.beta.dtype == jnp.float32
    assert int(r32.status) == 0
    np.testing.assert_allclose(np.asarray(r32.theta), np.asarray(r64.theta), rtol=5e-3,
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(r32.beta), np.asarray(r64.beta), rtol=1e-4)
    assert float(r32.sigma) == pytest.approx(float(r64.sigma), rel=1e-3)
    assert float(r32.objective) == pytest.approx(float(r64.objective), abs=5e-3)


def test_float32_on_the_large_dense_route(monkeypatch):
    """float32 through the closed-form derivatives of large crossed blocks (forced here on
    Penicillin): no float64 leaks into the kernels (one did, in the crossed scaling), and
    the fit agrees with float64 as on the plain route."""
    from jaxlmm import deviance

    d = jaxlmm.design(PENICILLIN, load("Penicillin"))
    r64 = jaxlmm.fit_stats(jaxlmm.suffstats(d))
    monkeypatch.setattr(deviance, "LARGE_DENSE", -1)
    jax.clear_caches()
    try:
        r32 = jaxlmm.fit_stats(jaxlmm.suffstats(d, dtype=jnp.float32))
        assert r32.theta.dtype == jnp.float32 and int(r32.status) == 0
        np.testing.assert_allclose(np.asarray(r32.theta), np.asarray(r64.theta), rtol=5e-3)
        assert float(r32.objective) == pytest.approx(float(r64.objective), abs=5e-3)
    finally:
        jax.clear_caches()  # later tests must not reuse programs traced with the patch
