"""The memory estimate of a fit (memory.py) and the error raised, before any work, when the
device does not have it."""

import numpy as np
import pytest

import jaxlmm
from jaxlmm import memory
from jaxlmm.memory import InsufficientMemoryError


def _crossed(k=300):
    """Crossed scalar factors with 2k and k levels: the one with k levels is the dense block."""
    rng = np.random.default_rng(0)
    n = 6000
    u, i = rng.integers(0, 2 * k, n), rng.integers(0, k, n)
    y = rng.normal(size=2 * k)[u] + rng.normal(size=k)[i] + rng.normal(size=n)
    return jaxlmm.design_from_arrays(y, np.ones((n, 1)), [("u", u), ("i", i)])


def test_estimate_parts(sleepstudy):
    d = jaxlmm.design("Reaction ~ Days + (Days | Subject)", sleepstudy)
    e = memory.estimate(d)
    # 18 subjects, q = 2, p = 2: D and E blocks 18 (4 + 6), M 3 x 3, in float64
    assert e.statistics == (18 * (4 + 6) + 9) * 8
    assert e.total == e.statistics + max(e.pass_temporaries, e.evaluation)
    assert e.inputs > 0 and e.pattern >= 0 and e.dense_block == 9 * 8
    assert memory.estimate(d, dtype=np.float32).statistics == e.statistics // 2
    half = memory.estimate(d, chunk_rows=90)
    assert half.pass_temporaries == e.pass_temporaries // 2
    assert "GiB in all" in str(e)


def test_dense_block_dominates_crossed():
    small, big = memory.estimate(_crossed(300)), memory.estimate(_crossed(600))
    m = _crossed(600).struct.m
    assert m == 600 + 2 and big.dense_block == m * m * 8
    assert big.evaluation > 3 * small.evaluation  # quadratic in the dense block's levels


def test_check_raises_before_work_with_hints(sleepstudy):
    d = jaxlmm.design("Reaction ~ Days + (Days | Subject)", sleepstudy)
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* GiB but cpu device 0 "
                       r"has 0.00 GiB free .*chunk_rows"):
        memory.check(d, free=1000)
    with pytest.raises(InsufficientMemoryError, match=r"dense block of the crossed factors is "
                       r"\d+ x \d+"):
        memory.check(_crossed(600), free=1000)
    assert memory.check(d).total > 0  # fits in this machine's memory
    assert isinstance(InsufficientMemoryError("x"), MemoryError)


def test_fit_checks_memory_first(sleepstudy, monkeypatch):
    monkeypatch.setattr(memory, "available", lambda device=None: 1000)
    with pytest.raises(InsufficientMemoryError):
        jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)


def test_available_on_cpu():
    free = memory.available()
    assert free is None or free > 0


def test_program_bytes_holds_its_arguments():
    """memory.program_bytes: XLA's accounting of a compiled fit is at least its arguments
    (the statistics) and the same for the same program."""
    import jax

    from jaxlmm.memory import _nbytes, program_bytes

    d = jaxlmm.design("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
    st = jaxlmm.suffstats(d)
    compiled = jax.jit(lambda s: jaxlmm.fit_stats(s)).lower(st).compile()
    used = program_bytes(compiled)
    assert isinstance(used, int) and used >= _nbytes(st)
    assert program_bytes(compiled) == used
