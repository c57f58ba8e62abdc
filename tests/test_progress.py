"""The progress display: one line per optimizer iteration on stderr when asked for (or for
big fits by default), none otherwise; the fit is the same either way."""

import pytest

import jaxlmm
from jaxlmm.cli import main

F = "Reaction ~ Days + (Days | Subject)"


def test_progress_lines(sleepstudy, capfd):
    m = jaxlmm.fit(F, sleepstudy, progress=True)
    err = capfd.readouterr().err.strip().splitlines()
    lines = [s for s in err if s.startswith("iteration")]
    assert len(lines) >= m.optinfo["iterations"]
    last = lines[-1].split()
    assert float(last[3]) == pytest.approx(m.objective, rel=1e-9)
    assert "elapsed" in lines[-1]
    quiet = jaxlmm.fit(F, sleepstudy)  # small fit: off by default
    assert "iteration" not in capfd.readouterr().err
    assert quiet.objective == pytest.approx(m.objective, abs=1e-9)


def test_cli_progress_flag(capfd):
    assert main(["fit", F, "--data", "sleepstudy", "--progress", "--chunk-rows", "100"]) == 0
    out = capfd.readouterr()
    assert "iteration" in out.err and "REML criterion at convergence: 1743.6" in out.out
