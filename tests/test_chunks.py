"""Sufficient statistics in chunks: statistics of disjoint rows computed with one Scale add
up to those of all rows, and a pass in chunks (``suffstats(..., chunk_rows=)``) gives the
same criterion and fit as one pass, for one factor, nested, crossed, weighted and offset
designs."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm.stats import chunk_stats, sample_scale

DESIGNS = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", {}),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin", {}),
    "pastes": ("strength ~ 1 + (1 | batch/cask)", "Pastes", {}),
}


def _design(name):
    formula, ds, kw = DESIGNS[name]
    return jaxlmm.design(formula, jaxlmm.datasets.load(ds), **kw)


def _weighted_design():
    ss = jaxlmm.datasets.load("sleepstudy")
    rng = np.random.default_rng(5)
    return jaxlmm.design("Reaction ~ Days + (Days | Subject)", ss,
                         weights=rng.uniform(0.5, 2.0, len(ss)),
                         offset=rng.normal(size=len(ss)))


def _flat(stats):
    return [np.asarray(a) for a in (*stats.D, *stats.C.values(), *stats.P.values(), *stats.E,
                                    stats.M, stats.n, stats.ldw)]


@pytest.mark.parametrize("name", [*DESIGNS, "weighted_offset"])
def test_two_chunks_add_up(name):
    d = _weighted_design() if name == "weighted_offset" else _design(name)
    n = d.X.shape[0]
    scale = sample_scale(d, rows=50)
    cut = n // 3
    a = chunk_stats(d, slice(0, cut), scale)
    b = chunk_stats(d, np.arange(cut, n), scale, pad_to=n)  # padded: zero-weight rows
    whole = chunk_stats(d, slice(0, n), scale)
    for x, y in zip(_flat(a + b), _flat(whole)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-10)
    assert float((a + b).n) == n
    # a different Scale is an exact reparametrization: same criterion as the one-pass stats
    ref = jaxlmm.suffstats(d)
    rng = np.random.default_rng(1)
    for _ in range(3):
        th = jnp.asarray(rng.uniform(0.1, 2.0, d.struct.n_theta))
        for reml in (True, False):
            assert float(jaxlmm.objective(th, a + b, reml)) == pytest.approx(
                float(jaxlmm.objective(th, ref, reml)), rel=1e-11)


def test_adding_statistics_of_different_scales_is_an_error():
    d = _design("sleepstudy")
    a = chunk_stats(d, slice(0, 90), sample_scale(d, rows=20))
    b = chunk_stats(d, slice(90, 180), sample_scale(d, rows=30))
    with pytest.raises(ValueError, match="different Scales"):
        a + b


@pytest.mark.parametrize("name", list(DESIGNS))
def test_fit_in_chunks_equals_one_pass(name):
    d = _design(name)
    one = jaxlmm.fit_stats(jaxlmm.suffstats(d))
    chunked = jaxlmm.fit_stats(jaxlmm.suffstats(d, chunk_rows=37))
    assert float(chunked.objective) == pytest.approx(float(one.objective), abs=1e-9)
    np.testing.assert_allclose(np.asarray(chunked.beta), np.asarray(one.beta), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(chunked.theta), np.asarray(one.theta), rtol=1e-5,
                               atol=1e-7)


def test_fit_with_chunk_rows(sleepstudy):
    m1 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    m2 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, chunk_rows=50)
    assert m2.objective == pytest.approx(m1.objective, abs=1e-9)
    np.testing.assert_allclose(m2.fixef, m1.fixef, rtol=1e-8)
    with pytest.raises(ValueError, match="chunk_rows must be a positive"):
        jaxlmm.suffstats(m1.design, chunk_rows=0)


def test_large_offsets_stay_accurate():
    """y around 1e9 with unit noise: the sampled Scale centres it, as the one-pass Scale."""
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(200), 10)
    y = 1e9 + rng.normal(size=200)[g] + rng.normal(size=g.size)
    d = jaxlmm.design("y ~ 1 + (1 | g)", pd.DataFrame({"y": y, "g": g}))
    one = jaxlmm.fit_stats(jaxlmm.suffstats(d))
    chunked = jaxlmm.fit_stats(jaxlmm.suffstats(d, chunk_rows=300))
    assert float(chunked.objective) == pytest.approx(float(one.objective), abs=1e-8)
    np.testing.assert_allclose(np.asarray(chunked.theta), np.asarray(one.theta), rtol=1e-6)
