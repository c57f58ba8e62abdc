"""Convergence and singularity diagnostics at the optimum (diagnostics.py)."""

import numpy as np
import pandas as pd

import jaxlmm
from jaxlmm.diagnostics import DECREMENT_TOL, check


def test_clean_fit_passes_the_check(sleepstudy):
    m = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    d = m.diagnostics
    assert d["ok"] and d["notes"] == [] and d["what_to_try"] is None
    assert 0 <= d["newton_decrement"] < 1e-10
    assert d["hessian_min_eig"] > 0 and d["free"] == [True, True, True]
    assert m.messages == []
    assert m.to_dict()["diagnostics"]["ok"]


def test_singular_fit_names_the_component():
    m = jaxlmm.fit("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("Dyestuff2"))
    d = m.diagnostics
    assert d["ok"] and d["free"] == [False] and d["bound_gradient"][0] >= 0
    (msg,) = m.messages
    assert msg.startswith("boundary (singular) fit") and "Batch.(Intercept)" in msg
    assert "(x || g)" in msg  # what to try
    assert "boundary (singular) fit" in m.summary()


def test_singular_correlated_term_keeps_free_coordinates(sleepstudy):
    # a slope variance forced to zero by the data: drop most of the slope signal
    df = sleepstudy.copy()
    rng = np.random.default_rng(1)
    df["Reaction"] = 250 + 10 * df["Days"] + rng.normal(0, 30, len(df)) \
        + np.repeat(rng.normal(0, 20, 18), 10)
    m = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", df)
    assert m.singular_components == ["Subject.Days"]
    d = m.diagnostics
    assert d["ok"] and d["free"] == [True, True, False]
    assert "Subject.Days" in " ".join(m.messages)


def test_not_converged_says_what_to_try(sleepstudy):
    m = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, max_iter=2)
    assert not m.converged
    d = m.diagnostics
    assert not d["ok"] and "max_iter" in d["what_to_try"]
    assert d["newton_decrement"] > DECREMENT_TOL
    assert any(s.startswith("convergence:") and "what to try" in s for s in m.messages)
    assert "what to try" in m.summary()


def test_check_flags_saddle_flat_and_inward_bound_gradient():
    theta, lower = np.array([1.0, 0.5]), np.array([0.0, -np.inf])
    saddle = check(theta, lower, 10.0, np.zeros(2), np.diag([1.0, -1.0]), 0)
    assert not saddle["ok"] and "saddle" in saddle["notes"][0]
    flat = check(theta, lower, 10.0, np.zeros(2), np.diag([1.0, 1e-12]), 0)
    assert "flat" in flat["notes"][0]
    moving = check(theta, lower, 10.0, np.array([1.0, 0.0]), np.eye(2), 0)
    assert not moving["ok"] and "decrement" in moving["notes"][0]
    bound = check(np.array([0.0, 0.5]), lower, 10.0, np.array([-1.0, 0.0]), np.eye(2), 0)
    assert not bound["ok"] and "inward" in bound["notes"][0]
    failed = check(theta, lower, 10.0, np.zeros(2), np.eye(2), 2)
    assert not failed["ok"] and "line search" in failed["what_to_try"]


def test_no_spurious_warning_on_large_data():
    """lme4 flags large fits by an absolute gradient (tol 0.002) that grows with n (lme4
    issue #783); the Newton decrement is in deviance units and stays at rounding level."""
    rng = np.random.default_rng(7)
    G, per = 5000, 60
    g = np.repeat(np.arange(G), per)
    x = rng.normal(size=G * per)
    b = rng.normal(size=(G, 2)) * [1.0, 0.3]
    y = 1 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(size=G * per)
    m = jaxlmm.fit("y ~ x + (x | g)", pd.DataFrame({"y": y, "x": x, "g": g}))
    d = m.diagnostics
    assert m.converged and d["ok"] and m.messages == []
    assert d["newton_decrement"] < 1e-8
