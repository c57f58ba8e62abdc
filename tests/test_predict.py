"""predict(), coef() and prediction intervals against real lme4 1.1-31 and a dense reference.

Fixtures: tests/fixtures/make_predict_fixtures.R wrote tests/fixtures/predict/*.json
(lme4's predict() on the fit rows and on new data with new levels and missing values,
re.form = NA, re.form = ~(1 | g), coef(), sqrt(diag(X_new vcov X_new'))).

Tolerances: solved at lme4's theta (no optimizer) everything agrees to rounding, checked at
1e-9 relative; with our own optimum (theta within ~1e-6 of lme4's) at 1e-6 relative.
Intervals have no lme4 counterpart for the random part; they are checked against a dense
computation of the BLUP as a linear smoother of y (prediction error variance
h'Vh - 2h'ZGz + z'Gz), independent of the mixed-model-equations formula the module uses.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import HERE, ROOT

import jaxlmm
from jaxlmm import predict as P
from jaxlmm.frame import new_rows
from jaxlmm.predict import coef, predict

NAMES = ["sleepstudy_reml", "sleepstudy_uncorr", "sleepstudy_transform", "sleepstudy_offset",
         "sleepstudy_factorslope", "pastes_reml", "penicillin_reml", "cake_temp", "cake_ordered"]


def _load(name):
    fx = json.loads((HERE / "fixtures" / "predict" / f"{name}.json").read_text())
    ds = fx["dataset"]
    data = pd.read_csv(ROOT / ds) if ds.endswith(".csv") else jaxlmm.datasets.load(ds)
    cols = {}
    for k, vs in fx["newdata"].items():
        numeric = all(v is None or isinstance(v, (int, float)) for v in vs)
        cols[k] = [np.nan if v is None else v for v in vs] if numeric else vs
    return fx, data, pd.DataFrame(cols)


@pytest.fixture(scope="module", params=NAMES)
def case(request):
    fx, data, nd = _load(request.param)
    at_theta = jaxlmm.fit(fx["formula"], data, start=fx["theta"], max_iter=0)
    return fx, data, nd, at_theta


def _ref(values):
    return np.array([np.nan if v is None else v for v in values], float)


def _close(ours, ref, rtol):
    ours, ref = np.asarray(ours, float), _ref(ref)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=0, equal_nan=True)


def _check_predictions(fx, m, nd, rtol):
    _close(predict(m), fx["fitted"], rtol)
    _close(predict(m, re=False), fx["fitted_fixed"], rtol)
    _close(predict(m, nd), fx["predict_new"], rtol)
    _close(predict(m, nd, re=False), fx["predict_new_fixed"], rtol)
    if "partial_groups" in fx:
        _close(predict(m, nd, re=fx["partial_groups"]), fx["predict_new_partial"], rtol)


def _check_coef(fx, m, rtol, col_tol=0.0):
    """coef(m) vs lme4's: names and order exact; values within ``rtol`` relative, or within
    ``col_tol`` times the column's largest magnitude (for entries near zero)."""
    ours = coef(m)
    assert list(ours) == list(fx["coef"])  # factors in lme4's order
    for g, ref in fx["coef"].items():
        df = ours[g]
        assert list(df.columns) == ref["columns"]  # lme4's column order
        assert list(df.index) == ref["levels"]
        ref = np.array(ref["rows"])
        tol = rtol * np.abs(ref) + col_tol * np.max(np.abs(ref), axis=0)
        assert np.all(np.abs(df.to_numpy() - ref) <= tol), np.max(np.abs(df.to_numpy() - ref))


def test_predict_at_lme4_theta(case):
    fx, _, nd, m = case
    _check_predictions(fx, m, nd, 1e-9)


def test_coef_at_lme4_theta(case):
    fx, _, _, m = case
    _check_coef(fx, m, 1e-9)


@pytest.mark.parametrize("name", ["sleepstudy_reml", "sleepstudy_factorslope", "pastes_reml",
                                  "penicillin_reml", "cake_ordered"])
def test_full_fit_matches_lme4(name):
    """Our own optimum: predictions within 1e-6 relative of lme4's; coef within 1e-6
    relative or 2e-6 of the column's scale. On sleepstudy_reml lme4's theta is 9e-6
    (relative) from ours and its REML criterion 1.5e-9 higher, which moves the smallest
    Days slopes (1.85) by 2e-5 (1.2e-6 of the column's scale); predictions move by 7.5e-7."""
    fx, data, nd = _load(name)
    m = jaxlmm.fit(fx["formula"], data)
    _check_predictions(fx, m, nd, 1e-6)
    _check_coef(fx, m, 1e-6, col_tol=2e-6)


def test_newdata_none_is_fitted(case):
    _, _, _, m = case
    np.testing.assert_allclose(predict(m), m.fitted(), rtol=1e-13)


