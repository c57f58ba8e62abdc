"""R's coding of factors and interactions (rcoding.RMaterializer) against model.matrix and
lme4 (fixtures/make_coding_fixtures.R): contrasts vs indicators per term, the variables'
order within a term, column order, columns lme4 drops from a rank-deficient X."""

import json

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from conftest import ROOT
from jaxlmm.errors import DataError

FX = json.loads((ROOT / "tests/fixtures/coding/coding.json").read_text())


@pytest.fixture(scope="module")
def data():
    return pd.read_csv(ROOT / FX["dataset"])


@pytest.mark.parametrize("case", FX["fixed"], ids=[c["rhs"] for c in FX["fixed"]])
def test_fixed_coding_matches_lme4(data, case):
    m = jaxlmm.fit(f"y ~ {case['rhs']} + (1 | s)", data)
    assert list(m.fixef.index) == case["fixef_names"]
    assert list(m.frame.dropped) == case["dropped"]
    if case["dropped"]:
        assert any("rank deficient so dropping" in s for s in m.messages)
    np.testing.assert_allclose(m.fixef.values, case["fixef"], rtol=1e-5, atol=1e-6)
    assert m.objective == pytest.approx(case["reml_criterion"], abs=1e-6)


@pytest.mark.parametrize("case", FX["random"], ids=[c["formula"] for c in FX["random"]])
def test_random_term_columns_match_lme4(data, case):
    m = jaxlmm.fit(case["formula"], data)
    assert list(m.frame.terms[0].columns) == case["cnms"]


def test_single_level_factor_error_quotes_r(data):
    with pytest.raises(DataError, match=FX["single_level_error"]):
        jaxlmm.fit("y ~ x + h + (1 | s)", data.assign(h="only"))


def test_prediction_uses_the_same_coding(data):
    """A model with R-coded interactions predicts new rows with the stored coding."""
    m = jaxlmm.fit("y ~ g + f:g + (1 | s)", data)
    new = data.iloc[[5, 0, 17]].reset_index(drop=True)
    np.testing.assert_allclose(m.predict(new), m.fitted()[[5, 0, 17]], rtol=1e-12)
