"""Satterthwaite df, t/F tests, anova and Wald intervals against real lmerTest 3.1-3 runs
(tests/fixtures/make_lmertest_fixtures.R wrote tests/fixtures/lmertest/*.json).

Levels of checking:
1. at lme4's own (theta, sigma): lmerTest's deviance of varpar, its Hessian, vcov(varpar)
   and the Jacobian of vcov(beta) (lmerTest: numDeriv; here exact autodiff), then every
   table -- no optimizer involved, so tolerances are tight;
2. the fitted model (our optimizer): df within 1e-3 relative, p within 1e-4 absolute;
3. type I/III hypothesis matrices of many term structures, from the model frame alone, and
   the F tests computed from lmerTest's own vcov/Jacobian (the contestMD arithmetic alone).
"""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import HERE, ROOT

import jaxlmm
from jaxlmm import satterthwaite as S
from jaxlmm.contrasts import fixed_terms, hypotheses, zapsmall
from jaxlmm.errors import DataError, JaxlmmError

FIXTURES = HERE / "fixtures" / "lmertest"
MODELS = ["sleepstudy_reml", "sleepstudy_ml", "sleepstudy_weighted", "sleepstudy_offset",
          "dyestuff2_reml",
          "penicillin_reml", "pastes_reml", "crossed_slopes_reml", "cake_additive_reml",
          "cake_interaction_reml", "cake_interaction_ml", "cake_factor_reml",
          "cake_nested_reml", "factorial_fgx"]
FACTORIAL = ["factorial_fgx", "factorial_fgh", "factorial_x_fx", "factorial_nested3",
             "factorial_xz_f", "factorial_noint", "factorial_g_fg", "factorial_fx_g_ml"]
# Models whose fits the optimizer repeats here (level 2).
REFIT = ["sleepstudy_reml", "sleepstudy_ml", "sleepstudy_weighted", "penicillin_reml",
         "crossed_slopes_reml", "cake_interaction_reml"]
# numDeriv's Hessian (Richardson extrapolation, step 1e-4 at 0) is off by 1.2e-5 relative
# at Dyestuff2's theta = 0 (a boundary fit): central differences of our deviance with steps
# 1e-3 and 1e-4 give 19.80975 and 19.80972, the exact value is 19.8097247, numDeriv 19.809968.
NUMDERIV_TOL = {"dyestuff2_reml": 5e-5}


def load(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def data_of(fx):
    ds = fx["dataset"]
    return pd.read_csv(ROOT / ds) if ds.endswith(".csv") else jaxlmm.datasets.load(ds)


def fit(fx, at_lme4=True):
    kw = dict(start=fx["theta"], max_iter=0) if at_lme4 else {}
    return jaxlmm.fit(fx["formula"], data_of(fx), reml=fx["reml"], weights=fx["weights"], **kw)


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b))) if b.size else 0.0


