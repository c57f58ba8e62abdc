"""Shrinkage and caterpillar plots: what is drawn, where, in which order (headless, Agg).

Positions are checked against lme4's conditional modes and fixed effects in the lme4
fixtures (tests/fixtures/lme4/*.json: ranef(m, condVar = TRUE), fixef(m)); the order of
levels is lme4's dotplot order (reorder() by the first column: smallest at the bottom).
"""

import importlib.util
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

import jaxlmm  # noqa: E402
from jaxlmm.errors import DataError  # noqa: E402
from jaxlmm.plots import caterpillar_plot, shrinkage_plot  # noqa: E402

from conftest import load_fixture  # noqa: E402

Z95 = 1.959963984540054
# jaxlmm's optimum vs lme4's: conditional modes agree to 4.0e-6 of the panel's largest mode
# (sleepstudy; Penicillin 2e-7, Dyestuff 1e-9), condsd to 1.7e-6 relative, fixef to 4e-13:
# plotted coordinates are compared at RTOL times the panel's largest value.
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sleep():
    return jaxlmm.fit("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))


@pytest.fixture(scope="module")
def penicillin():
    return jaxlmm.fit("diameter ~ 1 + (1 | plate) + (1 | sample)",
                      jaxlmm.datasets.load("Penicillin"))


@pytest.fixture(scope="module")
def dyestuff():
    return jaxlmm.fit("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("Dyestuff"))


def lme4_ranef(name, grpvar, term):
    """lme4's rows of one (factor, term) as a DataFrame indexed by level."""
    rows = pd.DataFrame(load_fixture(name)["ranef"])
    rows = rows[(rows.grpvar == grpvar) & (rows.term == term)]
    return rows.set_index("grp")


def close(a, b, scale=None):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.max(np.abs(b)) if scale is None else scale
    np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * scale)


def by_label(ax, label):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


def arrows(ax):
    return [p for p in ax.patches if isinstance(p, FancyArrowPatch)]


def ytick_texts(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def pooling_table(m, drop_no_pooling=()):
    """The shrinkage(m) contract built independently: per-level OLS (no pooling), pooled OLS
    (complete pooling), fixef + ranef (partial pooling); single-factor models only."""
    fr, re = m.frame, m.ranef()
    (term_obj,) = fr.terms
    cp, *_ = np.linalg.lstsq(fr.X, fr.y, rcond=None)
    fixef = m.fixef
    rows = []
    for c, term in enumerate(term_obj.columns):
        for j, lev in enumerate(term_obj.levels):
            sel = term_obj.codes == j
            coef, *_ = np.linalg.lstsq(term_obj.Z[sel], fr.y[sel], rcond=None)
            cond = re[(re.term == term) & (re.grp == lev)].condval.item()
            npool = np.nan if lev in drop_no_pooling else coef[c]
            rows.append(dict(grpvar=term_obj.group, grp=lev, term=term, n=int(sel.sum()),
                             population=fixef[term], complete_pooling=cp[c],
                             no_pooling=npool, no_pooling_note="" if np.isfinite(npool)
                             else "dropped", partial_pooling=fixef[term] + cond,
                             condval=cond, shrinkage=np.nan))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ import behaviour
def test_import_jaxlmm_does_not_load_matplotlib():
    code = ("import sys, jaxlmm, jaxlmm.plots; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_matplotlib_says_how_to_install(monkeypatch, dyestuff):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxlmm\[plot\]'"):
        caterpillar_plot(dyestuff)
    with pytest.raises(ImportError, match=r"pip install 'jaxlmm\[plot\]'"):
        shrinkage_plot(table=pooling_table(dyestuff))


# ------------------------------------------------------------------ caterpillar
def test_caterpillar_sleepstudy_matches_lme4_dotplot(sleep):
    fig = caterpillar_plot(sleep)
    assert len(fig.axes) == 2
    ref_i = lme4_ranef("sleepstudy_reml", "Subject", "(Intercept)")
    order = ref_i.condval.sort_values(kind="stable").index.tolist()  # lme4: reorder()
    for ax, term in zip(fig.axes, ["(Intercept)", "Days"]):
        assert ax.get_title() == term
        ref = lme4_ranef("sleepstudy_reml", "Subject", term).loc[order]
        (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
        (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        segs = np.array(bars.get_segments())
        assert segs.shape == (18, 2, 2)
        xy = dots.get_offsets()
        assert xy.shape == (18, 2)
        np.testing.assert_array_equal(xy[:, 1], np.arange(18))        # bottom to top
        close(xy[:, 0], ref.condval)
        close(segs[:, 0, 0], ref.condval - Z95 * ref.condsd)
        close(segs[:, 1, 0], ref.condval + Z95 * ref.condsd)
        np.testing.assert_array_equal(segs[:, 0, 1], np.arange(18))
        (zero,) = ax.lines
        assert np.all(np.asarray(zero.get_xdata()) == 0.0)
    assert ytick_texts(fig.axes[0]) == order
    assert np.all(np.diff(by_label(fig.axes[0], "conditional mode").get_offsets()[:, 0]) >= 0)
    assert fig._suptitle.get_text() == "Subject"


def test_caterpillar_penicillin_two_factors(penicillin):
    fig = caterpillar_plot(penicillin)
    assert len(fig.axes) == 2
    assert [sf._suptitle.get_text() for sf in fig.subfigs] == ["plate", "sample"]
    for ax, grpvar, G in zip(fig.axes, ["plate", "sample"], [24, 6]):
        ref = lme4_ranef("penicillin_reml", grpvar, "(Intercept)")
        labels = ytick_texts(ax)
        assert sorted(labels) == sorted(ref.index) and len(labels) == G
        x = by_label(ax, "conditional mode").get_offsets()[:, 0]
        # sorted; plates with identical data tie, so check values rather than names there
        close(x, np.sort(ref.condval.to_numpy()))
        close(ref.condval.loc[labels], np.sort(ref.condval.to_numpy()))
        assert len(by_label(ax, "interval").get_segments()) == G


def test_caterpillar_level_ax_and_files(dyestuff, tmp_path):
    fig, ax = plt.subplots()
    png, svg = tmp_path / "cat.png", tmp_path / "cat.svg"
    out = caterpillar_plot(dyestuff, group="Batch", level=0.9, ax=ax, path=png)
    assert out is fig
    caterpillar_plot(dyestuff, path=svg)
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert svg.stat().st_size > 1000 and b"<svg" in svg.read_bytes()[:1000]
    assert ax.get_title() == "Batch: (Intercept)"
    ref = lme4_ranef("dyestuff_reml", "Batch", "(Intercept)").sort_values("condval")
    assert ytick_texts(ax) == ref.index.tolist()
    segs = np.array(by_label(ax, "interval").get_segments())
    z90 = 1.6448536269514722
    close(segs[:, 1, 0] - segs[:, 0, 0], 2 * z90 * ref.condsd)


def test_caterpillar_many_levels_hides_names():
    rng = np.random.default_rng(1)
    re = pd.DataFrame(dict(grpvar="g", term="(Intercept)", grp=[f"L{i}" for i in range(60)],
                           condval=rng.normal(size=60), condsd=0.1))
    fig = caterpillar_plot(re)
    (ax,) = fig.axes
    assert ytick_texts(ax) == []
    assert len(by_label(ax, "interval").get_segments()) == 60
    few = caterpillar_plot(re.iloc[:50])
    assert len(ytick_texts(few.axes[0])) == 50


def test_caterpillar_errors(sleep, tmp_path):
    with pytest.raises(DataError, match="'Batch' is not a grouping factor.*'Subject'"):
        caterpillar_plot(sleep, group="Batch")
    with pytest.raises(DataError, match="level=1.5"):
        caterpillar_plot(sleep, level=1.5)
    with pytest.raises(DataError, match=r"\.png or \.svg"):
        caterpillar_plot(sleep, path=tmp_path / "x.jpeg")
    _, ax = plt.subplots()
    with pytest.raises(DataError, match="2 panel"):
        caterpillar_plot(sleep, ax=ax)
    with pytest.raises(DataError, match="condsd"):
        caterpillar_plot(sleep.ranef(condvar=False))


# ------------------------------------------------------------------ shrinkage
def test_shrinkage_2d_sleepstudy(sleep, tmp_path):
    table = pooling_table(sleep)
    fig = shrinkage_plot(sleep, table=table, path=tmp_path / "s.svg")
    assert (tmp_path / "s.svg").stat().st_size > 1000
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("(Intercept)", "Days")
    assert ax.get_title() == "Shrinkage: Subject"
    lme4 = load_fixture("sleepstudy_reml")["fixef"]
    pop = by_label(ax, "population").get_offsets()
    np.testing.assert_allclose(pop[0], [lme4["(Intercept)"], lme4["Days"]], rtol=1e-6)
    cp = by_label(ax, "complete pooling").get_offsets()[0]
    np.testing.assert_allclose(cp, np.linalg.lstsq(sleep.frame.X, sleep.frame.y,
                                                   rcond=None)[0], rtol=1e-12)
    pp = by_label(ax, "partial pooling").get_offsets()
    ri = lme4_ranef("sleepstudy_reml", "Subject", "(Intercept)")
    rd = lme4_ranef("sleepstudy_reml", "Subject", "Days")
    close(pp[:, 0], lme4["(Intercept)"] + ri.condval, scale=lme4["(Intercept)"])
    close(pp[:, 1], lme4["Days"] + rd.condval, scale=lme4["Days"])
    npool = by_label(ax, "no pooling").get_offsets()
    assert npool.shape == (18, 2)
    arr = arrows(ax)
    assert len(arr) == 18
    # each arrow runs from the level's no-pooling point to its partial-pooling point
    for a, start, end in zip(arr, npool, pp):
        np.testing.assert_allclose(a._posA_posB, [tuple(start), tuple(end)], rtol=1e-12)


def test_shrinkage_missing_no_pooling_drawn_as_points_only(sleep):
    table = pooling_table(sleep, drop_no_pooling=("308", "335", "372"))
    fig = shrinkage_plot(table=table)
    ax = fig.axes[0]
    assert len(arrows(ax)) == 15
    assert len(by_label(ax, "no pooling").get_offsets()) == 15
    assert len(by_label(ax, "partial pooling").get_offsets()) == 18


def test_shrinkage_1d_scalar_term(dyestuff, tmp_path):
    table = pooling_table(dyestuff)
    fig = shrinkage_plot(dyestuff, table=table, path=tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
    (ax,) = fig.axes
    ref = lme4_ranef("dyestuff_reml", "Batch", "(Intercept)").sort_values("condval")
    assert ytick_texts(ax) == ref.index.tolist()          # sorted by partial pooling
    assert len(arrows(ax)) == 6
    mu = load_fixture("dyestuff_reml")["fixef"]["(Intercept)"]
    (pop,) = [ln for ln in ax.lines if ln.get_label() == "population"]
    np.testing.assert_allclose(pop.get_xdata(), [mu, mu], rtol=1e-7)
    pp = by_label(ax, "partial pooling").get_offsets()
    close(pp[:, 0], mu + ref.condval.to_numpy(), scale=mu)
    np.testing.assert_array_equal(pp[:, 1], np.arange(6))
    assert ax.get_xlabel() == "(Intercept)" and ax.get_ylabel() == "Batch"


def test_shrinkage_one_term_of_a_vector_factor(sleep):
    fig = shrinkage_plot(table=pooling_table(sleep), terms=["Days"])
    ax = fig.axes[0]
    ref = lme4_ranef("sleepstudy_reml", "Subject", "Days").sort_values("condval")
    assert ytick_texts(ax) == ref.index.tolist()
    assert ax.get_xlabel() == "Days"


def test_shrinkage_errors(sleep, tmp_path):
    table = pooling_table(sleep)
    with pytest.raises(DataError, match="'plate' is not a grouping factor.*'Subject'"):
        shrinkage_plot(table=table, group="plate")
    with pytest.raises(DataError, match="'Day' is not a random-effect column.*'Days'"):
        shrinkage_plot(table=table, terms=["(Intercept)", "Day"])
    with pytest.raises(DataError, match="one term .* or two different terms"):
        shrinkage_plot(table=table, terms=["Days", "Days"])
    with pytest.raises(DataError, match="partial_pooling"):
        shrinkage_plot(table=table.drop(columns="partial_pooling"))
    with pytest.raises(DataError, match=r"\.png or \.svg"):
        shrinkage_plot(table=table, path=tmp_path / "x")
    with pytest.raises(DataError, match="'plate' is not a grouping factor"):
        shrinkage_plot(sleep, group="plate")


@pytest.mark.skipif(importlib.util.find_spec("jaxlmm.shrinkage") is None,
                    reason="jaxlmm.shrinkage not available")
def test_shrinkage_plot_from_model(sleep, penicillin):
    ax = shrinkage_plot(sleep).axes[0]
    assert len(arrows(ax)) == 18
    np.testing.assert_allclose(by_label(ax, "population").get_offsets()[0],
                               sleep.fixef.to_numpy(), rtol=1e-12)
    ax = shrinkage_plot(penicillin, group="sample").axes[0]
    assert len(arrows(ax)) == 6 and len(ytick_texts(ax)) == 6
    assert ax.get_title() == "Shrinkage: sample"


def test_model_methods_draw_the_same_plots(tmp_path):
    m = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
    fig = m.shrinkage_plot(path=tmp_path / "s.svg")
    arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 18 and (tmp_path / "s.svg").stat().st_size > 0
    fig2 = m.caterpillar_plot(level=0.9)
    assert len(fig2.axes) == 2
    plt.close("all")
