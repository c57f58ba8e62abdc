"""shrinkage.py: no / complete / partial pooling and the shrinkage factors.

Exact checks: b_hat_j = S_j b_np_j in every level where b_np is estimable (single, vector,
uncorrelated, crossed, crossed-vector, nested, weighted models); the scalar random-intercept
factor sigma_b^2 / (sigma_b^2 + sigma^2 / n_j); no pooling = per-level least squares of the
partial residual; partial pooling = m.coef() and lme4's coef() (tests/fixtures/predict).
Measured: identity residual <= 1e-12 of max|b_hat|, closed-form factor <= 1e-15, lme4's
coef() <= 5e-6 (relative to the column's largest value: the two optima differ).
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, fixture_data, load_fixture

import jaxlmm
from jaxlmm.errors import DataError
from jaxlmm.shrinkage import COLUMNS, complete_pooling, factor_shrinkage, shrinkage

SLEEP = "Reaction ~ Days + (Days | Subject)"


def _fit_fixture(name):
    fx = load_fixture(name)
    return jaxlmm.fit(fx["formula"], fixture_data(fx), reml=fx["reml"], weights=fx["weights"])


def _unbalanced(sleepstudy):
    """sleepstudy with unequal group sizes: subject 309 keeps 1 row, 310 keeps 2 rows with
    the same Days (collinear intercept and slope), the others lose some rows."""
    d = sleepstudy.copy()
    keep = np.ones(len(d), bool)
    subj = d["Subject"].astype(str).to_numpy()
    keep[(subj == "309") & (d["Days"] != 4)] = False
    idx310 = np.flatnonzero(subj == "310")
    keep[idx310] = False
    keep[idx310[:2]] = True
    d.loc[idx310[:2], "Days"] = 3
    for i, s in enumerate(sorted(set(subj))):
        if s not in ("309", "310"):
            keep[np.flatnonzero(subj == s)[: i % 5]] = False
    return d[keep].reset_index(drop=True)


@pytest.fixture(scope="module")
def sleep(sleepstudy):
    return jaxlmm.fit(SLEEP, sleepstudy)


@pytest.fixture(scope="module")
def sleep_unbalanced(sleepstudy):
    return jaxlmm.fit(SLEEP, _unbalanced(sleepstudy))


def _check_identity(m):
    """b_hat_j = S_j b_np_j wherever b_np_j is estimable, every factor."""
    for pos in range(len(m.design.info.factors)):
        fs = factor_shrinkage(m, pos)
        ok = ~np.isnan(fs.b_np).any(axis=1)
        assert ok.sum() >= 1
        pred = np.einsum("gij,gj->gi", fs.S[ok], fs.b_np[ok])
        scale = max(np.abs(fs.b).max(), 1e-300)
        np.testing.assert_allclose(pred, fs.b[ok], rtol=0, atol=1e-11 * scale)


@pytest.mark.parametrize("name", ["sleepstudy_reml", "sleepstudy_uncorr", "sleepstudy_weighted",
                                  "sleepstudy_factorslope", "penicillin_reml", "pastes_reml",
                                  "crossed_slopes_reml", "sleepstudy_offset"])
def test_conditional_modes_are_shrunken_no_pooling_fits(name):
    _check_identity(_fit_fixture(name))


def test_identity_with_unbalanced_and_inestimable_groups(sleep_unbalanced):
    _check_identity(sleep_unbalanced)


def test_columns_order_and_types(sleep):
    df = shrinkage(sleep)
    pd.testing.assert_frame_equal(sleep.shrinkage(), df)  # the method is a thin wrapper
    assert list(df.columns) == COLUMNS
    assert len(df) == 18 * 2
    ref = sleep.ranef()
    for c in ("grpvar", "term", "grp"):
        assert df[c].tolist() == ref[c].astype(str).tolist()
    np.testing.assert_array_equal(df["condval"].to_numpy(), ref["condval"].to_numpy())
    assert df["n"].dtype.kind == "i" and (df["n"] == 10).all()
    for c in ("population", "complete_pooling", "no_pooling", "partial_pooling", "condval",
              "shrinkage"):
        assert df[c].dtype == np.float64
    assert (df["no_pooling_note"] == "").all()
    assert (df["shrinkage"] > 0).all() and (df["shrinkage"] < 1).all()


@pytest.mark.parametrize("case", ["Dyestuff", "sleepstudy_unbalanced", "sleepstudy_weighted"])
def test_random_intercept_factor_closed_form(case, sleepstudy):
    """S_j = sigma_b^2 / (sigma_b^2 + sigma^2 / n_j), n_j the level's sum of weights."""
    if case == "Dyestuff":
        m = jaxlmm.fit("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("Dyestuff"))
        wsum = np.full(6, 5.0)
    elif case == "sleepstudy_unbalanced":
        data = _unbalanced(sleepstudy)
        m = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", data)
        wsum = data.groupby("Subject", observed=True).size().to_numpy(float)
    else:
        data = pd.read_csv(ROOT / "tests/fixtures/data/sleepstudy_weighted.csv")
        m = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", data, weights="w")
        wsum = data.groupby("Subject")["w"].sum().to_numpy()
    vc = m.varcorr
    sb2, s2 = vc["vcov"].iloc[0], vc["vcov"].iloc[-1]
    df = shrinkage(m)
    np.testing.assert_allclose(df["shrinkage"].to_numpy(), sb2 / (sb2 + s2 / wsum),
                               rtol=1e-10, atol=0)
    if case == "Dyestuff":  # the same with lme4's variance components
        fx = load_fixture("dyestuff_reml")
        sb2, s2 = fx["varcorr"][0]["vcov"], fx["varcorr"][1]["vcov"]
        np.testing.assert_allclose(df["shrinkage"].to_numpy(), sb2 / (sb2 + s2 / wsum),
                                   rtol=1e-6)


def test_no_pooling_is_per_subject_least_squares(sleep_unbalanced):
    m = sleep_unbalanced
    fr = m.frame
    df = shrinkage(m)
    r = fr.y - fr.X @ m.fixef.to_numpy()  # one factor: the partial residual
    f = m.design.info.factors[0]
    icpt = df[df.term == "(Intercept)"].reset_index(drop=True)
    slope = df[df.term == "Days"].reset_index(drop=True)
    for j, lev in enumerate(f.levels):
        rows = f.codes == j
        Zj = fr.X[rows]  # [1, Days]
        assert icpt.loc[j, "grp"] == lev and icpt.loc[j, "n"] == rows.sum()
        if rows.sum() < 2 or np.ptp(Zj[:, 1]) == 0:
            assert np.isnan(icpt.loc[j, "no_pooling"]) and np.isnan(slope.loc[j, "no_pooling"])
            want = ("1 row for 2 coefficients" if rows.sum() == 1
                    else "Z columns collinear within the group")
            assert icpt.loc[j, "no_pooling_note"] == want == slope.loc[j, "no_pooling_note"]
            continue
        coef, *_ = np.linalg.lstsq(Zj, r[rows], rcond=None)
        got = np.array([icpt.loc[j, "no_pooling"], slope.loc[j, "no_pooling"]])
        np.testing.assert_allclose(got - m.fixef.to_numpy(), coef, rtol=1e-10,
                                   atol=1e-10 * np.abs(coef).max())
    notes = set(icpt["no_pooling_note"])
    assert notes == {"", "1 row for 2 coefficients", "Z columns collinear within the group"}


def test_complete_pooling_is_ordinary_least_squares(sleepstudy):
    data = pd.read_csv(ROOT / "tests/fixtures/data/sleepstudy_weighted.csv")
    m = jaxlmm.fit(SLEEP, data, weights="w")
    x, y, w = data["Days"].to_numpy(), data["Reaction"].to_numpy(), data["w"].to_numpy()
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    slope = np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2)
    np.testing.assert_allclose(complete_pooling(m).to_numpy(), [ym - slope * xm, slope],
                               rtol=1e-12)
    df = shrinkage(m)
    assert (df.loc[df.term == "Days", "complete_pooling"] == complete_pooling(m)["Days"]).all()


