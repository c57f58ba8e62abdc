"""Shrinkage and caterpillar plots of a fitted model (optional extra: ``jaxlmm[plot]``).

* :func:`shrinkage_plot`: each level's no-pooling estimate (a per-level least-squares fit)
  joined by an arrow to its partial-pooling estimate (beta + b, the mixed model's), with the
  population value (beta) and the complete-pooling estimate (one fit ignoring the grouping)
  marked: the picture of shrinkage (MixedModelsMakie's ``shrinkageplot``). Two terms of a
  vector-valued factor give the 2-D plane; one term gives a 1-D version.
* :func:`caterpillar_plot`: lme4's ``dotplot(ranef(m, condVar = TRUE))``: per grouping
  factor one panel per random-effect column, the conditional modes b sorted by the first
  column (smallest at the bottom) with intervals b +- z * condsd, z = Phi^{-1}((1 + level)/2)
  (1.959964 at level 0.95; lme4 hard-codes 1.96).

Both return the matplotlib ``Figure``, draw into ``ax=`` when given, and save to ``path=``
(PNG or SVG, chosen by the suffix). matplotlib is imported only when a plot is drawn:
``import jaxlmm`` (and ``import jaxlmm.plots``) never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

__all__ = ["shrinkage_plot", "caterpillar_plot"]

_SUFFIXES = (".png", ".svg")
_MAX_LABELLED = 50          # level names on the y axis up to this many levels
_SHRINKAGE_COLUMNS = ("grpvar", "grp", "term", "population", "complete_pooling",
                      "no_pooling", "partial_pooling")
_RANEF_COLUMNS = ("grpvar", "term", "grp", "condval", "condsd")


def _pyplot():
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "jaxlmm's plots need matplotlib, which is not installed; install it with "
            "pip install 'jaxlmm[plot]'  (or: pip install 'matplotlib>=3.7')") from err
    return plt


# ------------------------------------------------------------------ argument checks
def _check_path(path):
    if path is None:
        return None
    p = Path(os.fspath(path))
    if p.suffix.lower() not in _SUFFIXES:
        raise DataError(f"path={str(p)!r}: cannot tell the image format from the suffix "
                        f"{p.suffix!r}; end the file name in .png or .svg")
    return p


def _save(fig, path):
    if path is not None:
        fig.savefig(path, format=path.suffix.lower()[1:], bbox_inches="tight", dpi=150)


def _check_columns(df, needed, what):
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{what} lacks the column(s) {', '.join(map(repr, missing))}; "
                        f"it needs {', '.join(needed)}")


def _groups(df) -> list[str]:
    return [str(g) for g in pd.unique(df["grpvar"].astype(str))]


def _pick_group(groups, group) -> str:
    if group is None:
        return groups[0]
    if str(group) not in groups:
        raise DataError(f"group={group!r} is not a grouping factor of this model; "
                        f"choose one of {', '.join(map(repr, groups))}")
    return str(group)


def _pick_terms(available, terms, group) -> list[str]:
    if terms is None:
        return list(available[:2])
    chosen = [terms] if isinstance(terms, str) else list(terms)
    if not 1 <= len(chosen) <= 2 or len(set(chosen)) != len(chosen):
        raise DataError(f"terms={terms!r}: give one term (a 1-D plot) or two different "
                        f"terms (the 2-D plane) of grouping factor {group!r}")
    for t in chosen:
        if t not in available:
            raise DataError(f"term {t!r} is not a random-effect column of grouping factor "
                            f"{group!r}; choose from {', '.join(map(repr, available))}")
    return chosen


def _one_axes(plt, ax, figsize):
    """(figure, axes): a new constrained-layout figure, or the figure of the Axes given."""
    if ax is None:
        return plt.subplots(figsize=figsize, layout="constrained")
    if not hasattr(ax, "add_patch"):
        raise DataError(f"ax must be one matplotlib Axes, got {type(ax).__name__}")
    return ax.figure, ax


def _wide(sub, value, group):
    """Rows (grp, term) of one factor -> DataFrame levels x terms, levels in table order."""
    try:
        w = sub.pivot(index="grp", columns="term", values=value)
    except ValueError as err:
        raise DataError(f"the table repeats a (grp, term) pair for grouping factor "
                        f"{group!r}; give one row per level and term") from err
    return w.reindex(pd.unique(sub["grp"]))


def _level_ticks(ax, labels):
    """Level names on the y axis when there are at most _MAX_LABELLED levels."""
    if len(labels) <= _MAX_LABELLED:
        ax.set_yticks(np.arange(len(labels)), [str(v) for v in labels])
        ax.tick_params(axis="y", labelsize=8 if len(labels) > 20 else 10)
    else:
        ax.set_yticks([])


# ------------------------------------------------------------------ shrinkage plot
def _shrinkage_table(m, group, table):
    if table is None and isinstance(m, pd.DataFrame):
        table = m
    if table is None:
        if m is None:
            raise DataError("shrinkage_plot needs a fitted model or table= (a DataFrame "
                            "like shrinkage(m))")
        _pick_group(_groups(m.ranef(condvar=False)), group)  # clear error before the work
        from .shrinkage import shrinkage
        table = shrinkage(m, group=group)
    _check_columns(table, _SHRINKAGE_COLUMNS, "the shrinkage table")
    return table


def _arrow(ax, start, end, color):
    from matplotlib.patches import FancyArrowPatch
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9,
                                 color=color, lw=0.9, alpha=0.8, shrinkA=0, shrinkB=2,
                                 zorder=2))


def _draw_arrows(ax, x0, y0, x1, y1, color):
    """Arrows from (x0, y0) to (x1, y1); none where the start is not finite or equals the end."""
    n = 0
    for a, b, c, d in zip(x0, y0, x1, y1):
        if np.isfinite([a, b, c, d]).all() and (a, b) != (c, d):
            _arrow(ax, (a, b), (c, d), color)
            n += 1
    return n


def _first(sub, column, term):
    v = pd.to_numeric(sub.loc[sub["term"] == term, column], errors="coerce").to_numpy(float)
    return float(v[0]) if v.size else np.nan


def _shrinkage_2d(ax, sub, terms, group):
    t1, t2 = terms
    npool = _wide(sub, "no_pooling", group).astype(float)
    ppool = _wide(sub, "partial_pooling", group).astype(float)
    xn, yn = npool[t1].to_numpy(), npool[t2].to_numpy()
    xp, yp = ppool[t1].to_numpy(), ppool[t2].to_numpy()
    has = np.isfinite(xn) & np.isfinite(yn)
    _draw_arrows(ax, xn[has], yn[has], xp[has], yp[has], "0.45")
    ax.scatter(xn[has], yn[has], s=28, facecolors="none", edgecolors="C0",
               label="no pooling", zorder=3)
    ax.scatter(xp, yp, s=28, color="C1", label="partial pooling", zorder=4)
    pop = (_first(sub, "population", t1), _first(sub, "population", t2))
    if np.isfinite(pop).all():
        ax.scatter([pop[0]], [pop[1]], s=220, marker="*", color="black",
                   label="population", zorder=5)
    cp = (_first(sub, "complete_pooling", t1), _first(sub, "complete_pooling", t2))
    if np.isfinite(cp).all():
        ax.scatter([cp[0]], [cp[1]], s=90, marker="X", color="C3",
                   label="complete pooling", zorder=5)
    ax.set_xlabel(t1)
    ax.set_ylabel(t2)


def _shrinkage_1d(ax, sub, term, group):
    rows = sub[sub["term"] == term]
    pp = pd.to_numeric(rows["partial_pooling"], errors="coerce").to_numpy(float)
    npool = pd.to_numeric(rows["no_pooling"], errors="coerce").to_numpy(float)
    order = np.argsort(pp, kind="stable")          # smallest at the bottom
    levels = rows["grp"].to_numpy()[order]
    pp, npool = pp[order], npool[order]
    y = np.arange(len(pp), dtype=float)
    has = np.isfinite(npool)
    _draw_arrows(ax, npool[has], y[has], pp[has], y[has], "0.45")
    ax.scatter(npool[has], y[has], s=28, facecolors="none", edgecolors="C0",
               label="no pooling", zorder=3)
    ax.scatter(pp, y, s=28, color="C1", label="partial pooling", zorder=4)
    pop = _first(sub, "population", term)
    if np.isfinite(pop):
        ax.axvline(pop, color="black", lw=1.2, label="population", zorder=1)
    cp = _first(sub, "complete_pooling", term)
    if np.isfinite(cp):
        ax.axvline(cp, color="C3", lw=1.0, ls="--", label="complete pooling", zorder=1)
    _level_ticks(ax, levels)
    ax.set_ylim(-0.7, len(pp) - 0.3)
    ax.set_xlabel(term)
    ax.set_ylabel(group)


def shrinkage_plot(m=None, group=None, terms=None, table=None, ax=None, path=None):
    """Arrows from each level's no-pooling to its partial-pooling estimate.

    The estimates are coefficients (beta_j + b_ij for term j, level i) as in
    ``shrinkage(m, group)``: one row per (grpvar, grp, term) with columns ``population``
    (beta_j), ``complete_pooling``, ``no_pooling`` (NaN where a level has no estimate: it
    is then drawn as a partial-pooling point only) and ``partial_pooling``.

    m: a fitted LinearMixedModel (the table is computed with ``shrinkage(m, group)``), or
        None when ``table=`` is given.
    group: the grouping factor; default the first.
    terms: one term (1-D plot: levels on the y axis sorted by their partial-pooling value,
        a vertical line at the population value) or two (the 2-D plane: a star at the
        population value, an X at complete pooling); default the factor's first two terms,
        or its only one.
    table: a DataFrame like ``shrinkage(m)`` to plot instead of computing it.
    ax: a matplotlib Axes to draw into; default a new figure.
    path: save the figure there (.png or .svg).

    Returns the matplotlib Figure.

    >>> fig = shrinkage_plot(m, path="shrinkage.png")    # doctest: +SKIP
    """
    path = _check_path(path)
    table = _shrinkage_table(m, group, table)
    g = _pick_group(_groups(table), group)
    sub = table[table["grpvar"].astype(str) == g]
    chosen = _pick_terms([str(t) for t in pd.unique(sub["term"])], terms, g)
    plt = _pyplot()
    if len(chosen) == 2:
        fig, ax = _one_axes(plt, ax, (6.0, 5.0))
        _shrinkage_2d(ax, sub, chosen, g)
    else:
        n = int((sub["term"] == chosen[0]).sum())
        fig, ax = _one_axes(plt, ax, (6.0, 1.4 + 0.2 * min(n, _MAX_LABELLED)))
        _shrinkage_1d(ax, sub, chosen[0], g)
    ax.set_title(f"Shrinkage: {g}")
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)
    return fig


# ------------------------------------------------------------------ caterpillar plot
def _caterpillar_axes(plt, ax, panels):
    """One list of Axes per grouping factor (one Axes per term) and the figure."""
    n_panels = sum(len(terms) for _, terms, _ in panels)
    if ax is not None:
        axes = [ax] if hasattr(ax, "add_patch") else list(np.ravel(np.asarray(ax, object)))
        if len(axes) != n_panels or not all(hasattr(a, "add_patch") for a in axes):
            need = "; ".join(f"{g}: {', '.join(t)}" for g, t, _ in panels)
            raise DataError(f"ax: this plot has {n_panels} panel(s), one per random-effect "
                            f"column ({need}); pass that many Axes, or ax=None")
        rows, k = [], 0
        for _, terms, _ in panels:
            rows.append(axes[k:k + len(terms)])
            k += len(terms)
        return axes[0].figure, rows, False
    heights = [1.1 + 0.19 * min(G, _MAX_LABELLED) for _, _, G in panels]
    width = 1.4 + 2.9 * max(len(terms) for _, terms, _ in panels)
    fig = plt.figure(figsize=(width, min(sum(heights), 40.0)), layout="constrained")
    if len(panels) == 1:
        subfigs = [fig]
    else:
        subfigs = list(np.ravel(fig.subfigures(len(panels), 1, height_ratios=heights)))
    rows = []
    for sf, (g, terms, _) in zip(subfigs, panels):
        rows.append(list(np.ravel(sf.subplots(1, len(terms), sharey=True, squeeze=False))))
        sf.suptitle(g)
    return fig, rows, True


def _caterpillar_row(axes, re_g, terms, z, group, own):
    cond = _wide(re_g, "condval", group).astype(float)
    csd = _wide(re_g, "condsd", group).astype(float)
    order = np.argsort(cond[terms[0]].to_numpy(), kind="stable")   # smallest at the bottom
    levels = cond.index.to_numpy()[order]
    y = np.arange(len(levels), dtype=float)
    for a, t in zip(axes, terms):
        v = cond[t].to_numpy()[order]
        s = csd[t].to_numpy()[order]
        a.axvline(0.0, color="0.5", lw=0.8, ls=":", zorder=1)
        a.hlines(y, v - z * s, v + z * s, color="black", lw=1.0, zorder=2,
                 label="interval")
        a.scatter(v, y, s=14, color="C0", zorder=3, label="conditional mode")
        a.grid(axis="y", color="0.92", lw=0.6)
        a.set_axisbelow(True)
        a.set_ylim(-0.7, len(levels) - 0.3)
        _level_ticks(a, levels)
        a.set_title(t if own else f"{group}: {t}", fontsize=10)


def caterpillar_plot(m, group=None, level=0.95, ax=None, path=None):
    """Conditional modes with intervals, as lme4's ``dotplot(ranef(m, condVar = TRUE))``.

    Per grouping factor, one panel per random-effect column j: the levels i sorted by the
    first column's conditional mode (smallest at the bottom), the mode b_ij as a dot and
    the interval b_ij +- z * condsd_ij with z = Phi^{-1}((1 + level) / 2), a dotted vertical
    line at 0, level names on the y axis when there are at most 50 levels.

    m: a fitted LinearMixedModel (``m.ranef()`` is plotted), or a DataFrame like it
        (columns grpvar, term, grp, condval, condsd).
    group: one grouping factor; default all of them (one row of panels each).
    level: coverage of the intervals, in (0, 1).
    ax: Axes to draw into: one per panel (a single Axes when there is one panel).
    path: save the figure there (.png or .svg).

    Returns the matplotlib Figure.

    >>> fig = caterpillar_plot(m, path="ranef.svg")      # doctest: +SKIP
    """
    path = _check_path(path)
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise DataError(f"level={level!r}: the coverage must be a number strictly between "
                        f"0 and 1, e.g. 0.95")
    re = m if isinstance(m, pd.DataFrame) else m.ranef(condvar=True)
    _check_columns(re, _RANEF_COLUMNS, "the random-effects table (m.ranef())")
    groups = _groups(re)
    chosen = groups if group is None else [_pick_group(groups, group)]
    from scipy.stats import norm
    z = float(norm.ppf(0.5 + 0.5 * float(level)))
    panels = []
    for g in chosen:
        re_g = re[re["grpvar"].astype(str) == g]
        terms = [str(t) for t in pd.unique(re_g["term"])]
        panels.append((g, terms, int(pd.unique(re_g["grp"]).size)))
    plt = _pyplot()
    fig, rows, own = _caterpillar_axes(plt, ax, panels)
    for (g, terms, _), axes in zip(panels, rows):
        _caterpillar_row(axes, re[re["grpvar"].astype(str) == g], terms, z, g, own)
    _save(fig, path)
    return fig