def scaled(a, b):
    """max |a - b| relative to max |b| (for matrices with exact zeros, noisy in numDeriv)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b))) if b.size else 0.0


def canon(name):
    """A coefficient or term name as its set of parts: "x:fb" and "fb:x" are one column."""
    return frozenset(name.split(":"))


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    fx = load(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no eigenvalue warnings on these fits
        m = fit(fx)
        S.varpar_info(m)
    return fx, m


# ---------------------------------------------------------------------- level 1


def test_devfun_vp_at_lme4_varpar(case):
    fx, m = case
    info = S.varpar_info(m)
    np.testing.assert_allclose(info.varpar, fx["varpar"], rtol=1e-13)
    assert abs(info.devfun_vp - fx["devfun_vp"]) < 1e-9 * abs(fx["devfun_vp"])


def test_hessian_vcov_varpar_and_jacobian(case):
    fx, m = case
    info = S.varpar_info(m)
    tol = NUMDERIV_TOL.get(fx["name"], 1e-6)
    assert scaled(info.hessian, fx["hessian"]) < tol
    A, J = S.vcov_varpar(m)
    k1 = len(fx["varpar"])
    assert A.shape == (k1, k1) and J.shape == (k1,) + (len(fx["beta"]),) * 2
    assert scaled(A, fx["vcov_varpar"]) < tol
    assert scaled(J, fx["jac_list"]) < 1e-6
    assert scaled(info.vcov_beta, fx["vcov_beta"]) < 1e-10


def test_coef_table(case):
    fx, m = case
    ct = S.coef_table(m)
    ref = fx["coef_table"]
    assert list(ct.columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    assert list(ct.index) == ref["rows"]
    assert rel(ct["Estimate"], ref["estimate"]) < 1e-10
    assert rel(ct["Std. Error"], ref["std_error"]) < 1e-10
    assert rel(ct["t value"], ref["t_value"]) < 1e-10
    assert rel(ct["df"], ref["df"]) < 1e-6
    assert np.max(np.abs(ct["Pr(>|t|)"] - ref["p_value"])) < 1e-9
    lme4 = S.coef_table(m, ddf="lme4")
    assert list(lme4.columns) == ["Estimate", "Std. Error", "t value"]
    np.testing.assert_allclose(lme4["t value"], ref["t_value"], rtol=1e-10)


@pytest.mark.parametrize("typ", [3, 1])
def test_anova(case, typ):
    fx, m = case
    ref = fx[f"anova_type{typ}"]
    a = S.anova(m, type=typ)
    assert list(a.columns) == ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    assert list(a.index) == ref["rows"]
    assert a.attrs["heading"] == ref["heading"]
    if not ref["rows"]:
        return
    np.testing.assert_array_equal(a["NumDF"], ref["numdf"])
    for col, key in [("F value", "f_value"), ("Sum Sq", "sum_sq"), ("Mean Sq", "mean_sq")]:
        assert rel(a[col], ref[key]) < 1e-9, col
    assert rel(a["DenDF"], ref["dendf"]) < 1e-6
    assert np.max(np.abs(a["Pr(>F)"] - ref["p_value"])) < 1e-9
    hyp = S.anova_hypotheses(m, typ)
    for h in ref["hypotheses"]:
        H = np.array(h["L"], float).reshape(-1, len(fx["beta"]))
        assert list(hyp[h["term"]].index) == h["rows"]
        assert scaled(hyp[h["term"]].values, H) < 1e-10, h["term"]


def test_contests(case):
    fx, m = case
    for c in fx["contests"]:
        rhs = c["rhs"][0] if len(c["rhs"]) == 1 else c["rhs"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = S.contrast(m, np.array(c["L"]), rhs=rhs, joint=c["joint"])
        r = c["result"]
        if c["joint"]:
            assert rel(res["F value"], r["f_value"]) < 1e-9, c["label"]
            assert rel(res["DenDF"], r["dendf"]) < 1e-6, c["label"]
            np.testing.assert_array_equal(res["NumDF"], r["numdf"])
            assert np.max(np.abs(res["Pr(>F)"] - r["p_value"])) < 1e-9, c["label"]
        else:
            assert rel(res["Estimate"], r["estimate"]) < 1e-10, c["label"]
            assert rel(res["t value"], r["t_value"]) < 1e-9, c["label"]
            assert rel(res["df"], r["df"]) < 1e-6, c["label"]
            assert np.max(np.abs(res["Pr(>|t|)"] - r["p_value"])) < 1e-9, c["label"]


def test_wald_confint(case):
    fx, m = case
    for ci in fx["confint_wald"]:
        w = S.wald_confint(m, ci["level"])
        assert list(w.columns) == ci["columns"] and list(w.index) == ci["rows"]
        assert rel(w.iloc[:, 0], ci["lower"]) < 1e-10
        assert rel(w.iloc[:, 1], ci["upper"]) < 1e-10


# ---------------------------------------------------------------------- level 2


@pytest.mark.parametrize("name", REFIT)
def test_fitted_model(name):
    """Our own optimum: df within 1e-3 relative, p-values within 1e-4 absolute (achieved:
    df 2.8e-4 on sleepstudy_weighted, where lme4's optimum is the less precise one, at most
    9e-5 elsewhere; p-values at most 1.1e-6)."""
    fx = load(name)
    m = fit(fx, at_lme4=False)
    ct = S.coef_table(m)
    assert rel(ct["df"], fx["coef_table"]["df"]) < 1e-3
    assert np.max(np.abs(ct["Pr(>|t|)"] - fx["coef_table"]["p_value"])) < 1e-4
    ref = fx["anova_type3"]
    if ref["rows"]:
        a = S.anova(m)
        assert rel(a["DenDF"], ref["dendf"]) < 1e-3
        assert np.max(np.abs(a["Pr(>F)"] - ref["p_value"])) < 1e-4
    for c in fx["contests"]:
        if c["joint"]:
            res = S.contrast(m, np.array(c["L"]), rhs=c["rhs"])
            assert rel(res["DenDF"], c["result"]["dendf"]) < 1e-3
            assert np.max(np.abs(res["Pr(>F)"] - c["result"]["p_value"])) < 1e-4


# ---------------------------------------------------------------------- level 3


def _info_from_fixture(fx, perm):
    """VarparInfo from lmerTest's own numbers, columns in our order."""
    V = np.array(fx["vcov_beta"])[np.ix_(perm, perm)]
    J = np.array(fx["jac_list"])[:, perm][:, :, perm]
    return S.VarparInfo(np.array(fx["varpar"]), [], np.array(fx["beta"])[perm], [],
                        fx["sigma"], V, np.array(fx["vcov_varpar"]), J,
                        np.array(fx["hessian"]), np.zeros(0), fx["devfun_vp"])


