"""Awkward inputs end in a correct fit, a fit with a clear message, or a clear error.

Already covered elsewhere (not repeated here):

* test_frame.py::test_dict_input, ::test_group_codes_and_levels (string, integer, float,
  boolean, categorical with unused categories, pandas string grouping columns),
  ::test_levels_absent_after_na_are_removed, ::test_missing_values_dropped (NA in the
  response, a factor and the grouping column: rows dropped with a message, as na.omit),
  ::test_quoted_names_and_index_free_positions (backtick-quoted names with spaces);
* test_frame.py::test_infinite_values (inf in the response / predictors: error naming the
  column and the rows), ::test_too_many_levels (levels >= observations, a grouping factor
  with one level, i.e. all observations in one group, as lme4's errors),
  ::test_rank_deficient_columns_dropped (collinear fixed effects dropped with a message
  naming the columns), ::test_constant_response_is_fine (the model frame accepts it);
* test_formula.py::test_errors_point_at_culprit (unbalanced parentheses, ``( | g)``, a
  grouping expression that is not a column name: the message quotes the formula and a caret
  points at the term), test_frame.py::test_unknown_function_is_formula_error.

Here: the same inputs through ``jaxlmm.fit`` (equal to a clean fit), scale equivariance,
a constant / exactly fitted response, groups of size one, a single-level factor (an error), a
random slope constant within every group, and errors raised before any JAX work.
"""

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm.errors import DataError, FormulaError

F = "Reaction ~ Days + (Days | Subject)"


def same_fit(m, ref, rtol=1e-7):
    assert m.frame.fixef_names == ref.frame.fixef_names
    np.testing.assert_allclose(m.theta, ref.theta, rtol=rtol, atol=1e-8)
    np.testing.assert_allclose(m.fixef.values, ref.fixef.values, rtol=rtol)
    np.testing.assert_allclose(m.sigma, ref.sigma, rtol=rtol)
    assert abs(m.objective - ref.objective) < 1e-7


# --------------------------------------------------------------------------
# data containers and grouping-column types give the same fit
# --------------------------------------------------------------------------


def test_dict_of_numpy_arrays(sleepstudy, sleepstudy_fit):
    data = {"Reaction": sleepstudy.Reaction.to_numpy(), "Days": sleepstudy.Days.to_numpy(),
            "Subject": sleepstudy.Subject.astype(str).to_numpy()}
    m = jaxlmm.fit(F, data)
    same_fit(m, sleepstudy_fit)
    assert m.messages == []


def test_polars_frame(sleepstudy, sleepstudy_fit):
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"Reaction": sleepstudy.Reaction.to_numpy(), "Days": sleepstudy.Days.to_numpy(),
                          "Subject": sleepstudy.Subject.astype(str).tolist()})
    m = jaxlmm.fit(F, frame)
    same_fit(m, sleepstudy_fit)
    # a polars Categorical grouping column, too
    m = jaxlmm.fit(F, frame.with_columns(pl.col("Subject").cast(pl.Categorical)))
    same_fit(m, sleepstudy_fit)
    # an Enum keeps its level order (here reversed), as an ordered pandas Categorical would
    levels = sorted(set(frame["Subject"]), reverse=True)
    m = jaxlmm.fit(F, frame.with_columns(pl.col("Subject").cast(pl.Enum(levels))))
    same_fit(m, sleepstudy_fit)
    assert m.ranef().grp.iloc[0] == levels[0]
    # nulls in the response and the grouping column drop those rows, with a message
    nulls = frame.with_columns(
        pl.when(pl.col("Days") == 3).then(None).otherwise(pl.col("Subject")).alias("Subject"),
        pl.when(pl.col("Days") == 5).then(None).otherwise(pl.col("Reaction")).alias("Reaction"))
    m = jaxlmm.fit(F, nulls)
    assert m.nobs == 144 and "36 rows with missing values dropped" in m.messages
    same_fit(m, jaxlmm.fit(F, sleepstudy[(sleepstudy.Days != 3) & (sleepstudy.Days != 5)]))
    with pytest.raises(DataError, match="LazyFrame.*collect"):
        jaxlmm.fit(F, frame.lazy())


@pytest.mark.parametrize("kind", ["string", "object", "int", "categorical_unused", "pd_string"])
def test_grouping_column_types(sleepstudy, sleepstudy_fit, kind):
    s = sleepstudy.Subject.astype(str)
    g = {
        "string": s.to_numpy(dtype=str),
        "object": s.astype(object),
        "int": s.astype(int),  # subject ids 308..372
        # unused categories are dropped, as lme4 drops unused levels
        "categorical_unused": pd.Categorical(s, categories=["999"] + sorted(set(s)) + ["zz"]),
        "pd_string": pd.array(s, dtype="string"),
    }[kind]
    m = jaxlmm.fit(F, sleepstudy.assign(Subject=g))
    same_fit(m, sleepstudy_fit)
    assert len(m.frame.terms[0].levels) == 18 and "999" not in m.frame.terms[0].levels


