"""joint.py: the unprofiled joint log-density of (y, b).

Checks: the gradient in b vanishes at solve()'s conditional modes, Newton's method in b
returns them, and integrating b (and, for REML, beta) out in closed form reproduces
lme4's own deviance function (the devfun_checks of tests/fixtures/lme4/*.json, at the
optimum and away from it) and jaxlmm.objective. Measured (2-core CPU): gradient at the
modes <= 2e-15 of the gradient at 0; Newton modes within 1e-13 (relative) of solve's;
integrated log-likelihoods within 1e-12 (absolute) of lme4's and jaxlmm's criteria.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, fixture_data, load_fixture
from jax.flatten_util import ravel_pytree

import jaxlmm
from jaxlmm.joint import data_loglik, joint_logdensity, joint_logdensity_u, penalty

MODELS = {  # name: (formula, dataset)
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),
    "pastes": ("strength ~ 1 + (1 | batch/cask)", "Pastes"),
}


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(request):
    formula, ds = MODELS[request.param]
    return jaxlmm.fit(formula, jaxlmm.datasets.load(ds))


def _args(m):
    sol = m.result.solution
    return (tuple(jnp.asarray(b) for b in sol.b), jnp.asarray(sol.beta), jnp.asarray(m.theta),
            jnp.asarray(sol.sigma))


@partial(jax.jit, static_argnames=("fn", "over_beta"))
def _laplace(fn, z, beta, theta, sigma, design, over_beta=False):
    """log of the integral of exp(fn) over z (and beta): exact for a Gaussian integrand,
    fn(z_hat) + 1/2 log|2 pi H^{-1}|, H = -Hessian at the mode z_hat (z given)."""
    x0, unravel = ravel_pytree((z, beta) if over_beta else z)

    def f(x):
        zz, bb = unravel(x) if over_beta else (unravel(x), beta)
        return fn(zz, bb, theta, sigma, design)

    _, logdet = jnp.linalg.slogdet(-jax.hessian(f)(x0))
    return f(x0) + 0.5 * (x0.size * math.log(2 * math.pi) - logdet)


@partial(jax.jit, static_argnames=("steps",))
def _newton_modes(b0, beta, theta, sigma, design, steps=3):
    x, unravel = ravel_pytree(b0)

    def f(v):
        return joint_logdensity(unravel(v), beta, theta, sigma, design)

    for _ in range(steps):
        x = x - jnp.linalg.solve(jax.hessian(f)(x), jax.grad(f)(x))
    return unravel(x)


def test_gradient_vanishes_at_conditional_modes(fitted):
    b, beta, theta, sigma = _args(fitted)
    grad = jax.jit(jax.grad(joint_logdensity))
    g = ravel_pytree(grad(b, beta, theta, sigma, fitted.design))[0]
    g0 = ravel_pytree(grad(jax.tree_util.tree_map(jnp.zeros_like, b), beta, theta, sigma,
                           fitted.design))[0]
    assert float(jnp.max(jnp.abs(g))) <= 1e-8 * float(jnp.max(jnp.abs(g0)))


def test_newton_in_b_returns_conditional_modes(fitted):
    b, beta, theta, sigma = _args(fitted)
    b0 = jax.tree_util.tree_map(jnp.zeros_like, b)
    bn = _newton_modes(b0, beta, theta, sigma, fitted.design)
    for x, y in zip(bn, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0,
                                   atol=1e-8 * float(jnp.max(jnp.abs(y))))


def test_integrating_b_out_gives_ml_loglik(fitted):
    """At any theta, ML beta and sigma for that theta: log p(y) = -deviance / 2."""
    stats = fitted.stats
    for theta in (fitted.theta, 0.5 * fitted.theta + 0.1):
        sol = jaxlmm.solve(theta, stats, reml=False)
        ll = -0.5 * float(jaxlmm.objective(theta, stats, reml=False))
        for fn, z in ((joint_logdensity, sol.b), (joint_logdensity_u, sol.u)):
            lp = float(_laplace(fn, z, sol.beta, jnp.asarray(theta), sol.sigma,
                                fitted.design))
            assert abs(lp - ll) <= 1e-8 * abs(ll), (fn.__name__, theta, lp, ll)


def _lme4_design(name):
    fx = load_fixture(name)
    data = fixture_data(fx)
    d = jaxlmm.design(fx["formula"], data, weights=fx["weights"])
    return fx, d, jaxlmm.suffstats(d)


@pytest.mark.parametrize("name", ["sleepstudy_ml", "dyestuff_ml"])
def test_integrated_joint_matches_lme4_ml_devfun(name):
    """lme4's ML deviance function, at its optimum, at half of it and at its start."""
    fx, d, stats = _lme4_design(name)
    lps = []
    for chk in fx["devfun_checks"]:
        theta = np.asarray(chk["theta"], float)
        sol = jaxlmm.solve(theta, stats, reml=False)
        lps.append(float(_laplace(joint_logdensity, sol.b, sol.beta, jnp.asarray(theta),
                                  sol.sigma, d)))
        assert abs(-2.0 * lps[-1] - chk["value"]) <= 1e-9 * chk["value"]
    assert abs(lps[0] - fx["loglik"]) <= 1e-9 * abs(fx["loglik"])  # lme4's logLik(m)


