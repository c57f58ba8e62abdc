"""Property-based tests (hypothesis) of fitted models, the profiled criterion and the parser.

* invariance: permuting rows, relabelling grouping-factor levels (other strings, integers,
  floats or a reordered Categorical: a different level order) and reordering the terms of
  the formula leave the criterion, the fixed effects and the variance components unchanged;
* equivariance: y -> a y + c scales beta, sigma and the variance components and shifts the
  criterion by 2 (n - p) log|a| (REML) or 2 n log|a| (ML), theta unchanged; x -> s x + t in
  y ~ x + (1 + x | g) maps beta and the (intercept, slope) covariance linearly, leaves the ML
  deviance unchanged and shifts the REML criterion by 2 log|s| (log|X'V^-1 X| with X -> X A);
* the library's criterion at random theta on formula-built designs equals a dense GLS
  computation (dense_gls.py) whose X, Z and theta layout are built here from the raw
  columns, for every kind of random-effects term the formula language has;
* the formula parser accepts or raises FormulaError on garbled strings, and round-trips the
  formulas it accepts; the host-side design and ``fit`` raise only FormulaError / DataError.
"""

import re
from types import SimpleNamespace

import dense_gls
import numpy as np
import pandas as pd
import property_strategies as ps
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxlmm
from jaxlmm.errors import DataError, FormulaError
from jaxlmm.formula import ParsedFormula, group_variables, parse_formula

