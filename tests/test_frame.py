"""Host-side design: R-style names, NA handling, factors, groups, checks."""

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm.frame import ModelFrame, model_frame, group_codes
from jaxlmm.errors import DataError, FormulaError


@pytest.fixture
def cake():
    rng = np.random.default_rng(0)
    n = 18
    return pd.DataFrame(
        {
            "angle": rng.normal(30, 5, n),
            "recipe": list("ABC") * 6,
            "temp": np.repeat([175, 185, 195, 205, 215, 225], 3),  # integers stay numeric
            "replicate": np.repeat([1, 2, 3], 6),
        }
    )


def test_r_names_for_factor_interactions(cake):
    d = model_frame("angle ~ recipe * temp + (1 | replicate)", cake)
    assert isinstance(d, ModelFrame)
    assert d.fixef_names == (
        "(Intercept)", "recipeB", "recipeC", "temp", "recipeB:temp", "recipeC:temp"
    )
    assert d.X.shape == (18, 6) and d.X.dtype == np.float64
    assert d.y.shape == (18,) and np.array_equal(d.y, cake["angle"].to_numpy())
    # treatment contrasts, first level (A) the reference
    assert np.array_equal(d.X[:3, 1], [0, 1, 0]) and np.array_equal(d.X[:3, 2], [0, 0, 1])
    assert np.array_equal(d.X[:, 3], cake["temp"].to_numpy(float))
    assert d.dropped == () and d.messages == () and d.n_dropped == 0
    assert d.weights is None and d.offset is None
    assert np.array_equal(d.kept, np.arange(18))
    # the stored spec rebuilds X for new data
    assert np.allclose(d.fixed_spec.matrix(cake.iloc[:4]), d.X[:4])


def test_intercept_and_no_fixed_columns(cake):
    assert model_frame("angle ~ 1 + (1 | replicate)", cake).fixef_names == ("(Intercept)",)
    d = model_frame("angle ~ 0 + (1 | replicate)", cake)
    assert d.X.shape == (18, 0) and d.fixef_names == ()
    d = model_frame("angle ~ 0 + recipe + (1 | replicate)", cake)
    assert d.fixef_names == ("recipeA", "recipeB", "recipeC")


def test_categorical_order_bool_and_factor_call(cake):
    df = cake.assign(
        recipe=pd.Categorical(cake["recipe"], categories=["C", "unused", "A", "B"]),
        hot=cake["temp"] > 200,
    )
    d = model_frame("angle ~ recipe + hot + factor(replicate) + (1 | replicate)", df)
    assert d.fixef_names == (
        "(Intercept)", "recipeA", "recipeB", "hotTRUE", "factor(replicate)2", "factor(replicate)3"
    )


def test_random_term_matrices(cake):
    d = model_frame(
        "angle ~ temp + (temp | replicate) + (0 + recipe | replicate) + (recipe || replicate)", cake
    )
    cols = [t.columns for t in d.terms]
    assert cols == [
        ("(Intercept)", "temp"),
        ("recipeA", "recipeB", "recipeC"),
        ("(Intercept)",),
        ("recipeA", "recipeB", "recipeC"),  # 0 + recipe: full dummy coding
    ]
    assert [t.source for t in d.terms] == [
        "(temp | replicate)", "(0 + recipe | replicate)", "(recipe || replicate)", "(recipe || replicate)"
    ]
    z = d.terms[1].Z
    assert z.shape == (18, 3) and np.array_equal(z.sum(axis=1), np.ones(18))
    assert np.array_equal(d.terms[0].Z[:, 1], cake["temp"].to_numpy(float))
    d = model_frame("angle ~ 1 + (1 + recipe | replicate)", cake)
    assert d.terms[0].columns == ("(Intercept)", "recipeB", "recipeC")


def test_missing_values_dropped(cake):
    df = cake.copy()
    df.loc[2, "angle"] = np.nan
    df.loc[5, "recipe"] = None
    df.loc[7, "replicate"] = np.nan
    df["unused"] = np.nan  # columns the model does not use do not matter
    d = model_frame("angle ~ recipe + (1 | replicate)", df)
    assert d.n_dropped == 3
    assert d.messages == ("3 rows with missing values dropped",)
    assert np.array_equal(d.kept, np.setdiff1d(np.arange(18), [2, 5, 7]))
    assert d.X.shape == (15, 3) and d.y.shape == (15,) and d.terms[0].codes.shape == (15,)
    assert np.array_equal(d.y, df["angle"].to_numpy()[d.kept])


