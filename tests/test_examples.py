"""The scripts in examples/ run (at their small size) and give sensible numbers."""

import importlib.util
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulation_study():
    r = load("simulation_study").main(small=True)
    assert r["replicates"] == 50
    assert int(np.sum(r["status_counts"])) == 50  # every fit reports a status
    assert r["status_counts"][0] >= 48  # and nearly all converge
    assert np.all((r["coverage"] >= 0.8) & (r["coverage"] <= 1.0))
    # bias well inside the sampling error of 50 replicates (sd(beta-hat) ~ 6.8 and 1.5)
    assert np.all(np.abs(r["beta_bias"]) < 3 * r["beta_rmse"] / np.sqrt(50) + 1e-9)
    assert abs(r["sigma_bias"]) < 2.0 and 0.5 < r["sigma_rmse"] < 3.0
    assert 0.0 <= r["singular_fraction"] <= 0.2


def test_optax_features():
    r = load("optax_features").main(small=True)
    assert r["last_loss"] < r["first_loss"] - 5.0
    assert np.all(np.isfinite(r["losses"]))
    assert r["status"] == 0
    assert r["sigma_b"] == pytest.approx(0.5, rel=0.3)
    assert r["sigma"] == pytest.approx(0.3, rel=0.3)
    assert r["r2"] > r["r2_init"] and r["r2"] > 0.95


def test_optax_lbfgs():
    r = load("optax_lbfgs").main(small=True)
    assert r["criterion"] == pytest.approx(r["fit_stats_criterion"], abs=1e-4)
    assert r["criterion"] == pytest.approx(r["fit_criterion"], abs=1e-4)
    assert r["criterion"] == pytest.approx(r["lme4_criterion"], abs=1e-3)
    np.testing.assert_allclose(r["theta"], r["fit_stats_theta"], atol=1e-4)
    assert np.all(r["theta"][[0, 2]] >= 0)