@pytest.mark.parametrize("name", FACTORIAL)
@pytest.mark.parametrize("typ", [3, 1])
def test_hypotheses_of_term_structures(name, typ):
    """Hypothesis matrices from the model frame (no fit) equal lmerTest's, and the F tests
    from them and lmerTest's vcov/Jacobian reproduce its anova table.

    For x + f:x and g + f:g the frame names interactions in the order written (fb:x, fb:gp)
    where R orders the variables by first appearance in the formula (x:fb, gp:fb; and for
    g + f:g the columns in another order); names are compared as sets of parts.
    """
    fx = load(name)
    frame = jaxlmm.model_frame(fx["formula"], data_of(fx))
    ours = list(frame.fixef_names)
    perm = [next(i for i, o in enumerate(ours) if canon(o) == canon(r))
            for r in fx["fixef_names"]]
    assert sorted(perm) == list(range(len(ours)))
    inv = np.argsort(perm)  # our column j is R's column perm^-1[j]
    info = _info_from_fixture(fx, inv)
    hyp = hypotheses(frame, typ)
    ref = fx[f"anova_type{typ}"]
    assert [canon(t) for t in hyp] == [canon(t) for t in fx["term_labels"]]
    for h in ref["hypotheses"]:
        label = next(t for t in hyp if canon(t) == canon(h["term"]))
        H = np.array(h["L"], float).reshape(-1, len(ours))[:, inv]
        ours_h = hyp[label]
        assert [canon(ours[c]) for c in ours_h.rows] == sorted(map(canon, h["rows"]),
                                                                key=[canon(ours[c]) for c in
                                                                     ours_h.rows].index)
        order = [[canon(r) for r in h["rows"]].index(canon(ours[c])) for c in ours_h.rows]
        assert ours_h.L.shape == H.shape, label
        assert scaled(ours_h.L, H[order]) < (1e-12 if typ == 3 else 1e-10), label
        tab = S.satterthwaite_f(info, ours_h.L)
        k = ref["rows"].index(h["term"])
        assert rel(tab["F value"], [ref["f_value"][k]]) < 1e-10
        assert rel(tab["DenDF"], [ref["dendf"][k]]) < 1e-10
        assert abs(tab["Pr(>F)"].iloc[0] - ref["p_value"][k]) < 1e-12