@pytest.mark.parametrize("name", ["sleepstudy_reml", "penicillin_reml", "pastes_reml",
                                  "sleepstudy_factorslope"])
def test_partial_pooling_is_coef(name):
    m = _fit_fixture(name)
    df = shrinkage(m)
    lme4 = json.loads((ROOT / "tests/fixtures/predict" / f"{name}.json").read_text())["coef"]
    assert list(lme4) == list(df["grpvar"].unique())
    for g, tab in m.coef().items():
        sub = df[df.grpvar == g]
        ref = lme4[g]
        for c in sub["term"].unique():
            part = sub[sub.term == c]
            assert part["grp"].tolist() == list(tab.index.astype(str)) == ref["levels"]
            np.testing.assert_allclose(part["partial_pooling"].to_numpy(), tab[c].to_numpy(),
                                       rtol=1e-13, atol=0)
            want = np.asarray(ref["rows"], float)[:, ref["columns"].index(c)]
            # lme4's optimum differs slightly: relative, or relative to the column's largest
            np.testing.assert_allclose(part["partial_pooling"].to_numpy(), want, rtol=1e-6,
                                       atol=2e-6 * np.abs(want).max())
            pop = float(m.fixef.get(c, 0.0))
            assert (part["population"] == pop).all()


def test_group_selection_and_bad_group():
    m = _fit_fixture("pastes_reml")
    full = shrinkage(m)
    assert full["grpvar"].unique().tolist() == ["cask:batch", "batch"]
    one = shrinkage(m, group="batch")
    assert one["grpvar"].unique().tolist() == ["batch"] and len(one) == 10
    pd.testing.assert_frame_equal(one, full[full.grpvar == "batch"].reset_index(drop=True))
    with pytest.raises(DataError, match="'cask'.*cask:batch"):
        shrinkage(m, group="cask")


def test_singular_fit_gives_zero_shrinkage():
    """Dyestuff2 (theta = 0): S_j = 0, finite; the modes are 0."""
    m = jaxlmm.fit("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("Dyestuff2"))
    df = shrinkage(m)
    assert np.all(np.isfinite(df["shrinkage"])) and np.all(np.abs(df["shrinkage"]) < 1e-8)
    assert np.all(np.isfinite(df["no_pooling"]))
