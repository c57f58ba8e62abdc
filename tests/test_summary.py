"""lme4-style text summary (jaxlmm.summary.format_summary)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import jaxlmm
from jaxlmm.datasets import load
from jaxlmm.summary import abbreviate, format_number_vector, format_summary


@pytest.fixture(scope="module")
def sleep():
    return load("sleepstudy")


@pytest.fixture(scope="module")
def reml_fit(sleep):
    return jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleep, data_name="sleepstudy")


@pytest.fixture(scope="module")
def ml_fit(sleep):
    return jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleep, reml=False,
                      data_name="sleepstudy")


@pytest.fixture(scope="module")
def reml_text(reml_fit):
    return reml_fit.summary()


def _lines(text):
    return text.splitlines()


def _block(text, title):
    """The lines of a section, from its title to the next blank line."""
    lines = _lines(text)
    i = lines.index(title)
    out = []
    for ln in lines[i + 1:]:
        if not ln.strip():
            break
        out.append(ln)
    return out


# ---------------------------------------------------------------------------- REML sleepstudy
def test_reml_header(reml_fit, reml_text):
    lines = _lines(reml_text)
    assert lines[0] == ("Linear mixed model fit by REML. t-tests use Satterthwaite's method "
                        "['lmerModLmerTest']")
    assert reml_fit.summary(ddf="lme4").splitlines()[0] == (
        "Linear mixed model fit by REML ['lmerMod']")
    assert lines[1] == "Formula: Reaction ~ Days + (Days | Subject)"
    assert lines[2] == "   Data: sleepstudy"
    assert "REML criterion at convergence: 1743.6" in lines
    assert "AIC" not in reml_text


def test_reml_summary_is_format_summary(reml_fit, reml_text):
    assert format_summary(reml_fit) == reml_text
    assert repr(reml_fit) == reml_text


def test_reml_scaled_residuals(reml_fit, reml_text):
    head, vals = _block(reml_text, "Scaled residuals:")
    assert head.split() == ["Min", "1Q", "Median", "3Q", "Max"]
    got = [float(v) for v in vals.split()]
    want = np.quantile(reml_fit.residuals(scaled=True), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(got, [-3.9536, -0.4634, 0.0231, 0.4634, 5.1793], atol=2e-3)
    # right-aligned under the names
    assert len(head) == len(vals)


def test_reml_random_effects(reml_text):
    block = _block(reml_text, "Random effects:")
    assert block[0].split() == ["Groups", "Name", "Variance", "Std.Dev.", "Corr"]
    assert block[1].split()[:2] == ["Subject", "(Intercept)"]
    assert block[1].split()[2].startswith("612.")
    assert block[1].split()[3].startswith("24.7")
    assert block[2].split() == ["Days", "35.07", "5.922", "0.07"]
    assert block[3].split() == ["Residual", "654.94", "25.592"]
    assert block[4] == "Number of obs: 180, groups:  Subject, 18"
    # columns aligned: each header starts where its values start
    hdr = block[0]
    assert block[1].index("(Intercept)") == hdr.index("Name")
    assert block[2].index("0.07") == hdr.index("Corr")
    assert block[3].index("654.94") == hdr.index("Variance")
    assert block[3].index("25.592") == hdr.index("Std.Dev.")


def test_reml_fixed_effects(reml_fit, reml_text):
    # lme4's layout
    block = _block(reml_fit.summary(ddf="lme4"), "Fixed effects:")
    assert block[0].split() == ["Estimate", "Std.", "Error", "t", "value"]
    assert block[1].split() == ["(Intercept)", "251.405", "6.825", "36.838"]
    assert block[2].split() == ["Days", "10.467", "1.546", "6.771"]
    # right-aligned columns: all lines end at the same position
    assert len({len(ln) for ln in block}) == 1
    with pytest.raises(jaxlmm.JaxlmmError, match="ddf"):
        reml_fit.summary(ddf="Kenward-Roger")


def test_reml_fixed_effects_satterthwaite(reml_text):
    """lmerTest 3.1-3's print(summary(m)) of the same model, line by line (up to the
    trailing blanks R leaves after the stars)."""
    block = _block(reml_text, "Fixed effects:")
    assert block == [
        "            Estimate Std. Error      df t value Pr(>|t|)",
        "(Intercept)  251.405      6.825  17.000  36.838  < 2e-16 ***",
        "Days          10.467      1.546  17.000   6.771 3.26e-06 ***",
        "---",
        "Signif. codes:  0 \u2018***\u2019 0.001 \u2018**\u2019 0.01 \u2018*\u2019 0.05 "
        "\u2018.\u2019 0.1 \u2018 \u2019 1",
    ]


def test_reml_fixef_correlation(reml_text):
    block = _block(reml_text, "Correlation of Fixed Effects:")
    assert block == ["     (Intr)", "Days -0.138"]


def test_reml_optimizer_line(reml_fit, reml_text):
    last = _lines(reml_text)[-1]
    it, ev = reml_fit.optinfo["iterations"], reml_fit.optinfo["evaluations"]
    assert last.startswith(f"optimizer: projected BFGS, {it} iterations, {ev} evaluations")
    assert "max |projected gradient| = " in last
    assert "singular" not in reml_text
    assert not re.search(r"^convergence", reml_text, re.M)


class _Unconverged:
    """A fitted model made to look unconverged (refitting with max_iter=1 recompiles: slow)."""

    def __init__(self, m):
        self._m = m
        self.converged = False
        self.optinfo = dict(m.optinfo, status=1, converged=False,
                            message="maximum number of iterations reached")
        self.messages = list(m.messages)

    def __getattr__(self, name):
        return getattr(self._m, name)


def test_not_converged(reml_fit):
    text = format_summary(_Unconverged(reml_fit))
    assert re.search(r"^convergence: maximum number of iterations reached$", text, re.M)


# ---------------------------------------------------------------------------- ML
def test_ml_aic_table(ml_fit):
    text = ml_fit.summary()
    lines = _lines(text)
    assert lines[0] == ("Linear mixed model fit by maximum likelihood . t-tests use "
                        "Satterthwaite's method ['lmerModLmerTest']")
    assert ml_fit.summary(ddf=None).splitlines()[0] == (
        "Linear mixed model fit by maximum likelihood  ['lmerMod']")
    assert "REML criterion" not in text
    i = next(k for k, ln in enumerate(lines) if ln.split()[:1] == ["AIC"])
    assert lines[i].split() == ["AIC", "BIC", "logLik", "deviance", "df.resid"]
    assert lines[i + 1].split() == ["1763.9", "1783.1", "-876.0", "1751.9", "174"]
    assert len(lines[i]) == len(lines[i + 1])
    assert ml_fit.nobs - ml_fit.npar == 174


# ---------------------------------------------------------------------------- other models
@pytest.fixture(scope="module")
def singular_fit():
    return jaxlmm.fit("Yield ~ 1 + (1|Batch)", load("Dyestuff2"), data_name="Dyestuff2")


def test_singular_fit(singular_fit):
    text = singular_fit.summary()
    assert singular_fit.is_singular
    assert "boundary (singular) fit" in text
    for comp in singular_fit.singular_components:
        assert comp in text
    assert "Batch.(Intercept)" in text
    block = _block(text, "Random effects:")
    assert block[1].split() == ["Batch", "(Intercept)", "0.00", "0.000"]
    assert block[-1] == "Number of obs: 30, groups:  Batch, 6"
    # p = 1: no correlation of fixed effects
    assert "Correlation of Fixed Effects" not in text


def test_uncorrelated_terms(sleep):
    m = jaxlmm.fit("Reaction ~ Days + (Days || Subject)", sleep, data_name="sleepstudy")
    block = _block(m.summary(), "Random effects:")
    assert block[0].split() == ["Groups", "Name", "Variance", "Std.Dev."]  # no Corr column
    assert block[1].split()[:2] == ["Subject", "(Intercept)"]
    assert block[2].split()[:2] == ["Subject.1", "Days"]
    assert block[3].split()[0] == "Residual"
    assert block[4] == "Number of obs: 180, groups:  Subject, 18"


def test_two_grouping_factors():
    m = jaxlmm.fit("diameter ~ 1 + (1|plate) + (1|sample)", load("Penicillin"),
                   data_name="Penicillin")
    text = m.summary()
    block = _block(text, "Random effects:")
    assert [ln.split()[0] for ln in block[1:4]] == ["plate", "sample", "Residual"]
    assert block[-1] == "Number of obs: 144, groups:  plate, 24; sample, 6"
    assert "REML criterion at convergence: 330.9" in text
    fe = _block(text, "Fixed effects:")
    # lmerTest 3.1-3 prints: (Intercept)  22.9722     0.8086  5.4866   28.41 3.62e-07 ***
    # (lme4's optimum is less precise than ours; the df differ by 9e-5 relative)
    row = fe[1].split()
    assert row[:3] == ["(Intercept)", "22.9722", "0.8086"]
    assert abs(float(row[3]) - 5.4866) < 1e-3 and row[4:] == ["28.41", "3.62e-07", "***"]


def test_weights_and_missing_rows(sleep):
    df = sleep.copy()
    df["w"] = 1.0 + (df["Days"] % 3)
    df.loc[[3, 7], "Reaction"] = np.nan
    m = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", df, weights="w", data_name="df")
    text = m.summary()
    assert re.search(r"^Weights: ", text, re.M)
    assert "2 rows with missing values dropped" in text
    assert "Number of obs: 178, groups:  Subject, 18" in text


# ---------------------------------------------------------------------------- helpers
def test_format_number_vector_like_r():
    # format(c(612.09, 35.07166, 654.941), digits = 4)
    assert format_number_vector([612.0899, 35.07166, 654.941], 4) == ["612.09", " 35.07", "654.94"]
    assert format_number_vector([24.7404, 5.92213, 25.5918], 4) == ["24.740", " 5.922", "25.592"]
    assert format_number_vector([0.0, 13.81], 4) == [" 0.00", "13.81"]
    assert format_number_vector([1e-10, 1.0], 4) == ["1e-10", "1e+00"]
    assert format_number_vector([float("nan"), 1.5], 4) == ["NaN", "1.5"]
    assert format_number_vector([round(-0.0001, 3), 1.0], 7, nsmall=3) == ["0.000", "1.000"]


def test_abbreviate_like_r():
    assert abbreviate(["(Intercept)", "Days"], 6) == ["(Intr)", "Days"]
    assert abbreviate(["(Intercept)"], 11) == ["(Intercept)"]
    assert abbreviate(["temperature.L", "temperature.Q"], 6) == ["tmpr.L", "tmpr.Q"]
    out = abbreviate(["xaaaaaaaa1", "xaaaaaaaa2"], 3)
    assert len(set(out)) == 2
