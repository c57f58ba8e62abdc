"""Numerical edge cases: boundary (singular) fits and what still works after them, starting
values that overflow the factorization or sit on the criterion's far plateau, a fit that runs
out of iterations, the optimizer backing off from non-finite trial points; and, case by
case, lme4's outcome on the same input (fixtures/make_robustness_fixtures.R)."""

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from conftest import ROOT
from jaxlmm.errors import DataError
from jaxlmm.optimize import minimize

_FX = json.loads((ROOT / "tests/fixtures/robustness/lme4_outcomes.json").read_text())
LME4 = {c["name"]: c for c in _FX["cases"]}
F = "Reaction ~ Days + (Days | Subject)"


# --------------------------------------------------------------------------
# boundary fits: flagged, named, and everything downstream still works
# --------------------------------------------------------------------------


def _downstream(m, newdata):
    """summary, ranef, predict (incl. a new level), confint by profile: finite and sane."""
    text = m.summary()
    assert "boundary (singular) fit" in text
    re = m.ranef()
    assert np.all(np.isfinite(re.condval)) and np.all(np.isfinite(re.condsd))
    p = m.predict(newdata)
    assert np.all(np.isfinite(p))
    ci = m.confint()
    assert np.all(np.isfinite(ci.to_numpy()))
    return ci