def test_boolean_grouping_column(sleepstudy):
    b = sleepstudy.Days.to_numpy() % 2 == 0
    m = jaxlmm.fit("Reaction ~ Days + (1 | b)", sleepstudy.assign(b=b))
    m2 = jaxlmm.fit("Reaction ~ Days + (1 | b)", sleepstudy.assign(b=np.where(b, "TRUE", "FALSE")))
    assert m.frame.terms[0].levels == ("FALSE", "TRUE")
    same_fit(m, m2)


def test_grouping_column_with_missing_values(sleepstudy):
    g = sleepstudy.Subject.astype(object).copy()
    g[[3, 50, 177]] = None
    m = jaxlmm.fit(F, sleepstudy.assign(Subject=g))
    assert m.messages == ["3 rows with missing values dropped"]
    clean = jaxlmm.fit(F, sleepstudy.drop(index=[3, 50, 177]))
    same_fit(m, clean)
    # nullable integer grouping column with <NA>
    gi = pd.array(sleepstudy.Subject.astype(int), dtype="Int64")
    gi[[3, 50, 177]] = pd.NA
    same_fit(jaxlmm.fit(F, sleepstudy.assign(Subject=gi)), clean)


def test_names_with_spaces_and_dots(sleepstudy, sleepstudy_fit):
    df = sleepstudy.rename(columns={"Reaction": "reaction time", "Days": "days.slept",
                            "Subject": "sub ject"})
    m = jaxlmm.fit("`reaction time` ~ days.slept + (days.slept | `sub ject`)", df)
    assert m.frame.fixef_names == ("(Intercept)", "days.slept")
    np.testing.assert_allclose(m.theta, sleepstudy_fit.theta, rtol=1e-7)
    np.testing.assert_allclose(m.fixef.values, sleepstudy_fit.fixef.values, rtol=1e-7)


# --------------------------------------------------------------------------
# the response
# --------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e9, 1e-9])
def test_scale_equivariance(sleepstudy, sleepstudy_fit, scale):
    """theta is unchanged, beta and sigma scale with y (within 1e-6 relative)."""
    m = jaxlmm.fit(F, sleepstudy.assign(Reaction=sleepstudy.Reaction * scale))
    np.testing.assert_allclose(m.theta, sleepstudy_fit.theta, rtol=1e-6)
    np.testing.assert_allclose(m.fixef.values, sleepstudy_fit.fixef.values * scale, rtol=1e-6)
    np.testing.assert_allclose(m.sigma, sleepstudy_fit.sigma * scale, rtol=1e-6)
    np.testing.assert_allclose(m.vcov, sleepstudy_fit.vcov * scale**2, rtol=1e-6)
    assert m.messages == []