settings.register_profile(
    "properties", deadline=None, derandomize=True, max_examples=12, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile("properties")


def fits(n):
    return settings(PROFILE, max_examples=n)


# --------------------------------------------------------------------------
# fitted-model data
# --------------------------------------------------------------------------

SLEEP = "Reaction ~ Days + (Days | Subject)"
PENICILLIN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


def _sleep_rater():
    """sleepstudy plus a crossed 18-level factor ``rater`` (as many levels as Subject)."""
    ss = jaxlmm.datasets.load("sleepstudy")
    subj = ss.Subject.cat.codes.to_numpy()
    rater = (subj + ss.Days.to_numpy().astype(int)) % 18
    eff = np.random.default_rng(5).normal(0, 15, 18)
    return ss.assign(rater=[f"r{k}" for k in rater], Reaction=ss.Reaction + eff[rater])


def _sleep_weighted():
    """sleepstudy with prior weights ``w`` and an offset column ``o``."""
    ss = jaxlmm.datasets.load("sleepstudy")
    rng = np.random.default_rng(6)
    return ss.assign(w=rng.uniform(0.5, 2.0, len(ss)), o=rng.normal(0, 20, len(ss)))


_DATA = {}
_MADE = {"rater": _sleep_rater, "weighted": _sleep_weighted}


def data(name):
    if name not in _DATA:
        _DATA[name] = _MADE[name]() if name in _MADE else jaxlmm.datasets.load(name)
    return _DATA[name]


def fit(formula, df, reml=True):
    """jaxlmm.fit, with prior weights from column ``w`` where there is one."""
    return jaxlmm.fit(formula, df, reml=reml, weights="w" if "w" in df else None)


_FITS = {}


def ref_fit(formula, name, reml=True):
    key = (formula, name, reml)
    if key not in _FITS:
        _FITS[key] = fit(formula, data(name), reml=reml)
    return _FITS[key]


def _varcorr_by_name(m):
    """varcorr indexed by (group, var1, var2), the ".1" suffix of repeated groups dropped."""
    vc = m.varcorr.copy()
    vc["grp"] = [re.sub(r"\.\d+$", "", g) for g in vc.grp]
    vc = vc.fillna({"var1": "", "var2": ""}).set_index(["grp", "var1", "var2"]).sort_index()
    assert vc.index.is_unique
    return vc


def assert_same_fit(m, ref, rtol=1e-6):
    assert m.objective == pytest.approx(ref.objective, abs=1e-7)
    pd.testing.assert_index_equal(m.fixef.index, ref.fixef.index)
    np.testing.assert_allclose(m.fixef.values, ref.fixef.values, rtol=rtol)
    a, b = _varcorr_by_name(m), _varcorr_by_name(ref)
    pd.testing.assert_index_equal(a.index, b.index)
    np.testing.assert_allclose(a.vcov.values, b.vcov.values, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a.sdcor.values, b.sdcor.values, rtol=1e-5, atol=1e-6)


INVARIANCE_CASES = [(SLEEP, "sleepstudy", ("Subject",)),
                    ("Reaction ~ Days + offset(o) + (Days | Subject)", "weighted", ("Subject",)),
                    (PENICILLIN, "Penicillin", ("plate", "sample")),
                    ("strength ~ 1 + (1 | batch/cask)", "Pastes", ("batch", "cask"))]


@pytest.mark.parametrize("formula, name, groups", INVARIANCE_CASES)
@fits(15)
@given(seed=st.integers(0, 2**32 - 1))
def test_row_permutation_invariance(formula, name, groups, seed):
    df = data(name)
    perm = np.random.default_rng(seed).permutation(len(df))
    assert_same_fit(fit(formula, df.iloc[perm]), ref_fit(formula, name))


def _relabel(col: pd.Series, kind: str, perm) -> pd.Series:
    codes, levels = pd.factorize(col, sort=True)
    if kind == "categorical":
        return pd.Series(pd.Categorical(np.asarray(levels)[codes],
                                        categories=np.asarray(levels)[perm]), index=col.index)
    new = {"int": perm * 7 - 20, "float": perm / 4 - 1.5,
           "string": np.array([f"L{p}" for p in perm], dtype=object)}[kind]
    return pd.Series(new[codes], index=col.index)


@pytest.mark.parametrize("formula, name, groups", INVARIANCE_CASES)
@fits(15)
@given(st.data())
def test_level_relabelling_invariance(formula, name, groups, data_):
    df = data(name).copy()
    for g in groups:
        nlev = df[g].nunique()
        perm = np.asarray(data_.draw(st.permutations(range(nlev)), label=f"{g} order"))
        kind = data_.draw(st.sampled_from(["int", "float", "string", "categorical"]),
                          label=f"{g} labels")
        df[g] = _relabel(df[g], kind, perm)
    assert_same_fit(fit(formula, df), ref_fit(formula, name))


TERM_ORDER_CASES = {
    "rater": ("Reaction ~ Days + (1 | Subject) + (1 | rater)",
              ["Days", "(1 | Subject)", "(1 | rater)"]),
    "sleepstudy": ("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)",
                   ["Days", "(1 | Subject)", "(0 + Days | Subject)"]),
}


@pytest.mark.parametrize("name", sorted(TERM_ORDER_CASES))
@fits(8)
@given(st.data())
def test_term_order_invariance(name, data_):
    """Ties in the number of levels (theta in formula order, a different elimination order)
    and two terms of one factor (block-diagonal template in the other order)."""
    base, pieces = TERM_ORDER_CASES[name]
    pieces = data_.draw(st.permutations(pieces))
    m = jaxlmm.fit("Reaction ~ " + " + ".join(pieces), data(name))
    assert_same_fit(m, ref_fit(base, name))


@pytest.mark.parametrize("formula", [
    "diameter ~ 1 + (1 | sample) + (1 | plate)",
    "diameter ~ (1 | sample) + 1 + (1 | plate)",
])
def test_crossed_term_order_invariance(formula):
    assert_same_fit(jaxlmm.fit(formula, data("Penicillin")), ref_fit(PENICILLIN, "Penicillin"))


@pytest.mark.parametrize("formula", [
    "strength ~ 1 + (1 | cask:batch) + (1 | batch)",
    "strength ~ 1 + (1 | batch) + (1 | cask:batch)",
])
def test_nested_term_order_invariance(formula):
    ref = ref_fit("strength ~ 1 + (1 | batch/cask)", "Pastes")
    assert_same_fit(jaxlmm.fit(formula, data("Pastes")), ref)


# --------------------------------------------------------------------------
# equivariance
# --------------------------------------------------------------------------

scale_factor = st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(-3.0, 3.0)).map(
    lambda t: t[0] * 10.0 ** t[1])


@fits(25)
@given(a=scale_factor, c=st.floats(-1e4, 1e4), reml=st.booleans())
def test_response_affine_equivariance(a, c, reml):
    ref = ref_fit(SLEEP, "sleepstudy", reml)
    ss = data("sleepstudy")
    m = jaxlmm.fit(SLEEP, ss.assign(Reaction=a * ss.Reaction + c), reml=reml)
    n, p = ref.nobs, len(ref.fixef)
    shift = 2 * (n - p if reml else n) * np.log(abs(a))
    assert m.objective == pytest.approx(ref.objective + shift, abs=1e-7 * max(1.0, abs(shift)))
    np.testing.assert_allclose(m.theta, ref.theta, rtol=1e-4, atol=1e-5)
    b0, b1 = ref.fixef
    scale = max(abs(a * b0), abs(c), 1.0)
    assert m.fixef["(Intercept)"] == pytest.approx(a * b0 + c, rel=1e-6, abs=1e-8 * scale)
    assert m.fixef["Days"] == pytest.approx(a * b1, rel=1e-5)
    assert m.sigma == pytest.approx(abs(a) * ref.sigma, rel=1e-6)
    np.testing.assert_allclose(_varcorr_by_name(m).vcov, a**2 * _varcorr_by_name(ref).vcov,
                               rtol=1e-5)