def test_missing_weights_and_offset_rows_dropped(cake):
    w = np.ones(18)
    w[0] = np.nan
    off = np.zeros(18)
    off[1] = np.nan
    df = cake.assign(o=np.arange(18.0))
    d = model_frame("angle ~ temp + offset(o) + (1 | replicate)", df, weights=w, offset=off)
    assert d.n_dropped == 2 and np.array_equal(d.kept, np.arange(2, 18))
    assert np.array_equal(d.offset, np.arange(2, 18.0))
    assert np.array_equal(d.weights, np.ones(16))


def test_offsets_and_weights_by_name(cake):
    df = cake.assign(n=np.arange(1, 19.0), w=np.arange(1, 19.0))
    d = model_frame("angle ~ temp + offset(log(n)) + (1 | replicate)", df, weights="w", offset="n")
    assert np.allclose(d.offset, np.log(df["n"]) + df["n"])
    assert np.array_equal(d.weights, df["w"].to_numpy())


@pytest.mark.parametrize(
    "values, levels",
    [
        (["b", "a", "c", "a", "b", "c"], ("a", "b", "c")),  # strings sorted
        ([3, 1, 2, 1, 3, 2], ("1", "2", "3")),  # integers sorted numerically
        ([10, 9, 10, 9, 10, 9], ("9", "10")),  # not as strings
        ([0.5, 1.5, 0.5, 2.25, 1.5, 2.25], ("0.5", "1.5", "2.25")),
        ([True, False, True, False, True, False], ("FALSE", "TRUE")),
        (
            pd.Categorical(["lo", "hi", "lo", "hi", "lo", "hi"], categories=["lo", "never", "hi"]),
            ("lo", "hi"),  # category order kept, unused dropped
        ),
        (pd.array(["b", "a", "b", "a", "b", "a"], dtype="string"), ("a", "b")),
    ],
)
def test_group_codes_and_levels(values, levels):
    df = pd.DataFrame({"y": np.arange(6.0), "g": values})
    t = model_frame("y ~ 1 + (1 | g)", df).terms[0]
    assert t.levels == levels
    assert t.codes.dtype == np.int32
    labels = [levels[c] for c in t.codes]
    expected = [
        "TRUE" if v is True else "FALSE" if v is False else str(v) for v in np.asarray(values, dtype=object)
    ]
    if df["g"].dtype.kind == "f":
        expected = [f"{float(v):g}" for v in values]
    assert labels == expected
    assert np.array_equal(group_codes(t, df), t.codes)
    assert group_codes(t, pd.DataFrame({"g": [values[0], None]}))[1] == -1


def test_levels_absent_after_na_are_removed():
    df = pd.DataFrame({"y": [1.0, 2, 3, np.nan, 5, 6], "g": ["a", "b", "a", "c", "b", "a"]})
    t = model_frame("y ~ 1 + (1 | g)", df).terms[0]
    assert t.levels == ("a", "b")
    assert list(t.codes) == [0, 1, 0, 1, 0]


def test_interaction_groups():
    df = pd.DataFrame(
        {
            "y": np.arange(8.0),
            "a": [2, 1, 2, 1, 2, 1, 2, 2],
            "b": ["y", "x", "x", "y", "y", "x", "x", "y"],
        }
    )
    d = model_frame("y ~ 1 + (1 | a:b)", df)
    t = d.terms[0]
    assert t.group == "a:b"
    assert t.levels == ("1:x", "1:y", "2:x", "2:y")  # a varies slowest
    assert [t.levels[c] for c in t.codes] == [f"{a}:{b}" for a, b in zip(df.a, df.b)]
    # only observed combinations become levels
    t = model_frame("y ~ 1 + (1 | a:b)", df[df.a.eq(2) | df.b.eq("x")]).terms[0]
    assert t.levels == ("1:x", "2:x", "2:y")


def test_nested_groups_follow_lme4():
    df = pd.DataFrame(
        {"y": np.arange(12.0), "batch": list("AABB") * 3, "cask": list("abab") * 3}
    )
    d = model_frame("y ~ 1 + (1 | batch/cask)", df)
    assert [t.group for t in d.terms] == ["cask:batch", "batch"]
    assert d.terms[0].levels == ("a:A", "a:B", "b:A", "b:B")


