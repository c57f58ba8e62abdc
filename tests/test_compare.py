"""Likelihood-ratio tests (jaxlmm.anova) against lme4's anova() (fixtures/anova/*.json,
written by tests/fixtures/make_anova_fixtures.R), and its refusals."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import HERE

import jaxlmm
from jaxlmm.compare import COLUMNS, format_anova
from jaxlmm.errors import JaxlmmError

CASES = ["sleepstudy_random", "sleepstudy_fixed", "sleepstudy_three", "penicillin",
         "cake_recipe"]


def _load(name):
    return json.loads((HERE / "fixtures" / "anova" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", CASES)
def test_anova_matches_lme4(name):
    fx = _load(name)
    data = jaxlmm.datasets.load(fx["dataset"])
    models = {d["name"]: jaxlmm.fit(d["formula"], data, reml=fx["reml"]) for d in fx["models"]}
    tab = jaxlmm.anova(**models)
    assert list(tab.columns) == COLUMNS
    assert list(tab.index) == fx["rows"]  # sorted by npar, as lme4
    assert tab.attrs["messages"] == (fx["messages"] or [])
    ref = fx["table"]
    np.testing.assert_array_equal(tab["npar"], ref["npar"])
    for col in ["AIC", "BIC", "logLik", "deviance"]:
        np.testing.assert_allclose(tab[col], ref[col], rtol=1e-8, atol=1e-6, err_msg=col)
    for col in ["Chisq", "Df"]:
        r = np.array([np.nan if v is None else v for v in ref[col]], float)
        np.testing.assert_allclose(tab[col], r, rtol=1e-6, atol=1e-5, err_msg=col)
    p = np.array([np.nan if v is None else v for v in ref["Pr(>Chisq)"]], float)
    np.testing.assert_allclose(tab["Pr(>Chisq)"], p, rtol=1e-5, atol=1e-12)
    text = format_anova(tab)
    assert "Models:" in text and fx["rows"][-1] in text


def test_refit_ml_is_an_ml_fit(sleepstudy):
    m = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    ml = m.refit_ml()
    direct = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, reml=False)
    assert not ml.reml and ml.refit_ml() is ml
    np.testing.assert_allclose(ml.objective, direct.objective, rtol=1e-12)
    np.testing.assert_allclose(ml.theta, direct.theta, rtol=1e-6, atol=1e-7)
    # refit with the same criterion reproduces the fit
    np.testing.assert_allclose(m.refit().objective, m.objective, rtol=1e-12)


def test_positional_names_and_order(sleepstudy):
    big = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, reml=False)
    small = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", sleepstudy, reml=False)
    tab = jaxlmm.anova(big, small)
    assert list(tab.index) == ["model2", "model1"]
    assert tab.attrs["messages"] == []
    assert list(jaxlmm.anova(big, small, names=["b", "s"]).index) == ["s", "b"]
    assert tab["Chisq"].iloc[1] > 0 and np.isnan(tab["Chisq"].iloc[0])


def test_refuses_different_data(sleepstudy):
    m1 = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    other = sleepstudy.copy()
    other["Reaction"] = other["Reaction"] * 2
    m2 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", other)
    with pytest.raises(JaxlmmError, match="different data"):
        jaxlmm.anova(m1, m2)
    m3 = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", sleepstudy.iloc[:170])
    with pytest.raises(JaxlmmError, match="180 rows.*170"):
        jaxlmm.anova(m1, m3)
    with pytest.raises(JaxlmmError, match="prior weights"):
        jaxlmm.anova(m1, jaxlmm.fit("Reaction ~ Days + (1 | Subject)", sleepstudy.assign(
            w=1.0 + sleepstudy["Days"] % 2), weights="w"))


def test_refuses_bad_calls(sleepstudy):
    m = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    with pytest.raises(JaxlmmError, match="two or more"):
        jaxlmm.anova(m=m)
    single = jaxlmm.anova(m)  # one model: its F tests, as R's anova(m)
    assert list(single.index) == ["Days"] and "F value" in single.columns
    with pytest.raises(JaxlmmError, match="not a fitted"):
        jaxlmm.anova(m, "m1")
    with pytest.raises(JaxlmmError, match="either all by position"):
        jaxlmm.anova(m, full=m)
    m0 = jaxlmm.fit("Reaction ~ 1 + (1 | Subject)", sleepstudy)
    with pytest.raises(JaxlmmError, match="not comparable"):
        jaxlmm.anova(m0, m, refit=False)
    # same fixed effects: REML criteria are comparable without a refit
    m1 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    tab = jaxlmm.anova(m, m1, refit=False)
    np.testing.assert_allclose(tab["deviance"], [m.objective, m1.objective])
    assert isinstance(tab, pd.DataFrame)
