"""The jaxlmm command line (jaxlmm.cli.main and python -m jaxlmm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jaxlmm
from jaxlmm.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
FORMULA = "Reaction ~ Days + (Days | Subject)"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc, out, err):
    assert rc == 2
    assert err.startswith("error: ")
    assert "Traceback" not in err and "Traceback" not in out


def test_fit_prints_summary(capsys):
    rc, out, err = run(capsys, "fit", FORMULA, "--data", "sleepstudy")
    assert rc == 0
    assert out.startswith("Linear mixed model fit by REML. t-tests use Satterthwaite's method")
    assert "   Data: sleepstudy" in out
    assert "REML criterion at convergence: 1743.6" in out
    assert "Number of obs: 180, groups:  Subject, 18" in out
    assert "timing" not in err


def test_fit_ml_case_insensitive_ranef_verbose(capsys):
    rc, out, err = run(capsys, "fit", FORMULA, "--data", "SleepStudy", "--ml", "--ranef", "-v")
    assert rc == 0
    assert "maximum likelihood" in out
    assert "1763.9" in out
    assert "Conditional modes of the random effects:" in out
    assert out.count("Subject") > 36  # 18 levels x 2 terms
    assert "timing:" in err


def test_fit_json(capsys):
    rc, out, err = run(capsys, "fit", FORMULA, "--data", "sleepstudy", "--json", "--ranef")
    assert rc == 0

    def no_constants(name):
        raise AssertionError(f"invalid JSON constant {name}")

    d = json.loads(out, parse_constant=no_constants)
    assert d["objective"] == pytest.approx(1743.628, abs=1e-3)
    assert d["reml"] is True and d["nobs"] == 180
    assert d["fixef"]["Days"] == pytest.approx(10.467, abs=1e-3)
    assert d["varcorr"][0]["var2"] is None
    assert len(d["ranef"]) == 36


def test_bad_formula(capsys):
    rc, out, err = run(capsys, "fit", "Reaction ~ Days + (Days | Subject", "--data", "sleepstudy")
    assert_clean_error(rc, out, err)
    assert out == ""


def test_unknown_column(capsys):
    rc, out, err = run(capsys, "fit", "Reaction ~ Dayz + (1 | Subject)", "--data", "sleepstudy")
    assert_clean_error(rc, out, err)
    assert "Dayz" in err


def test_unknown_weights_column(capsys):
    rc, out, err = run(capsys, "fit", FORMULA, "--data", "sleepstudy", "--weights", "nope")
    assert_clean_error(rc, out, err)
    assert "nope" in err


def test_unknown_dataset(capsys):
    rc, out, err = run(capsys, "fit", FORMULA, "--data", "sleepstdy")
    assert_clean_error(rc, out, err)
    assert "unknown dataset" in err and "sleepstudy" in err


def test_missing_file(capsys, tmp_path):
    rc, out, err = run(capsys, "fit", FORMULA, "--data", str(tmp_path / "nothere.csv"))
    assert_clean_error(rc, out, err)
    assert "not found" in err and "nothere.csv" in err


def test_csv_path(capsys, tmp_path):
    df = jaxlmm.datasets.load("sleepstudy")
    df["w"] = 1.0 + (df["Days"] % 3)
    path = tmp_path / "sleep.csv"
    df.to_csv(path, index=False)
    rc, out, err = run(capsys, "fit", FORMULA, "--data", str(path))
    assert rc == 0, err
    assert "   Data: sleep.csv" in out
    assert "REML criterion at convergence: 1743.6" in out  # Subject read back as integers
    rc, out, err = run(capsys, "fit", FORMULA, "--data", str(path), "--weights", "w")
    assert rc == 0, err
    assert "Weights: w" in out


def test_usage_errors(capsys):
    rc, out, err = run(capsys)
    assert rc == 2 and "usage" in err
    rc, out, err = run(capsys, "fit", FORMULA)  # --data missing
    assert rc == 2 and "--data" in err


def test_datasets_in_process(capsys):
    rc, out, err = run(capsys, "datasets")
    assert rc == 0
    assert [ln.split()[0] for ln in out.splitlines()] == jaxlmm.datasets.names()


def test_python_m_jaxlmm_datasets():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([sys.executable, "-m", "jaxlmm", "datasets"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = [ln.split()[0] for ln in proc.stdout.splitlines()]
    assert "sleepstudy" in names and "Penicillin" in names


def test_fit_anova_wald_confint_and_lme4_layout(capsys):
    rc, out, err = run(capsys, "fit", FORMULA, "--data", "sleepstudy", "--ddf", "lme4",
                       "--anova", "--confint", "Wald")
    assert rc == 0, err
    assert out.startswith("Linear mixed model fit by REML ['lmerMod']")
    assert "Type III Analysis of Variance Table with Satterthwaite's method" in out
    assert "Confidence intervals (Wald):" in out and "97.5 %" in out