def test_constant_response_is_an_error(sleepstudy):
    """lme4 1.1-31 ``lmer(R1 ~ Days + (Days|Subject), transform(sleepstudy, R1 = 1))`` returns
    sigma = 0 and REML criterion -Inf with 'unable to evaluate scaled gradient' warnings; we
    refuse before fitting instead of returning NaN (or failing in an eigen-solver)."""
    with pytest.raises(DataError, match=r"response 'Reaction' is constant \(every value is 1\)"):
        jaxlmm.fit(F, sleepstudy.assign(Reaction=1.0))
    with pytest.raises(DataError, match="constant"):
        jaxlmm.fit("Reaction ~ 1 + (1 | Subject)", sleepstudy.assign(Reaction=0.0))
    # a response the fixed effects reproduce exactly has the same problem
    with pytest.raises(DataError, match="fitted exactly by the fixed effects"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", sleepstudy.assign(Reaction=3 + 2 * sleepstudy.Days))
    # ... also through the array interface, with weights
    n = len(sleepstudy)
    with pytest.raises(DataError, match="constant"):
        jaxlmm.design_from_arrays(np.full(n, 2.0), np.ones((n, 1)),
                                  [("Subject", sleepstudy.Subject.to_numpy())], weights=np.arange(1.0, n + 1))


# --------------------------------------------------------------------------
# awkward group structures
# --------------------------------------------------------------------------


def test_groups_of_size_one(sleepstudy):
    """Ten singleton groups beside 17 subjects (plus one of size 2). lme4 1.1-31:
    sleepstudy <- sleepstudy; sleepstudy$g <- as.character(sleepstudy$Subject); sleepstudy$g[171:180] <- paste0("s", 1:10)
    m <- lmer(Reaction ~ Days + (1|g), sleepstudy)  # REML"""
    g = sleepstudy.Subject.astype(str).to_numpy(dtype=object)
    g[170:] = [f"s{i}" for i in range(1, 11)]
    m = jaxlmm.fit("Reaction ~ Days + (1 | g)", sleepstudy.assign(g=g))
    np.testing.assert_allclose(m.theta, [1.05689836462305], rtol=1e-5)
    np.testing.assert_allclose(m.sigma, 31.4282654652692, rtol=1e-6)
    np.testing.assert_allclose(m.fixef.values, [255.5631802036328, 10.4421973304382], rtol=1e-6)
    assert abs(m.objective - 1792.71075286867) < 1e-6
    assert m.messages == []


def test_random_slope_constant_within_groups(sleepstudy):
    """z is constant within every subject, so (z | Subject) only models a per-subject
    variance quadratic in z. lme4 1.1-31: sleepstudy$z <- as.numeric(sleepstudy$Subject);
    lmer(Reaction ~ Days + (z|Subject), sleepstudy) warns 'Model failed to converge with
    max|grad| = 0.00440254', isSingular FALSE, theta (2.0662, -0.10219, 0.0029462),
    REML criterion 1780.90497238797 (the surface is flat along theta). We must reach at
    least lme4's criterion."""
    z = pd.factorize(sleepstudy.Subject, sort=True)[0] + 1.0
    m = jaxlmm.fit("Reaction ~ Days + (z | Subject)", sleepstudy.assign(z=z))
    assert np.all(np.isfinite(m.theta)) and np.isfinite(m.sigma)
    assert m.objective <= 1780.90497238797 + 1e-6
    assert m.objective > 1780.90497238797 - 1e-3
    assert m.converged
    # BFGS (closed-form gradient) stops at theta_3 = 0, where the exact curvature is -24: a
    # saddle on the boundary 5e-5 above lme4; the fit finishes it by Newton and says so
    assert any("saddle at the boundary" in n for n in m.notes)
    assert m.theta[2] > 1e-3


def test_boundary_saddle_is_not_ok():
    """diagnostics.check: a variance at 0 with zero gradient and negative curvature is a
    saddle, not a valid boundary optimum."""
    from jaxlmm.diagnostics import BOUND_SADDLE, check

    theta, lower, g = [2.0, -0.1, 0.0], [0.0, -np.inf, 0.0], [1e-9, 1e-9, 0.0]
    H = np.diag([58.0, 10365.0, -24.0])
    rep = check(theta, lower, 1780.9, g, H, 0)
    assert not rep["ok"] and BOUND_SADDLE in rep["notes"]
    assert check(theta, lower, 1780.9, g, np.diag([58.0, 10365.0, 24.0]), 0)["ok"]


@pytest.mark.parametrize("formula", [
    "Reaction ~ Days + f + (Days | Subject)",
    "Reaction ~ 0 + f + (Days | Subject)",
    "Reaction ~ Days + Days:f + (Days | Subject)",
    "Reaction ~ Days + (0 + f | Subject)",
])
def test_single_level_factor_is_an_error(sleepstudy, formula):
    """As R ('contrasts can be applied only to factors with 2 or more levels'), whatever the
    coding; formulaic alone would give the factor no columns and fit without it."""
    with pytest.raises(DataError, match=r"factor 'f' has fewer than 2 levels .*only level is 'a'"):
        jaxlmm.fit(formula, sleepstudy.assign(f="a"))


def test_factor_left_with_one_level_after_missing_rows(sleepstudy):
    f = np.where(sleepstudy.Days < 5, "a", None)
    with pytest.raises(DataError, match="only level is 'a'.*dropped for missing values"):
        jaxlmm.fit("Reaction ~ Days + f + (Days | Subject)", sleepstudy.assign(f=f))


def test_collinear_fixed_effect_message_reaches_the_fit(sleepstudy, sleepstudy_fit):
    m = jaxlmm.fit("Reaction ~ Days + D2 + (Days | Subject)", sleepstudy.assign(D2=2 * sleepstudy.Days))
    assert m.messages == [
        "fixed-effect model matrix is rank deficient so dropping 1 column / coefficient: D2"]
    same_fit(m, sleepstudy_fit)


# --------------------------------------------------------------------------
# errors come from the host, before any JAX work
# --------------------------------------------------------------------------


@pytest.mark.parametrize("formula, error, text", [
    ("Reaction ~ Days + (Days | Subject", FormulaError, "never closed"),
    ("Reaction ~ Days + ( | Subject)", FormulaError, "nothing left of '|'"),
    ("Reaction ~ foo(Days) + (1 | Subject)", FormulaError, "foo(Days)"),
    ("Reaction ~ Days + (1 | factor(Subject))", FormulaError, "column name"),
    ("Reaction ~ Days + (1 | one)", DataError, "> 1 sampled level"),
    ("Reaction ~ Days + (1 | id)", DataError, "must be < number of observations"),
])
def test_errors_before_tracing(sleepstudy, formula, error, text, monkeypatch):
    from jaxlmm import modeldesign

    def boom(*a, **k):
        raise AssertionError("the design was built")

    monkeypatch.setattr(modeldesign, "from_frame", boom)
    df = sleepstudy.assign(one="x", id=np.arange(len(sleepstudy)))
    with pytest.raises(error) as info:
        jaxlmm.fit(formula, df)
    assert text in str(info.value)
    if error is FormulaError:
        assert formula in str(info.value)