def test_rank_deficient_columns_dropped(cake):
    df = cake.assign(x1=np.arange(18.0), x2=np.arange(18.0) ** 2)
    df["x3"] = 2 * df.x1 - df.x2
    d = model_frame("angle ~ x1 + x2 + x3 + temp + (1 | replicate)", df)
    assert d.fixef_names == ("(Intercept)", "x1", "x2", "temp")
    assert d.dropped == ("x3",)
    assert d.X.shape == (18, 4)
    assert d.messages == (
        "fixed-effect model matrix is rank deficient so dropping 1 column / coefficient: x3",
    )
    assert d.fixed_spec.matrix(df).shape == (18, 4)
    d = model_frame("angle ~ x1 + I(2 * x1) + I(3 * x1) + (1 | replicate)", df)
    assert "dropping 2 columns / coefficients: I(2 * x1), I(3 * x1)" in d.messages[0]


def test_constant_response_is_fine(cake):
    d = model_frame("angle ~ temp + (1 | replicate)", cake.assign(angle=1.0))
    assert np.all(d.y == 1.0)


def test_dict_input():
    data = {"y": np.arange(6.0), "g": np.array(["a", "b"] * 3)}
    d = model_frame("y ~ 1 + (1 | g)", data)
    assert d.terms[0].levels == ("a", "b")


# --------------------------------------------------------------------------
# bad input: the message names the culprit
# --------------------------------------------------------------------------


def test_unknown_column_suggests(cake):
    with pytest.raises(DataError, match=r"'tmp'.*did you mean 'temp'"):
        model_frame("angle ~ tmp + (1 | replicate)", cake)
    with pytest.raises(DataError, match=r"'replicat'.*\(1 \| replicat\).*'replicate'"):
        model_frame("angle ~ temp + (1 | replicat)", cake)
    with pytest.raises(DataError, match=r"'angel'.*did you mean 'angle'"):
        model_frame("angel ~ temp + (1 | replicate)", cake)
    with pytest.raises(DataError, match=r"'zzz'.*available columns"):
        model_frame("angle ~ temp + (zzz | replicate)", cake)
    with pytest.raises(DataError, match=r"'wts'"):
        model_frame("angle ~ temp + (1 | replicate)", cake, weights="wts")


def test_unknown_function_is_formula_error(cake):
    with pytest.raises(FormulaError) as info:
        model_frame("angle ~ foo(temp) + (1 | replicate)", cake)
    assert "foo(temp)" in str(info.value) and "angle ~ foo(temp)" in str(info.value)
    assert "\n            ^" in str(info.value)


def test_non_numeric_response(cake):
    with pytest.raises(DataError, match=r"response 'recipe' must be numeric"):
        model_frame("recipe ~ temp + (1 | replicate)", cake)


def test_infinite_values(cake):
    with pytest.raises(DataError, match=r"response 'angle' has infinite values in 1 row \(position 4\)"):
        model_frame("angle ~ temp + (1 | replicate)", cake.assign(angle=cake.angle.where(cake.index != 4, np.inf)))
    df = cake.assign(x=np.where(cake.index == 3, -np.inf, 1.0))
    with pytest.raises(DataError, match=r"fixed-effects column 'x'"):
        model_frame("angle ~ x + (1 | replicate)", df)
    with pytest.raises(DataError, match=r"random-effects column 'x' of \(x \| replicate\)"):
        model_frame("angle ~ 1 + (x | replicate)", df)
    with pytest.raises(DataError, match=r"offset\(x\) has infinite"):
        model_frame("angle ~ 1 + offset(x) + (1 | replicate)", df)
    with pytest.raises(DataError, match=r"weights column 'x' has infinite"):
        model_frame("angle ~ 1 + (1 | replicate)", df.assign(x=df.x.abs()), weights="x")


def test_bad_weights(cake):
    with pytest.raises(DataError, match="negative weights"):
        model_frame("angle ~ 1 + (1 | replicate)", cake, weights=np.r_[-1.0, np.ones(17)])
    with pytest.raises(DataError, match=r"zero in 1 row \(position 0\)"):
        model_frame("angle ~ 1 + (1 | replicate)", cake, weights=np.r_[0.0, np.ones(17)])
    with pytest.raises(DataError, match="one value per row"):
        model_frame("angle ~ 1 + (1 | replicate)", cake, weights=np.ones(3))


