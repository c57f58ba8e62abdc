"""The LinearMixedModel methods that expose inference and prediction (thin wrappers over
satterthwaite, profile, bootstrap, simulate, predict): same results as the modules, and
confint's dispatch and errors."""

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import satterthwaite
from jaxlmm.errors import JaxlmmError
from jaxlmm.predict import coef, predict
from jaxlmm.profile import profile_confint
from jaxlmm.simulate import simulate

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def m(sleepstudy):
    return jaxlmm.fit(FORMULA, sleepstudy)


def test_methods_equal_module_functions(m):
    pd.testing.assert_frame_equal(m.coef_table(), satterthwaite.coef_table(m))
    pd.testing.assert_frame_equal(m.anova(), satterthwaite.anova(m))
    pd.testing.assert_frame_equal(m.contrast({"Days": 1}), satterthwaite.contrast(m, {"Days": 1}))
    pd.testing.assert_frame_equal(m.confint(method="Wald"), satterthwaite.wald_confint(m))
    pd.testing.assert_frame_equal(m.confint(), profile_confint(m))
    np.testing.assert_array_equal(m.simulate(3, seed=2), simulate(m, 3, seed=2))
    np.testing.assert_array_equal(m.predict(), predict(m))
    pd.testing.assert_frame_equal(m.coef()["Subject"], coef(m)["Subject"])


def test_confint_methods_and_errors(m):
    assert m.profile() is m.profile()  # computed once
    prof = m.confint(level=0.9, parm=[".sigma", "Days"])
    assert list(prof.index) == [".sigma", "Days"] and list(prof.columns) == ["5 %", "95 %"]
    wald = m.confint(method="wald", parm="Days")
    assert list(wald.index) == ["Days"]
    boot = m.confint(method="boot", nsim=50, seed=3)
    assert list(boot.index) == [".sig01", ".sig02", ".sig03", ".sigma", "(Intercept)", "Days"]
    assert list(boot.columns) == ["2.5 %", "97.5 %"]
    assert (boot["2.5 %"] < boot["97.5 %"]).all()
    with pytest.raises(JaxlmmError, match="method must be one of"):
        m.confint(method="kenward")
    with pytest.raises(JaxlmmError, match="unknown parameter"):
        m.confint(method="Wald", parm="Dayz")
    with pytest.raises(JaxlmmError, match="unexpected options"):
        m.confint(method="profile", nsim=10)


def test_bootstrap_method(m):
    b = m.bootstrap(20, seed=4)
    assert b.replicates.shape[0] == 20 and b.status_counts
    assert np.isfinite(b.confint()["lower"]).all()
