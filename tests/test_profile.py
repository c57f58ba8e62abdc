"""Profile-likelihood confidence intervals against real lme4 1.1-31
(tests/fixtures/make_profile_fixtures.R wrote tests/fixtures/profile/*.json).

lme4's confint(m, method = "profile") interpolates a spline through points found by a
derivative-free optimizer; jaxlmm solves zeta(x) = -+z exactly. So the checks are, from
the deviance function to the limits:
1. the deviance at every point of lme4's profile table (sd/cor/sigma/beta given, nothing
   optimized) equals lme4's (its ML deviance + zeta^2) to 1e-8;
2. the profile at lme4's points is never above lme4's and matches it where lme4's inner
   optimizer converged;
3. the limits match lme4's spline-free limits (lme4's profiled deviance, bobyqa, uniroot)
   to 1e-7 relative, lme4's confint with an 8 times finer profile to 3e-5 and its default
   confint to 5e-4 (measured: 1.8e-4 at most, lme4's spline error);
4. bounds (an sd of 0, a correlation of 1), names, REML = ML, argument errors.
"""

import json
import math
import pathlib

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

import jaxlmm
from jaxlmm.errors import JaxlmmError
from jaxlmm.profile import Profile, format_perc, profile_confint

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "profile"
MODELS = ["sleepstudy_reml", "sleepstudy_ml", "penicillin_reml", "dyestuff2_reml",
          "sleepstudy6_ml"]
# lme4's confint is unreliable on sleepstudy6 (it warns of a non-monotonic profile and
# falls back to linear interpolation for .sig02): compared with its spline-free limits only
SPLINE_OK = ["sleepstudy_reml", "sleepstudy_ml", "penicillin_reml", "dyestuff2_reml"]


