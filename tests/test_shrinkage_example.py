"""examples/shrinkage_study.py runs at its small size and shows what it claims: shrinkage
grows as classrooms shrink, partial pooling beats no pooling on MSE, the identifiability
shifts are exact, and the batched no-pooling estimates equal the per-class host fits."""

import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxlmm.errors import DataError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    path = ROOT / "examples" / "shrinkage_study.py"
    spec = importlib.util.spec_from_file_location("examples_shrinkage_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _load()


@pytest.fixture(scope="module")
def small():
    return ex.main(small=True)


def _rows(table, coef):
    return table[table["coef"] == coef].reset_index(drop=True)


def test_simulation_mse(small):
    assert small["replicates"] == 40
    assert small["status_counts"][0] == 40  # every replicate fit converged
    mse = small["mse"]
    assert list(mse["classes"][::2]) == [16, 9, 15]
    assert np.all(mse["ratio"] < 1.0)  # partial pooling beats no pooling in every band
    for coef, small_band_max in (("intercept", 0.4), ("slope", 0.05)):
        t = _rows(mse, coef)
        assert t["ratio"][0] < small_band_max  # and by far in the smallest classrooms
        assert t["ratio"][0] < t["ratio"][1] and t["ratio"][0] < t["ratio"][2]
    t = _rows(mse, "intercept")
    assert 0.6 < t["ratio"][2] < 1.0  # large classrooms: the two nearly agree
    assert np.all(t["mse_partial"] < t["mse_pooled"])  # pooling everything is worse


def test_shrinkage_by_size(small):
    sh = small["shrinkage"]
    for coef in ex.COLUMNS:
        t = _rows(sh, coef)
        assert t["mean_abs_move"][0] > t["mean_abs_move"][1] > t["mean_abs_move"][2]
        assert t["kept"][0] < t["kept"][2]
        assert t["rank_corr"][2] > 0.9 and t["same_sign"][2] > 0.9
        assert t["rmse_partial"][0] < t["rmse_nopool"][0]
    t = _rows(sh, "intercept")
    assert t["kept"][0] < 0.5 < 0.9 < t["kept"][2]
    # the fitted population line is near the truth (se of the intercept ~ 0.3 / sqrt(40))
    assert abs(small["population"][0] - ex.TRUTH["beta"][0]) < 0.1
    assert abs(small["population"][1] - ex.TRUTH["beta"][1]) < 0.002


def test_identifiability_is_exact(small):
    r = small["identifiability"]
    assert r["shift_intercept"] == pytest.approx(r["c"], abs=1e-9)
    assert abs(r["shift_slope"]) < 1e-10
    for k in ("y_plus_c_max_ranef_diff", "y_plus_c_max_theta_diff", "y_plus_c_objective_diff",
              "y_plus_c_sigma_diff", "offset_max_ranef_diff", "offset_max_line_diff",
              "offset_objective_diff"):
        assert abs(r[k]) < 1e-8, k
    np.testing.assert_allclose(r["offset_fixef_shift"], -r["mu"], atol=1e-9)


def test_no_pooling_not_estimable():
    df = pd.DataFrame({
        "classroom": ["a", "b", "b", "b", "c", "c", "c"],
        "minutes": [1.0, 5.0, 5.0, 5.0, -1.0, 0.0, 2.0],
        "gpa": [3.0, 2.0, 3.0, 4.0, 2.0, 2.5, 3.5],
    })
    own = ex.no_pooling(df)
    assert own.loc["a", "size"] == 1 and own.loc["b", "size"] == 3
    assert own.loc[["a", "b"], ["intercept", "slope"]].isna().all().all()
    # class c: exact least squares through (-1, 2), (0, 2.5), (2, 3.5) is y = 2.5 + 0.5 x
    np.testing.assert_allclose(own.loc["c", ["intercept", "slope"]], [2.5, 0.5], atol=1e-12)
    codes = jnp.asarray(pd.Categorical(df["classroom"]).codes.astype(np.int32))
    jx = np.asarray(ex.own_lines(jnp.asarray(df["gpa"].to_numpy()),
                                 jnp.asarray(df["minutes"].to_numpy()), codes, 3))
    np.testing.assert_allclose(jx, own[["intercept", "slope"]].to_numpy(), atol=1e-12)


def test_batched_no_pooling_matches_host():
    df, truth = ex.classrooms(3, n_classes=25)
    cat = pd.Categorical(df["classroom"])
    jx = np.asarray(ex.own_lines(jnp.asarray(df["gpa"].to_numpy()),
                                 jnp.asarray(df["minutes"].to_numpy()),
                                 jnp.asarray(cat.codes.astype(np.int32)), len(cat.categories)))
    host = ex.no_pooling(df).loc[list(cat.categories), ["intercept", "slope"]].to_numpy()
    np.testing.assert_allclose(jx, host, rtol=1e-9, atol=1e-12)
    pooled = ex.complete_pooling(df)
    X = np.column_stack([np.ones(len(df)), df["minutes"]])
    np.testing.assert_allclose(X.T @ (df["gpa"] - X @ pooled), 0.0, atol=1e-9)


def test_classrooms_generator():
    df, truth = ex.classrooms(11)
    assert len(truth) == 40 and truth["size"].min() == 2 and truth["size"].max() == 60
    assert len(df) == truth["size"].sum() and abs(df["minutes"].mean()) < 1e-10
    assert df.groupby("classroom").size().equals(truth["size"].rename(None))
    df2, _ = ex.classrooms(11)
    pd.testing.assert_frame_equal(df, df2)  # reproducible from the seed
    with pytest.raises(DataError, match="min_size"):
        ex.classrooms(1, min_size=10, max_size=5)
    with pytest.raises(DataError, match="n_classes"):
        ex.classrooms(1, n_classes=1)


def test_figures(small, tmp_path):
    pytest.importorskip("matplotlib")
    paths = ex.figures(tmp_path, small)
    assert len(paths) == 4 and all(p.exists() and p.stat().st_size > 1000 for p in paths)