@pytest.mark.parametrize("name", ["penicillin_reml", "pastes_reml", "sleepstudy_weighted",
                                  "sleepstudy_offset", "dyestuff2_reml"])
def test_integrating_b_and_beta_out_gives_lme4_reml_criterion(name):
    """REML = log of the joint integrated over b and beta (flat prior), at the REML sigma;
    covers crossed, nested, prior weights, offset and a singular fit (u scale)."""
    fx, d, stats = _lme4_design(name)
    for chk in fx["devfun_checks"]:
        theta = np.asarray(chk["theta"], float)
        sol = jaxlmm.solve(theta, stats, reml=True)
        lp = float(_laplace(joint_logdensity_u, sol.u, sol.beta, jnp.asarray(theta),
                            sol.sigma, d, over_beta=True))
        assert abs(-2.0 * lp - chk["value"]) <= 1e-9 * chk["value"], (theta, lp)


def test_singular_template_needs_u_scale():
    """Dyestuff2: theta = 0. log p(b) is degenerate, the u-scale joint is finite."""
    d = jaxlmm.design("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("Dyestuff2"))
    stats = jaxlmm.suffstats(d)
    theta = jnp.zeros(1)
    sol = jaxlmm.solve(theta, stats, reml=False)
    assert not np.isfinite(float(penalty(sol.b, theta, sol.sigma, d)))
    lp = float(_laplace(joint_logdensity_u, sol.u, sol.beta, theta, sol.sigma, d))
    assert abs(lp + 0.5 * float(jaxlmm.objective(theta, stats, reml=False))) <= 1e-9 * abs(lp)


def test_pieces_match_direct_formulas():
    """penalty = sum of multivariate normal log-densities; data_loglik with weights and
    offset = the weighted Gaussian log-likelihood, evaluated in numpy."""
    data = pd.read_csv(ROOT / "tests/fixtures/data/sleepstudy_weighted.csv")
    data["o"] = 0.3 * data["Days"]
    d = jaxlmm.design("Reaction ~ Days + (Days | Subject) + offset(o)", data, weights="w")
    rng = np.random.default_rng(1)
    b = (rng.normal(size=(18, 2)) * [20.0, 5.0],)
    theta, sigma, beta = np.array([0.9, -0.1, 0.3]), 25.0, np.array([250.0, 10.0])
    T = np.array([[0.9, 0.0], [-0.1, 0.3]])
    C = sigma ** 2 * T @ T.T
    Ci = np.linalg.inv(C)
    want_pen = np.sum(-0.5 * (2 * math.log(2 * math.pi) + np.linalg.slogdet(C)[1]
                              + np.einsum("gi,ij,gj->g", b[0], Ci, b[0])))
    assert abs(float(penalty(b, theta, sigma, d)) - want_pen) <= 1e-12 * abs(want_pen)
    f = d.info.factors[0]
    w = data["w"].to_numpy()
    r = (data["Reaction"] - beta[0] - beta[1] * data["Days"] - data["o"]).to_numpy() \
        - np.sum(f.Z * b[0][f.codes], axis=1)
    want = -0.5 * np.sum(np.log(2 * math.pi * sigma ** 2 / w) + w * r ** 2 / sigma ** 2)
    assert abs(float(data_loglik(b, beta, sigma, d)) - want) <= 1e-12 * abs(want)


def test_jit_and_derivatives_in_all_arguments(fitted):
    b, beta, theta, sigma = _args(fitted)
    d = fitted.design
    assert jaxlmm.joint_logdensity is joint_logdensity
    jf = jax.jit(joint_logdensity)
    v = float(jf(b, beta, theta, sigma, d))
    assert abs(v - float(joint_logdensity(b, beta, theta, sigma, d))) <= 1e-12 * abs(v)
    grads = jax.jit(jax.grad(joint_logdensity, argnums=(0, 1, 2, 3)))(b, beta, theta, sigma, d)
    # central differences along one random direction per argument
    rng = np.random.default_rng(0)
    args = [b, beta, theta, sigma]
    for i, g in enumerate(grads):
        x0, unravel = ravel_pytree(args[i])
        dirn = jnp.asarray(rng.normal(size=x0.shape))
        h = 1e-5 * max(1.0, float(jnp.max(jnp.abs(x0))))

        def at(s):
            a = list(args)
            a[i] = unravel(x0 + s * dirn)
            return float(jf(*a, d))

        fd = (at(h) - at(-h)) / (2 * h)
        an = float(ravel_pytree(g)[0] @ dirn)
        assert abs(fd - an) <= 1e-5 * max(1.0, abs(an)), (i, fd, an)