def _load(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _data(fx):
    d = jaxlmm.datasets.load(fx["dataset"])
    for col, keep in (fx["subset"] or {}).items():
        d = d[d[col].astype(str).isin(keep)].reset_index(drop=True)
    return d


_CACHE = {}


def _case(name):
    if name not in _CACHE:
        fx = _load(name)
        m = jaxlmm.fit(fx["formula"], _data(fx), reml=fx["reml"])
        _CACHE[name] = (fx, m, Profile(m))
    return _CACHE[name]


def _table(fx):
    pr = fx["profile"]
    tab = pd.DataFrame(pr["values"])
    tab[".zeta"] = pr["zeta"]
    tab[".par"] = pr["par"]
    return tab


def _ref(c):
    return np.c_[c["lower"], c["upper"]]


@pytest.mark.parametrize("name", MODELS)
def test_ml_optimum_and_names(name):
    fx, _, P = _case(name)
    assert P.names == fx["param_names"]
    # lme4's ML (re)fit is up to 3e-8 deviance units less precise than ours (sleepstudy
    # ML: nloptwrap's optimum), which moves its sigma by 4e-6 relative
    assert P.base <= fx["ml"]["deviance"] + 1e-9
    assert P.base == pytest.approx(fx["ml"]["deviance"], abs=1e-7)
    np.testing.assert_allclose(P.beta_hat, list(fx["ml"]["fixef"].values()), rtol=1e-6)
    assert P.phi_hat[-1] == pytest.approx(fx["ml"]["sigma"], rel=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_deviance_at_lme4_profile_points(name):
    """No optimizer: our ML deviance at each row of lme4's profile table."""
    fx, _, P = _case(name)
    tab = _table(fx)
    ours = np.array([P.deviance(row) for row in tab[P.names].values])
    np.testing.assert_allclose(ours, fx["ml"]["deviance"] + tab[".zeta"].values ** 2,
                               rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", MODELS)
def test_profile_curve(name):
    """Our profile at lme4's points: never above lme4's (lme4's bobyqa sometimes stops
    early, e.g. with a correlation stuck at 1), and within 2e-4 deviance units where
    |zeta| <= 3 and lme4 did converge."""
    fx, _, P = _case(name)
    tab = _table(fx)
    for par, g in tab.groupby(".par", sort=False):
        z = P.zeta(par, g[par].values)
        assert list(z.columns) == [".zeta"] + P.names + [".par"]
        ours = P.base + z[".zeta"].values ** 2
        lme4 = fx["ml"]["deviance"] + g[".zeta"].values ** 2
        assert np.all(ours <= lme4 + 1e-7), par
        if name in SPLINE_OK:
            near = np.abs(g[".zeta"].values) <= 3.0
            np.testing.assert_allclose(ours[near], lme4[near], rtol=0, atol=2e-4, err_msg=par)


@pytest.mark.parametrize("name", MODELS)
def test_confint_vs_spline_free_lme4(name):
    """Variance parameters against lme4's own profiled deviance solved by uniroot."""
    fx, _, P = _case(name)
    for c in fx["confint_exact"]:
        ci = P.confint(c["level"], which=c["names"])
        ref = _ref(c)
        rtol = np.full(ref.shape, 1e-7)
        if name == "sleepstudy6_ml" and c["level"] == 0.99:
            # .sig01's profile is flat near its lower limit (slope 0.1 per unit): bobyqa's
            # 2e-5 error in zeta moves lme4's root by 2.5e-4 relative
            rtol[0, 0] = 1e-3
        bad = np.abs(ci.values - ref) > rtol * np.abs(ref) + 1e-12
        assert not bad.any(), (c["level"], ci.values[bad], ref[bad])


@pytest.mark.parametrize("name", SPLINE_OK)
def test_confint_vs_lme4(name):
    fx, _, P = _case(name)
    for key, rtol in (("confint", 5e-4), ("confint_fine", 3e-5)):
        for c in fx[key]:
            ci = P.confint(c["level"])
            assert list(ci.index) == c["names"]
            if key == "confint":
                assert list(ci.columns) == c["colnames"]
            np.testing.assert_allclose(ci.values, _ref(c), rtol=rtol, atol=1e-12,
                                       err_msg=f"{key} level {c['level']}")


def test_zeta_at_limits_is_the_cutoff():
    _, _, P = _case("sleepstudy_ml")
    for level in (0.95, 0.8):
        ci = P.confint(level)
        z = norm.ppf((1 + level) / 2)
        for name, (lo, hi) in zip(ci.index, ci.values):
            got = P.zeta(name, [lo, hi])[".zeta"].values
            np.testing.assert_allclose(got, [-z, z], rtol=0, atol=1e-8, err_msg=name)


def test_bounds():
    """An sd whose profile ends at 0 before the cut-off gets 0 (Dyestuff2, singular fit);
    a correlation whose profile stays below it up to 1 gets 1 (sleepstudy, 6 subjects)."""
    fx, _, P = _case("dyestuff2_reml")
    for c in fx["confint"]:
        ci = P.confint(c["level"])
        assert ci.loc[".sig01"].iloc[0] == 0.0 == c["lower"][0]
    fx, _, P = _case("sleepstudy6_ml")
    for c in fx["confint"]:
        ci = P.confint(c["level"])
        assert ci.loc[".sig02"].iloc[1] == 1.0 == c["upper"][1]
    assert 0.0 < P.zeta(".sig02", [1.0])[".zeta"].iloc[0] < norm.ppf(0.95)


def test_reml_fit_profiles_the_ml_deviance():
    """As lme4 (refitML), a REML fit gives the intervals of the ML fit."""
    _, m_reml, P_reml = _case("sleepstudy_reml")
    _, m_ml, P_ml = _case("sleepstudy_ml")
    assert m_reml.reml and not m_ml.reml
    assert P_reml.base == pytest.approx(P_ml.base, abs=1e-9)
    np.testing.assert_allclose(P_reml.confint().values, P_ml.confint().values, rtol=1e-8)


def test_which_and_labels():
    _, m, P = _case("sleepstudy_ml")
    full = P.confint()
    sub = P.confint(which=["Days", ".sig02"])
    assert list(sub.index) == [".sig02", "Days"]  # lme4's order, not the order asked
    np.testing.assert_allclose(sub.values, full.loc[[".sig02", "Days"]].values, rtol=1e-12)
    lab = P.confint(which=["cor_Days.(Intercept)|Subject", "sigma"])
    assert list(lab.index) == [".sig02", ".sigma"]
    assert list(P.confint(which="theta_").index) == [".sig01", ".sig02", ".sig03", ".sigma"]
    assert list(P.confint(which="beta_").index) == ["(Intercept)", "Days"]
    assert P.var_labels == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject",
                            "sd_Days|Subject", "sigma"]
    one = profile_confint(m, level=0.9, which="Days")
    np.testing.assert_allclose(one.values, P.confint(0.9, which="Days").values, rtol=1e-12)


def test_bad_arguments():
    _, m, P = _case("sleepstudy_ml")
    with pytest.raises(JaxlmmError, match=r"unknown parameter 'Dayz'.*\.sig01.*Days"):
        P.confint(which=["Dayz"])
    with pytest.raises(JaxlmmError, match="selects no parameter"):
        P.confint(which=[])
    with pytest.raises(JaxlmmError, match="parameter names"):
        P.confint(which=[3])
    for bad in (0, 1, 1.5, -0.1, float("nan"), "high", None):
        with pytest.raises(JaxlmmError, match="level must be"):
            profile_confint(m, level=bad)
    with pytest.raises(JaxlmmError, match="params must have 6 values"):
        P.deviance([1.0, 2.0])


def test_column_names_as_r():
    fx = _load("format_perc")
    for level, names in zip(fx["levels"], fx["colnames"]):
        a = (1 - level) / 2
        assert format_perc([a, 1 - a]) == names, level


def test_theta_sdcor_round_trip():
    from jaxlmm.profile import sdcor_of_theta, theta_of_sdcor

    terms = ((3, ((0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 1, 1), (4, 2, 1), (5, 2, 2))),
             (1, ((6, 0, 0),)))
    theta = np.array([1.2, -0.4, 0.3, 0.8, 0.25, 0.6, 0.0])
    phi = sdcor_of_theta(theta, 2.5, terms)
    assert phi[-1] == 2.5 and phi[6] == 0.0
    back = np.asarray(theta_of_sdcor(phi, terms, 7))
    np.testing.assert_allclose(back, theta, rtol=1e-12, atol=1e-15)
    assert math.isclose(phi[1], -0.4 / math.hypot(-0.4, 0.8), rel_tol=1e-12)