def test_too_many_levels(cake):
    df = cake.assign(id=np.arange(18))
    with pytest.raises(DataError, match=r"must be < number of observations \(problems: id \(18 levels\)"):
        model_frame("angle ~ temp + (1 | id)", df)
    with pytest.raises(DataError, match=r"> 1 sampled level.*one"):
        model_frame("angle ~ temp + (1 | one)", df.assign(one="x"))
    with pytest.raises(DataError, match=r"number of random effects \(=18\) for term \(0 \+ recipe \| pair\)"):
        model_frame("angle ~ temp + (0 + recipe | pair)", df.assign(pair=np.arange(18) // 3))


def test_empty_after_missing(cake):
    df = cake.assign(x=np.nan)
    with pytest.raises(DataError, match=r"no rows left.*x \(18 missing\)"):
        model_frame("angle ~ x + (1 | replicate)", df)


def test_grouping_expression_must_be_columns(cake):
    with pytest.raises(FormulaError, match="column name"):
        model_frame("angle ~ temp + (1 | factor(replicate))", cake)


# --------------------------------------------------------------------------
# more R conventions
# --------------------------------------------------------------------------


def test_ordered_factor_uses_polynomial_contrasts():
    df = pd.DataFrame(
        {
            "y": np.arange(12.0),
            "t": pd.Categorical(list("abcd") * 3, categories=list("abcd"), ordered=True),
            "r": list("AAAABBBBCCCC"),
            "g": list("pqr") * 4,
        }
    )
    d = model_frame("y ~ r * t + (1 | g)", df)
    assert d.fixef_names == (
        "(Intercept)", "rB", "rC", "t.L", "t.Q", "t.C",
        "rB:t.L", "rC:t.L", "rB:t.Q", "rC:t.Q", "rB:t.C", "rC:t.C",
    )
    # R's contr.poly(4)
    L = np.array([-3, -1, 1, 3]) / np.sqrt(20)
    assert np.allclose(d.X[:4, 3], L)
    assert np.allclose(d.X[:4, 4], [0.5, -0.5, -0.5, 0.5])
    assert np.allclose(d.fixed_spec.matrix(df.iloc[[3, 0]]), d.X[[3, 0]])


def test_rebuild_for_new_data_and_group_codes():
    df = pd.DataFrame(
        {"f": list("xyz") * 3, "g": [1, 1, 2, 2, 3, 3, 4, 4, 5], "h": [True, False, True] * 3}
    )
    df = pd.concat([df] * 3, ignore_index=True).assign(y=np.arange(27.0))
    d = model_frame("y ~ f + (1 + f | g) + (1 | g:h)", df)
    new = pd.DataFrame({"f": ["z", "x"], "g": [5, 9], "h": [True, True]})
    assert np.array_equal(d.fixed_spec.matrix(new), [[1, 0, 1], [1, 0, 0]])
    assert np.array_equal(d.terms[0].spec.matrix(new), [[1, 0, 1], [1, 0, 0]])
    assert d.terms[0].spec.columns == d.terms[0].columns
    assert list(group_codes(d.terms[0], new)) == [4, -1]  # 9 is a new level
    assert d.terms[1].levels[:2] == ("1:FALSE", "1:TRUE")
    assert list(group_codes(d.terms[1], new)) == [d.terms[1].levels.index("5:TRUE"), -1]


def test_quoted_names_and_index_free_positions():
    df = pd.DataFrame(
        {"my y": np.arange(8.0), "my x": np.arange(8.0) ** 2, "g g": list("ppqqrrss")},
        index=list("hgfedcba"),
    )
    df.loc["f", "my x"] = np.nan
    d = model_frame("`my y` ~ `my x` + (1 | `g g`)", df)
    assert d.response == "my y"
    assert d.fixef_names == ("(Intercept)", "`my x`")
    assert d.terms[0].group == "`g g`" and d.terms[0].levels == ("p", "q", "r", "s")
    assert list(d.kept) == [0, 1, 3, 4, 5, 6, 7] and d.kept.dtype == np.int64


def test_boolean_and_nullable_integer_response():
    df = pd.DataFrame({"y": [True, False] * 4, "g": list("aabbccdd")})
    assert np.array_equal(model_frame("y ~ 1 + (1 | g)", df).y, [1, 0] * 4)
    df["y"] = pd.array([1, 2, None, 4, 5, 6, 7, 8], dtype="Int64")
    d = model_frame("y ~ 1 + (1 | g)", df)
    assert d.y.dtype == np.float64 and d.n_dropped == 1


def test_transformation_nan_rows_dropped():
    df = pd.DataFrame({"y": np.arange(10.0), "x": np.arange(10.0) - 2, "g": list("ab") * 5})
    d = model_frame("y ~ log(x) + (1 | g)", df[df.x != 0])
    assert d.n_dropped == 2
    assert "2 rows dropped where transformations in the formula give NaN" in d.messages
    assert list(d.kept) == list(range(2, 9))


def test_formula_without_random_effects_is_rejected():
    import pandas as pd
    import pytest

    from jaxlmm.frame import model_frame
    from jaxlmm.errors import FormulaError

    df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "x": [0.0, 1.0, 2.0]})
    with pytest.raises(FormulaError, match="no random-effects terms"):
        model_frame("y ~ x", df)