def test_type3_labels_match_r_where_names_agree():
    for name in FACTORIAL:
        fx = load(name)
        frame = jaxlmm.model_frame(fx["formula"], data_of(fx))
        if list(frame.fixef_names) == fx["fixef_names"]:
            assert list(hypotheses(frame, 3)) == fx["term_labels"], name


# ---------------------------------------------------------------------- exactness, caching


def test_hessian_is_exact_against_central_differences():
    """The autodiff Hessian of devfun_vp against central differences of our own function."""
    import jax
    import jax.numpy as jnp

    fx = load("sleepstudy_reml")
    m = fit(fx)
    stats = jaxlmm.suffstats(m.design)
    info = S.varpar_info(m)
    v = info.varpar
    dev = jax.jit(S.devfun_vp, static_argnames="reml")
    f = lambda x: float(dev(jnp.asarray(x), stats, reml=True))  # noqa: E731
    h = 1e-3 * np.maximum(np.abs(v), 0.1)
    for i in range(len(v)):
        e = np.zeros_like(v)
        e[i] = h[i]
        d2 = (f(v + e) - 2 * f(v) + f(v - e)) / h[i] ** 2
        assert abs(d2 - info.hessian[i, i]) < 1e-4 * abs(info.hessian[i, i])


def test_no_recompilation_for_a_new_response():
    d = jaxlmm.datasets.load("sleepstudy")
    m1 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", d)
    S.varpar_info(m1)
    n0 = S.varpar_derivatives._cache_size()
    d2 = d.assign(Reaction=d["Reaction"] + np.random.default_rng(1).normal(0, 20, len(d)))
    m2 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", d2)
    t2 = S.coef_table(m2)
    assert S.varpar_derivatives._cache_size() == n0
    assert S.coef_table(m1)["df"].iloc[1] != t2["df"].iloc[1]
    assert S.varpar_info(m2) is S.varpar_info(m2)  # memoized per model


def test_contrast_forms_agree():
    m = fit(load("cake_interaction_reml"))
    names = list(m.frame.fixef_names)
    a = S.contrast(m, {"recipeB": 1, "recipeC": -1})
    b = S.contrast(m, pd.Series({"recipeB": 1.0, "recipeC": -1.0}))
    L = np.zeros(len(names))
    L[1], L[2] = 1, -1
    c = S.contrast(m, L)
    pd.testing.assert_frame_equal(a, b)
    np.testing.assert_allclose(a.values, c.values, rtol=1e-14)
    M = pd.DataFrame([{"recipeB": 1.0}, {"recipeC": 1.0}])
    F1 = S.contrast(m, M)
    F2 = S.contrast(m, [{"recipeB": 1}, {"recipeC": 1}])
    np.testing.assert_allclose(F1.values, F2.values, rtol=1e-14)
    rows = S.contrast(m, M, joint=False)
    assert list(rows.index) == [0, 1] and list(rows.columns)[2] == "df"
    # a 1-row matrix is a joint test (F = t^2), as lmerTest's contestMD
    F = S.contrast(m, L[None, :])
    np.testing.assert_allclose(F["F value"].iloc[0], c["t value"].iloc[0] ** 2, rtol=1e-12)
    np.testing.assert_allclose(F["DenDF"].iloc[0], c["df"].iloc[0], rtol=1e-12)


# ---------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def sleep_model():
    return fit(load("sleepstudy_reml"))