def test_variance_at_zero(sleepstudy):
    """Dyestuff2: lme4 puts the batch variance at 0 and says 'boundary (singular) fit'."""
    lme4 = LME4["singular_variance"]
    m = jaxlmm.fit("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("Dyestuff2"))
    assert m.theta[0] == 0.0 and m.is_singular
    assert m.singular_components == ["Batch.(Intercept)"]
    assert any("variance component(s) at zero: Batch.(Intercept)" in s for s in m.messages)
    assert m.sigma == pytest.approx(lme4["sigma"], rel=1e-7)
    assert m.objective == pytest.approx(lme4["reml_criterion"], abs=1e-7)
    assert m.converged and m.diagnostics["ok"]
    new = pd.DataFrame({"Batch": ["A", "Z"]})
    ci = _downstream(m, new)
    np.testing.assert_array_equal(m.ranef().condval, 0.0)  # no shrinkage left to do
    assert ci.loc[".sig01"].iloc[0] == 0.0  # the profile interval starts at the boundary


def test_correlation_at_minus_one():
    """Intercepts and slopes simulated perfectly correlated: lme4 lands on correlation -1
    (theta_3 = 0); so must we, at a criterion no worse than lme4's."""
    lme4 = LME4["correlation_boundary"]
    data = pd.read_csv(ROOT / "tests/fixtures/data/robust_corr.csv")
    m = jaxlmm.fit("y ~ x + (x | g)", data)
    assert m.objective <= lme4["reml_criterion"] + 1e-7
    assert m.objective == pytest.approx(lme4["reml_criterion"], abs=1e-5)
    np.testing.assert_allclose(m.theta, lme4["theta"], rtol=1e-4, atol=1e-5)
    assert m.is_singular and m.singular_components == ["g.x"]
    corr = m.varcorr.query("var2 == var2")  # the correlation row
    assert corr.sdcor.iloc[0] == pytest.approx(-1.0, abs=1e-12)
    assert m.converged and m.diagnostics["ok"]
    with pytest.warns(UserWarning, match="inner optimization"):  # one far bracketing point
        ci = _downstream(m, pd.DataFrame({"x": [0.0, 2.0], "g": ["g01", "new"]}))
    ref = _FX["correlation_boundary_confint"]
    assert list(ci.index) == ref["names"]
    lo, hi = ci.to_numpy().T
    # lower limits, and the upper limits of sigma and the fixed effects, as lme4 (up to its
    # spline); .sig03's lower limit: lme4 0.060936, brute force 0.061169 (deviance 3.84146
    # there, 3.8503 at lme4's), ours 0.061169
    np.testing.assert_allclose(lo[[0, 1, 3, 4, 5]], np.array(ref["lower"])[[0, 1, 3, 4, 5]],
                               rtol=1e-5)
    assert lo[2] == pytest.approx(0.0611686, abs=1e-6)
    np.testing.assert_allclose(hi[3:], ref["upper"][3:], rtol=1e-5)
    # the sds' upper limits: lme4 3.02995 / 0.56049; brute-force profiling (Nelder-Mead,
    # many starts) puts the cut-off at 3.0300 / 0.56002. Before free correlations stuck at
    # -1 were handled (profile._off_the_corner) these were 2.67 / 0.503
    assert hi[0] == pytest.approx(ref["upper"][0], rel=1e-4)
    assert hi[2] == pytest.approx(0.56002, abs=2e-5)
    # the correlation: lme4 says [-1, 1]; the profiled deviance reaches the chi-square
    # cut-off 3.8415 at -0.677 (brute force: 3.8419 there, 6.42 from 0 to 1), so ours ends
    # there
    assert lo[1] == -1.0 and hi[1] == pytest.approx(-0.677062, abs=1e-5)
    z = m.profile().zeta(".sig02", [hi[1]])[".zeta"].iloc[0]
    assert z == pytest.approx(1.959964, abs=1e-6)


# --------------------------------------------------------------------------
# starting values
# --------------------------------------------------------------------------


@pytest.mark.parametrize("start, text", [
    ([np.nan, 0, 1], r"start must be finite; got Subject.\(Intercept\) = nan"),
    ([1, 0, np.inf], r"Subject.Days = inf"),
    ([-1, 0, 1], r"below the lower bound 0 .*Subject.\(Intercept\) = -1"),
    ([1, 0], r"must have 3 elements"),
    ("one", r"must be 3 numbers"),
])
def test_bad_start_is_an_error_before_fitting(sleepstudy, start, text):
    with pytest.raises(ValueError, match=text):
        jaxlmm.fit(F, sleepstudy, start=start)


def test_start_that_overflows_the_factorization(sleepstudy, sleepstudy_fit):
    """theta = 1e9 makes the criterion non-finite at the start: refitted from the default
    start, with a note (never NaN estimates)."""
    m = jaxlmm.fit(F, sleepstudy, start=[1e9, 0, 1e9])
    assert m.converged and m.objective == pytest.approx(sleepstudy_fit.objective, abs=1e-8)
    assert any("not finite at the given start" in s for s in m.messages)
    np.testing.assert_allclose(m.theta, sleepstudy_fit.theta, rtol=1e-5)


@pytest.mark.parametrize("hessian", ["bfgs", "exact"])
def test_far_start_reaches_the_optimum(sleepstudy, sleepstudy_fit, hessian):
    m = jaxlmm.fit(F, sleepstudy, start=[1e3, 0, 1e-3], hessian=hessian)
    assert m.converged and m.objective == pytest.approx(sleepstudy_fit.objective, abs=1e-7)


def test_start_on_the_plateau_is_not_called_converged(sleepstudy, sleepstudy_fit):
    """As theta -> infinity the criterion flattens towards a limit; at theta_1 = 1e20 every
    gradient is ~1e-19. The fit must not report convergence there (the gradient test is
    scaled by |theta|), and must say what to try."""
    m = jaxlmm.fit(F, sleepstudy, start=[1e20, 0, 1e-3])
    assert not m.converged and m.optinfo["status"] == 1
    assert m.objective > sleepstudy_fit.objective + 100
    assert any("try the default start" in s for s in m.messages)


def test_extreme_response_scale_is_an_error(sleepstudy):
    with pytest.raises(DataError, match=r"not finite at the start .*largest \|response\| \d\.\d+e\+202"):
        jaxlmm.fit(F, sleepstudy.assign(Reaction=sleepstudy.Reaction * 1e200))


# --------------------------------------------------------------------------
# the iteration budget
# --------------------------------------------------------------------------


def test_iteration_budget_reported(sleepstudy, sleepstudy_fit):
    """lme4 with maxeval = 5 warns (convergence code 5, NLOPT_MAXEVAL_REACHED) and returns
    its estimates; here: a result with converged False, status 1 and what to try."""
    assert any("MAXEVAL_REACHED" in w for w in LME4["iteration_budget"]["warnings"])
    m = jaxlmm.fit(F, sleepstudy, max_iter=2)
    assert not m.converged and m.optinfo["status"] == 1 and m.optinfo["iterations"] == 2
    assert m.objective > sleepstudy_fit.objective
    msg = [s for s in m.messages if s.startswith("convergence:")]
    assert msg and "maximum number of iterations" in msg[0] and "max_iter=1000" in msg[0]
    assert "maximum number of iterations" in m.summary()
    assert m.to_dict()["converged"] is False
    m2 = jaxlmm.fit(F, sleepstudy, start=m.theta)  # continues from where it stopped
    assert m2.converged and m2.objective == pytest.approx(sleepstudy_fit.objective, abs=1e-8)


# --------------------------------------------------------------------------
# the optimizer backs off from non-finite trial points
# --------------------------------------------------------------------------


def test_optimizer_backs_off_from_nan():
    """f(x) = sum sqrt(1 + (x - 1.9)^2) is NaN for any x_i > 2.5. The Newton step from
    x = 0 is 1.9 (1 + 1.9^2) = 8.76 (into the NaN region): the line search halves it until
    the criterion is finite and decreases, and the fit converges to 1.9."""
    def f(x):
        v = jnp.sum(jnp.sqrt(1.0 + (x - 1.9) ** 2))
        return jnp.where(jnp.all(x <= 2.5), v, jnp.nan)

    for exact in (True, False):
        r = minimize(f, jnp.zeros(2), jnp.array([0.0, -jnp.inf]), exact_hessian=exact)
        assert int(r.status) == 0 and np.isfinite(float(r.fun))
        np.testing.assert_allclose(np.asarray(r.theta), 1.9, atol=1e-6)
        assert int(r.evaluations) > int(r.iterations)  # back-tracking happened


# --------------------------------------------------------------------------
# lme4's outcome vs ours, case by case (the table in docs/robustness.md)
# --------------------------------------------------------------------------


def _data(sleepstudy, name):
    d = sleepstudy.copy()
    if name == "inf_response":
        d.loc[0, "Reaction"] = np.inf
    elif name == "single_level_factor":
        d["f"] = "a"
    elif name == "levels_ge_observations":
        d["obs"] = np.arange(len(d)).astype(str)
    elif name == "one_group":
        d["one"] = "all"
    elif name == "missing_group_values":
        d["Subject"] = d.Subject.astype(object)
        d.loc[:2, "Subject"] = None
    return d


ERRORS = {  # lme4 errors; so do we, with our own words for the same problem
    "inf_response": ("Reaction ~ Days + (Days | Subject)", r"non-finite|inf"),
    "single_level_factor": ("Reaction ~ Days + f + (Days | Subject)", "fewer than 2 levels"),
    "levels_ge_observations": ("Reaction ~ Days + (1 | obs)", "obs"),
    "one_group": ("Reaction ~ Days + (1 | one)", "one"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_lme4_errors_are_errors_here(sleepstudy, name):
    assert LME4[name]["outcome"] == "error"
    formula, text = ERRORS[name]
    with pytest.raises(DataError, match=text) as err:
        jaxlmm.fit(formula, _data(sleepstudy, name))
    if name in ("levels_ge_observations", "one_group"):  # lme4's own words
        assert LME4[name]["error"].split(" (problems")[0] in str(err.value)


def test_missing_group_values_as_lme4(sleepstudy):
    """Rows with a missing Subject are dropped (na.omit) before fitting, as lme4 does. lme4
    warns that it did not converge (max|grad| 0.0033); our criterion is lower and theta
    within 1e-3."""
    lme4 = LME4["missing_group_values"]
    assert any("failed to converge" in w for w in lme4["warnings"])
    m = jaxlmm.fit(F, _data(sleepstudy, "missing_group_values"))
    assert m.nobs == 177 and "3 rows with missing values dropped" in m.messages
    assert m.converged and m.objective <= lme4["reml_criterion"]
    assert m.objective == pytest.approx(lme4["reml_criterion"], abs=1e-4)
    np.testing.assert_allclose(m.theta, lme4["theta"], rtol=1e-3)


def test_diagnostics_survive_non_finite_derivatives():
    """The check at an end point where the derivatives are not finite says so (it used to
    fail inside numpy's eigen-solver)."""
    from jaxlmm.diagnostics import NON_FINITE, check

    d = check([1.0, 0.0, 1.0], [0.0, -np.inf, 0.0], 10.0, [np.nan, 0.0, 0.0],
              np.full((3, 3), np.nan), status=2)
    assert d["ok"] is False and d["notes"] == [NON_FINITE]
    assert d["free"] == [False, True, False] and d["what_to_try"]