def test_confidence_se_of_fixed_part_matches_lme4(case):
    """re=False: se = sqrt(x' vcov x), checked against lme4's vcov applied to lme4's X_new."""
    fx, _, nd, m = case
    ci = predict(m, nd, re=False, interval="confidence")
    ok = ~np.isnan(ci["fit"].to_numpy())  # a missing offset makes fit (and se) NaN
    np.testing.assert_allclose(ci["se"].to_numpy()[ok], _ref(fx["se_new_fixed"])[ok], rtol=1e-8)
    np.testing.assert_array_equal(ci.index, nd.index)


# ------------------------------------------------------------------ errors and missing values


def test_new_levels_error_like_lme4(case):
    """allow_new_levels=False: DataError naming the factor and lme4's new levels."""
    fx, _, nd, m = case
    groups = {v for t in m.frame.terms for v in t.group.split(":")}
    complete = nd.dropna(subset=[c for c in nd.columns if c in groups])
    with pytest.raises(jaxlmm.DataError, match="new levels of grouping factors") as err:
        predict(m, complete, allow_new_levels=False)
    lme4_levels = fx["new_levels_error"].split(": ", 1)[1].split(", ")
    for lev in lme4_levels:
        assert lev in str(err.value)
    # the rows with known levels predict as lme4 does
    known = np.array([all(c >= 0 for c in _codes(m, complete, i)) for i in range(len(complete))])
    pos = np.flatnonzero(nd.index.isin(complete.index[known]))
    np.testing.assert_allclose(predict(m, complete[known], allow_new_levels=False),
                               _ref(fx["predict_new"])[pos], rtol=1e-9)


def _codes(m, nd, i):
    rows = new_rows(m.frame, nd, fixed=False, groups=range(len(m.frame.terms)))
    return [rows.codes[t][i] for t in rows.codes]


@pytest.fixture(scope="module")
def sleep():
    ss = jaxlmm.datasets.load("sleepstudy")
    return ss, jaxlmm.fit("Reaction ~ Days + (Days | Subject)", ss)


def test_missing_grouping_value(sleep):
    """lme4: NA grouping values are new levels (population prediction), or an error."""
    _, m = sleep
    nd = pd.DataFrame({"Days": [3.0, 3.0], "Subject": [None, "999"]})
    got = predict(m, nd)
    np.testing.assert_allclose(got, m.fixef["(Intercept)"] + 3 * m.fixef["Days"], rtol=1e-13)
    with pytest.raises(jaxlmm.DataError, match="'Subject' is missing in newdata rows"):
        predict(m, nd, allow_new_levels=False)


def test_missing_predictor_gives_nan():
    cake = jaxlmm.datasets.load("cake")
    m = jaxlmm.fit("angle ~ recipe + temp + (1 | recipe:replicate)", cake, start=[0.5],
                   max_iter=0)
    nd = pd.DataFrame({"recipe": ["A", None, "B"], "temp": [200.0, 210.0, np.nan],
                       "replicate": ["1", "2", "3"]})
    got = predict(m, nd)
    assert np.isfinite(got[0]) and np.isnan(got[1:]).all()
    ci = predict(m, nd, interval="prediction")
    assert np.isfinite(ci.iloc[0]).all() and ci.iloc[1:].isna().all().all()


def test_unknown_level_of_fixed_factor():
    cake = jaxlmm.datasets.load("cake")
    for formula, col, nd in [
        ("angle ~ recipe + temp + (1 | recipe:replicate)", "recipe",
         {"recipe": ["A", "D"], "temp": [200.0, 210.0], "replicate": ["1", "2"]}),
        ("angle ~ recipe + temperature + (1 | recipe:replicate)", "temperature",
         {"recipe": ["A"], "temperature": ["176"], "replicate": ["1"]}),
        ("angle ~ factor(temp) + (1 | recipe:replicate)", "temp",
         {"recipe": ["A"], "temp": [176.0], "replicate": ["1"]}),
    ]:
        m = jaxlmm.fit(formula, cake, start=[0.5], max_iter=0)
        bad = "D" if col == "recipe" else "176"
        with pytest.raises(jaxlmm.DataError, match=f"column '{col}'.*level '{bad}' not seen"):
            predict(m, pd.DataFrame(nd))
        with pytest.raises(jaxlmm.DataError, match=f"level '{bad}' not seen"):
            predict(m, pd.DataFrame(nd), re=False)


def test_missing_columns(sleep):
    ss, m = sleep
    with pytest.raises(jaxlmm.DataError, match="column 'Days' .*not found"):
        predict(m, pd.DataFrame({"Subject": ["308"]}))
    with pytest.raises(jaxlmm.DataError, match="column 'Subject' .*not found"):
        predict(m, pd.DataFrame({"Days": [1.0]}))
    # the population prediction needs no grouping column
    np.testing.assert_allclose(predict(m, pd.DataFrame({"Days": [1.0]}), re=False),
                               [m.fixef.sum()], rtol=1e-13)