@pytest.mark.parametrize("L, match", [
    (np.ones(3), "length 2 or a matrix with 2 columns"),
    (np.ones((2, 3)), "matrix with 2 columns"),
    (np.ones((0, 2)), "matrix with 2 columns"),
    (np.ones((1, 2, 2)), "got shape"),
    ([np.nan, 1.0], "non-finite"),
    ({"day": 1}, "did you mean 'Days'"),
    ({"Days": "x"}, "must be a number"),
    ("Days", "must be numeric"),
])
def test_contrast_bad_L(sleep_model, L, match):
    with pytest.raises(DataError, match=match):
        S.contrast(sleep_model, L)


def test_contrast_bad_rhs(sleep_model):
    with pytest.raises(DataError, match="one per row"):
        S.contrast(sleep_model, np.eye(2), rhs=[1, 2, 3])
    with pytest.raises(DataError, match="finite"):
        S.contrast(sleep_model, [0, 1], rhs=np.inf)


def test_rank_deficient_contrast_with_rhs(sleep_model):
    """Rows (0, 1), (0, 2) with rhs (10, 20) state Days = 10 twice: the F test equals the t
    test of Days = 10. (lmerTest 3.1-3 warns, and for a rank-1 L tests P'L beta = rhs[1]
    instead, F = 15.04 here; we shift beta by pinv(L) rhs as it does for rank > 1.)"""
    with pytest.warns(RuntimeWarning, match="rank deficient"):
        F = S.contrast(sleep_model, [[0, 1], [0, 2]], rhs=[10, 20])
    t = S.contrast(sleep_model, [0, 1], rhs=10)
    np.testing.assert_allclose(F["F value"].iloc[0], t["t value"].iloc[0] ** 2, rtol=1e-12)
    np.testing.assert_allclose(F["DenDF"].iloc[0], t["df"].iloc[0], rtol=1e-12)


def test_bad_arguments(sleep_model):
    with pytest.raises(DataError, match="Kenward-Roger is not implemented"):
        S.coef_table(sleep_model, ddf="Kenward-Roger")
    with pytest.raises(JaxlmmError, match="type II anova is not implemented"):
        S.anova(sleep_model, type=2)
    with pytest.raises(JaxlmmError, match="must be 3"):
        S.anova(sleep_model, type="IV")
    with pytest.raises(DataError, match="level must be"):
        S.wald_confint(sleep_model, 95)


def test_type3_unsupported_terms_raise():
    cake = jaxlmm.datasets.load("cake")
    frame = jaxlmm.model_frame("angle ~ recipe * temperature + (1 | recipe:replicate)", cake)
    with pytest.raises(JaxlmmError, match="'temperature'.*polynomial contrasts"):
        hypotheses(frame, 3)
    assert set(hypotheses(frame, 1)) == {"recipe", "temperature", "recipe:temperature"}
    # one term: lmerTest uses type I hypotheses, whatever the coding
    single = jaxlmm.model_frame("angle ~ temperature + (1 | recipe:replicate)", cake)
    assert hypotheses(single, 3)["temperature"].L.shape == (5, 6)
    # columns dropped for rank deficiency
    dup = cake.assign(t2=cake["temp"] * 2)
    frame = jaxlmm.model_frame("angle ~ recipe * temp + t2 + (1 | recipe:replicate)", dup)
    with pytest.raises(JaxlmmError, match="rank deficient"):
        hypotheses(frame, 3)
    # a design from arrays has no terms
    d = jaxlmm.design_from_arrays(cake["angle"], np.ones((len(cake), 1)),
                                  [("g", cake["replicate"].astype(str))])
    with pytest.raises(JaxlmmError, match="contrast"):
        fixed_terms(d.info.frame)


def test_zapsmall_as_r():
    np.testing.assert_array_equal(zapsmall([1 / 3, 1e-12, -2.0]), [0.333333, 0.0, -2.0])
    np.testing.assert_array_equal(zapsmall([100 / 3, 1.0]), [33.33333, 1.0])