def test_reused_formula_specs_follow_the_new_data():
    """Specs are cached per formula and column layout; the matrices must still come from the
    new data, and stateful transforms (center) must not be cached at all."""
    import numpy as np
    import pandas as pd

    from jaxlmm.frame import model_frame

    rng = np.random.default_rng(3)

    def frame(shift):
        n = 40
        return pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n) + shift,
                             "f": pd.Categorical(rng.choice(["a", "b", "c"], n),
                                                 categories=["a", "b", "c"]),
                             "g": np.repeat(np.arange(8), 5)})

    d1, d2 = frame(0.0), frame(5.0)
    for d in (d1, d2, d1):
        des = model_frame("y ~ x + f + (1 + x | g)", d)
        np.testing.assert_array_equal(des.X[:, 1], d["x"].to_numpy())
        np.testing.assert_array_equal(des.X[:, 2], (d["f"] == "b").to_numpy(float))
        np.testing.assert_array_equal(des.terms[0].Z[:, 1], d["x"].to_numpy())
    for d in (d1, d2):
        des = model_frame("y ~ center(x) + (1 | g)", d)
        assert abs(des.X[:, 1].mean()) < 1e-12


@pytest.mark.parametrize("formula", [
    "y ~ x + (x | g)", "y ~ 0 + x + z + (0 + x | g)", "y ~ x - 1 + (1 | g)",
    "y ~ 1 + k + (1 + k || g)", "y ~ 1 + (1 | g)",
])
def test_plain_columns_fast_path_matches_formulaic(formula, monkeypatch):
    """Sums of numeric columns skip formulaic; the matrices and names must be the same."""
    from jaxlmm import frame as design_mod

    rng = np.random.default_rng(3)
    n = 40
    df = pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n),
                       "z": rng.normal(size=n), "k": rng.integers(0, 5, n),
                       "g": rng.integers(0, 6, n).astype(str)})
    df.loc[3, "x"] = np.nan
    assert design_mod._plain_terms(design_mod.parse_formula(formula).fixed,
                                   df.drop(columns="g")) is not None
    fast = design_mod.model_frame(formula, df)
    monkeypatch.setattr(design_mod, "_plain_terms", lambda expr, prepared: None)
    ref = design_mod.model_frame(formula, df)
    assert fast.fixef_names == ref.fixef_names
    np.testing.assert_array_equal(fast.X, ref.X)
    assert fast.n_dropped == ref.n_dropped == (1 if " x" in formula else 0)
    for a, b in zip(fast.terms, ref.terms):
        assert a.columns == b.columns
        np.testing.assert_array_equal(a.Z, b.Z)
    new = df.iloc[:5]
    np.testing.assert_array_equal(fast.fixed_spec.matrix(new), ref.fixed_spec.matrix(new))


def test_r_power_inside_calls_is_arithmetic(sleepstudy):
    """I(x^2) is R's arithmetic power (Python would read ^ as xor); lme4 1.1-31 gives
    fixef 255.449372777778, 7.434085012626, 0.337022327441 and REML criterion
    1785.79527203 for this model."""
    m = jaxlmm.fit("Reaction ~ Days + I(Days^2) + (1 | Subject)", sleepstudy)
    assert list(m.fixef.index) == ["(Intercept)", "Days", "I(Days^2)"]
    np.testing.assert_allclose(m.fixef.values, [255.449372777778, 7.434085012626,
                                                0.337022327441], rtol=1e-9)
    assert abs(m.objective - 1785.79527203) < 1e-6
    # the same model with the square precomputed
    m2 = jaxlmm.fit("Reaction ~ Days + D2 + (1 | Subject)",
                    sleepstudy.assign(D2=sleepstudy["Days"] ** 2))
    np.testing.assert_allclose(m.fixef.values, m2.fixef.values, rtol=1e-10)
    # outside a call, ^ is still the formula's interaction power
    m3 = jaxlmm.fit("Reaction ~ (Days + x)^2 + (1 | Subject)",
                    sleepstudy.assign(x=np.arange(180) % 7))
    assert "Days:x" in m3.fixef.index