def test_bad_arguments(sleep):
    ss, m = sleep
    with pytest.raises(jaxlmm.DataError, match="not in the model.*'Subject'"):
        predict(m, ss, re=["Subj"])
    with pytest.raises(TypeError, match="re must be"):
        predict(m, ss, re=None)
    with pytest.raises(ValueError, match="interval must be"):
        predict(m, ss, interval="credible")
    with pytest.raises(ValueError, match="level must be"):
        predict(m, ss, interval="prediction", level=95)
    np.testing.assert_allclose(predict(m, ss, re=["Subject"]), predict(m, ss), rtol=1e-13)


def test_fit_level_offset(sleep):
    ss, _ = sleep
    ss = ss.assign(o=2.0 * ss["Days"])
    by_name = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", ss, offset="o")
    np.testing.assert_allclose(predict(by_name, ss), by_name.fitted(), rtol=1e-13)
    by_array = jaxlmm.fit("Reaction ~ Days + (1 | Subject)", ss, offset=ss["o"].to_numpy())
    with pytest.raises(jaxlmm.DataError, match="offset array"):
        predict(by_array, ss)
    np.testing.assert_allclose(predict(by_array, ss, offset=ss["o"].to_numpy()),
                               by_array.fitted(), rtol=1e-13)
    np.testing.assert_allclose(predict(by_array, ss, offset="o"), by_array.fitted(), rtol=1e-13)


# ------------------------------------------------------------------ intervals


def _dense_reference(m, newdata, kept_groups):
    """fit, confidence and prediction variances from dense V, with the BLUP written as a
    linear smoother h'y: PEV = h'Vh - 2 h'ZGz + z'Gz (+ z'Gz for new or left-out factors)."""
    d, info = m.design, m.design.info
    T = P._templates(m)
    s2 = m.sigma ** 2
    n = d.n
    offs, blocks = [0], []
    for f in info.factors:
        Zk = np.zeros((n, f.nlevels * f.q))
        for k in range(f.q):
            Zk[np.arange(n), f.codes * f.q + k] = f.Z[:, k]
        blocks.append(Zk)
        offs.append(offs[-1] + f.nlevels * f.q)
    Z = np.hstack(blocks)
    G = np.zeros((offs[-1], offs[-1]))
    for pos, f in enumerate(info.factors):
        G[offs[pos]:offs[pos + 1], offs[pos]:offs[pos + 1]] = np.kron(
            np.eye(f.nlevels), s2 * T[pos] @ T[pos].T)
    w = np.ones(n) if d.weights is None else np.asarray(d.weights)
    X = np.asarray(d.X)
    y = np.asarray(d.y) - (0 if d.offset is None else np.asarray(d.offset))
    V = Z @ G @ Z.T + s2 * np.diag(1 / w)
    Vi = np.linalg.inv(V)
    Mb = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)  # beta_hat = Mb y
    Bb = G @ Z.T @ Vi @ (np.eye(n) - X @ Mb)  # b_hat = Bb y
    kept = [pos for pos, f in enumerate(info.factors) if f.group in kept_groups]
    rows = new_rows(m.frame, newdata, terms=range(len(m.frame.terms)),
                    groups=[info.factors[pos].terms[0] for pos in kept])
    zk = np.zeros((rows.n, offs[-1]))
    extra_conf, extra_pred = np.zeros(rows.n), np.zeros(rows.n)
    for pos, f in enumerate(info.factors):
        zf = np.hstack([rows.Z[t] for t in f.terms])
        unc = np.einsum("ia,ab,ib->i", zf, s2 * T[pos] @ T[pos].T, zf)
        if pos in kept:
            c = rows.codes[f.terms[0]]
            for i in np.flatnonzero(c >= 0):
                zk[i, offs[pos] + c[i] * f.q: offs[pos] + (c[i] + 1) * f.q] = zf[i]
            extra_conf[c < 0] += unc[c < 0]
        else:
            extra_pred += unc
    H = rows.X @ Mb + zk @ Bb
    fit = H @ y + (0 if rows.offset is None else rows.offset)
    pev = (np.einsum("ij,jk,ik->i", H, V, H) - 2 * np.einsum("ij,jk,ik->i", H, Z @ G, zk)
           + np.einsum("ij,jk,ik->i", zk, G, zk))
    conf = pev + extra_conf
    return fit, conf, conf + extra_pred + s2


def _pastes_weighted():
    d = jaxlmm.datasets.load("Pastes")
    return d.assign(w=1.0 + (np.arange(len(d)) % 3) / 2)