def _template(m):
    (_, _, cols, cells), = m.design.info.theta_terms
    T = np.zeros((len(cols), len(cols)))
    for i, r, c in cells:
        T[r, c] = m.theta[i]
    return T


@fits(25)
@given(s=st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(-0.6, 0.6)).map(
           lambda t: t[0] * 10.0 ** t[1]),
       t=st.floats(-5.0, 5.0), reml=st.booleans())
def test_predictor_affine_equivariance(s, t, reml):
    ref = ref_fit(SLEEP, "sleepstudy", reml)
    ss = data("sleepstudy")
    m = jaxlmm.fit(SLEEP, ss.assign(Days=s * ss.Days + t), reml=reml)
    shift = 2 * np.log(abs(s)) if reml else 0.0
    assert m.objective == pytest.approx(ref.objective + shift, abs=1e-7)
    b0, b1 = ref.fixef
    np.testing.assert_allclose(m.fixef, [b0 - b1 * t / s, b1 / s], rtol=1e-5)
    assert m.sigma == pytest.approx(ref.sigma, rel=1e-6)
    # (1, s x + t) = (1, x) M: b -> M^-1 b, so T T' -> M^-1 T T' M^-T
    Minv = np.linalg.inv(np.array([[1.0, t], [0.0, s]]))
    T = _template(ref)
    expected = np.linalg.cholesky(Minv @ T @ T.T @ Minv.T)
    np.testing.assert_allclose(_template(m), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# the criterion on formula-built designs against dense GLS
# --------------------------------------------------------------------------

N = 72


def _kernel_frame(seed: int) -> pd.DataFrame:
    """g (6 levels) x h (4 levels) fully crossed, 3 rows each, s nested in g (g:s has 18
    levels): a fixed pattern of codes, so that every seed has the same shapes; the 3-level
    factor f and x, z, y, w drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(6), 12)
    within = np.tile(np.arange(12), 6)
    f = rng.permutation(np.tile(list("abc"), N // 3))
    x, z = rng.normal(size=N), rng.uniform(-2, 2, N)
    y = 10 + 2 * x + rng.normal(size=6)[g] * 2 + rng.normal(size=N)
    return pd.DataFrame({"y": y, "x": x, "z": z, "g": [f"G{k}" for k in g], "h": within % 4,
                         "s": [f"s{k}" for k in within // 4], "f": f,
                         "w": rng.uniform(0.3, 3.0, N)})


def _column(df, name):
    if name == "(Intercept)":
        return np.ones(len(df))
    if name in ("fa", "fb", "fc"):
        return (df.f == name[1]).to_numpy(float)
    return df[name].to_numpy(float)


def _group(df, group):
    key = df[group.split(":")].astype(str).agg("|".join, axis=1)
    return pd.factorize(key)[0]


I, X_, Z_ = "(Intercept)", "x", "z"
KERNEL_CASES = {  # formula, fixed columns, lme4 terms in formula order: (group, columns)
    "intercept": ("y ~ x + (1 | g)", [I, X_], [("g", [I])]),
    "correlated_slope": ("y ~ x + (1 + x | g)", [I, X_], [("g", [I, X_])]),
    "slope_only": ("y ~ x + (0 + x | g)", [I, X_], [("g", [X_])]),
    "double_bar": ("y ~ x + (x || g)", [I, X_], [("g", [I]), ("g", [X_])]),
    "nested": ("y ~ x + (1 | g/s)", [I, X_], [("s:g", [I]), ("g", [I])]),
    "interaction": ("y ~ x + (1 | g:s)", [I, X_], [("g:s", [I])]),
    "crossed": ("y ~ x + (1 | g) + (1 | h)", [I, X_], [("g", [I]), ("h", [I])]),
    "crossed_vector": ("y ~ x + (1 + x | g) + (1 + z | h)", [I, X_],
                       [("g", [I, X_]), ("h", [I, Z_])]),
    "factor_block": ("y ~ x + (1 | g) + (0 + f | g)", [I, X_],
                     [("g", [I]), ("g", ["fa", "fb", "fc"])]),
    "factor_correlated": ("y ~ f + x + (f | g)", [I, "fb", "fc", X_], [("g", [I, "fb", "fc"])]),
    "same_factor_crossed": ("y ~ x + z + (0 + z | h) + (1 + x | g) + (0 + z | g) + (1 | h)",
                            [I, X_, Z_], [("h", [Z_]), ("g", [I, X_]), ("g", [Z_]), ("h", [I])]),
    "nested_crossed": ("y ~ 0 + x + (x | h) + (1 | g/s)", [X_],
                       [("h", [I, X_]), ("s:g", [I]), ("g", [I])]),
    "weighted_nested_crossed": ("y ~ x + (1 | g/s) + (0 + x | h)", [I, X_],
                                [("s:g", [I]), ("g", [I]), ("h", [X_])]),
    "weighted_slope": ("y ~ x + (1 + x | g)", [I, X_], [("g", [I, X_])]),
    "offset_crossed": ("y ~ x + offset(z) + (1 | g) + (1 | h)", [I, X_],
                       [("g", [I]), ("h", [I])]),
}


@st.composite
def theta_values(draw, entries):
    return np.array([draw(st.one_of(st.just(0.0), st.floats(0.05, 3.0))) if r == c
                     else draw(st.floats(-2.0, 2.0)) for _, r, c in entries])


@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
@fits(8)
@given(seed=st.integers(0, 2**32 - 1), data_=st.data())
def test_criterion_on_formula_designs_equals_dense_gls(case, seed, data_):
    formula, fixed, spec = KERNEL_CASES[case]
    df = _kernel_frame(seed)
    weights = df.w.to_numpy() if case.startswith("weighted") else None
    terms = []
    for group, cols in spec:
        codes = _group(df, group)
        terms.append(SimpleNamespace(group=group, columns=cols, codes=codes,
                                     levels=range(codes.max() + 1),
                                     Z=np.column_stack([_column(df, c) for c in cols])))
    entries = dense_gls.term_theta_entries(terms)
    d = jaxlmm.design(formula, df, weights="w" if weights is not None else None)
    assert list(d.info.fixef_names) == fixed
    names = [f"{terms[t].group}.{terms[t].columns[r]}" + ("" if r == c else
             f".{terms[t].columns[c]}") for t, r, c in entries]
    assert d.info.theta_names == names
    theta = data_.draw(theta_values(entries), label="theta")
    stats = jaxlmm.suffstats(d)
    X = np.column_stack([_column(df, c) for c in fixed])
    ZL = dense_gls.dense_z_lambda(terms, entries, theta)
    y = df.y.to_numpy() - (df.z.to_numpy() if "offset(z)" in formula else 0.0)
    for reml in (True, False):
        got = float(jaxlmm.objective(theta, stats, reml))
        assert got == pytest.approx(dense_gls.criterion(ZL, X, y, reml, weights), rel=1e-10)


# --------------------------------------------------------------------------
# the formula parser and the full path on garbled formulas
# --------------------------------------------------------------------------


@settings(PROFILE, max_examples=300)
@given(ps.garbled_formula)
def test_parser_accepts_or_raises_formula_error(s):
    try:
        p = parse_formula(s)
    except FormulaError as exc:
        assert str(exc)
        return
    assert isinstance(p, ParsedFormula) and p.formula == s


@settings(PROFILE, max_examples=200)
@given(ps.valid_formula())
def test_parser_round_trip(s):
    p = parse_formula(s)
    assert p.random
    names = {n.strip("`") for n in ps.NAMES}
    for r in p.random:
        assert set(group_variables(r.group)) <= names
    again = parse_formula(ps.rebuild(p))
    assert ps.content(again) == ps.content(p)
    assert ps.rebuild(again) == ps.rebuild(p)


def _garble_frame():
    rng = np.random.default_rng(1)
    n = 40
    return pd.DataFrame({
        "y": rng.normal(size=n), "x": rng.normal(size=n), "z": rng.normal(size=n),
        "g": np.repeat(list("abcde"), 8), "h": np.tile(list("pqrs"), 10),
        "f": rng.choice(list("uvw"), n), "my var": rng.uniform(1, 2, n),
        "a|b": np.tile([1, 2, 3, 4], 10), "c:d": rng.normal(size=n),
        "resp.1": rng.normal(size=n), "a b": rng.normal(size=n)})


GARBLE = _garble_frame()


@settings(PROFILE, max_examples=150)
@given(st.one_of(ps.garbled_formula, ps.valid_formula()))
def test_design_raises_only_jaxlmm_errors(s):
    try:
        d = jaxlmm.design(s, GARBLE)
    except (FormulaError, DataError):
        return
    assert 0 < d.n <= len(GARBLE)


@settings(PROFILE, max_examples=40)
@given(ps.mutated_fit_formula())
def test_fit_raises_only_jaxlmm_errors(case):
    name, s = case
    try:
        m = jaxlmm.fit(s, data(name))
    except (FormulaError, DataError):
        return
    assert np.isfinite(m.objective)