SS_NEW = pd.DataFrame({"Days": [0.0, 2.5, 10.0, 4.0, 3.0],
                       "Subject": ["308", "308", "372", "400", None]})
PASTES_NEW = pd.DataFrame({"batch": ["A", "A", "K", "J"], "cask": ["a", "d", "a", "c"]})
INTERVAL_CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", None, SS_NEW, True),
    "sleepstudy_fixed": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", None, SS_NEW, False),
    "uncorr": ("Reaction ~ Days + (Days || Subject)", "sleepstudy", None, SS_NEW, True),
    "weighted": ("Reaction ~ Days + (Days | Subject)",
                 "tests/fixtures/data/sleepstudy_weighted.csv", "w", SS_NEW, True),
    "pastes": ("strength ~ 1 + (1 | batch/cask)", "Pastes", None, PASTES_NEW, True),
    "pastes_batch": ("strength ~ 1 + (1 | batch/cask)", "Pastes", None, PASTES_NEW, ["batch"]),
    "pastes_weighted": ("strength ~ 1 + (1 | batch/cask)", "pastes_w", "w", PASTES_NEW, True),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin", None,
                   pd.DataFrame({"plate": ["a", "a", "z", "x"], "sample": ["A", "G", "B", "F"]}),
                   True),
    "cake": ("angle ~ recipe + temperature + (1 | recipe:replicate)", "cake", None,
             pd.DataFrame({"recipe": ["A", "C", "B"], "temperature": ["175", "205", "225"],
                           "replicate": ["1", "15", "16"]}), True),
}


@pytest.mark.parametrize("key", list(INTERVAL_CASES))
def test_intervals_match_dense_reference(key):
    formula, ds, weights, nd, re = INTERVAL_CASES[key]
    if ds == "pastes_w":
        data = _pastes_weighted()
    elif ds.endswith(".csv"):
        data = pd.read_csv(ROOT / ds)
    else:
        data = jaxlmm.datasets.load(ds)
    m = jaxlmm.fit(formula, data, weights=weights)
    groups = {f.group for f in m.design.info.factors} if re is True else set(re or [])
    fit, conf, pred = _dense_reference(m, nd, groups)
    ci = predict(m, nd, re=re, interval="confidence")
    pi = predict(m, nd, re=re, interval="prediction", level=0.9)
    np.testing.assert_allclose(ci["fit"], fit, rtol=1e-10)
    np.testing.assert_allclose(ci["se"] ** 2, conf, rtol=1e-9)
    np.testing.assert_allclose(pi["se"] ** 2, pred, rtol=1e-9)
    np.testing.assert_allclose(ci["fit"], predict(m, nd, re=re), rtol=1e-14)
    z95, z90 = 1.959963984540054, 1.6448536269514722
    np.testing.assert_allclose(ci["upr"] - ci["fit"], z95 * ci["se"], rtol=1e-12)
    np.testing.assert_allclose(ci["fit"] - ci["lwr"], z95 * ci["se"], rtol=1e-12)
    np.testing.assert_allclose(pi["upr"] - pi["lwr"], 2 * z90 * pi["se"], rtol=1e-12)
    assert list(ci.columns) == ["fit", "lwr", "upr", "se"]


def test_single_factor_shortcut_equals_sparse_solve(sleep):
    """The one-factor formula (cond_var, xtx_inv, Z'WX) equals the general sparse route."""
    ss, m = sleep
    rows = new_rows(m.frame, SS_NEW, terms=[0], groups=[0])
    known = {0: (rows.Z[0], rows.codes[0])}
    np.testing.assert_allclose(P._pev_single(m, rows.X, known), P._pev_sparse(m, rows.X, known),
                               rtol=1e-10)
    np.testing.assert_allclose(P._pev_single(m, rows.X, {}), P._pev_sparse(m, rows.X, {}),
                               rtol=1e-10)


@pytest.mark.parametrize("name", ["pastes", "penicillin", "cake"])
def test_sparse_strategies_agree(name, monkeypatch):
    """Dense inverse, selected columns of C^{-1} (many rows) and per-row solves (few rows)."""
    formula, ds, weights, nd, re = INTERVAL_CASES[name]
    data = jaxlmm.datasets.load(ds)
    m = jaxlmm.fit(formula, data)
    big = pd.concat([data] * 3, ignore_index=True)  # more rows than indices: selected columns
    dense_few = predict(m, nd, interval="prediction")["se"]
    dense_big = predict(m, big, interval="prediction")["se"]
    monkeypatch.setattr(P, "_DENSE", 0)
    np.testing.assert_allclose(predict(m, nd, interval="prediction")["se"], dense_few, rtol=1e-10)
    np.testing.assert_allclose(predict(m, big, interval="prediction")["se"], dense_big, rtol=1e-10)
