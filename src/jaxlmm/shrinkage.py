"""Pooling comparisons: no pooling, complete pooling and the mixed model's partial pooling.

For grouping factor k and level j, with W the prior weights, Z_j the level's rows of the
factor's per-row model matrix and the partial residual (everything but factor k's effects)

    r = y - offset - X beta_hat - sum_{l != k} Z_l b_hat_l,

* no pooling:      b_np_j = (Z_j'W Z_j)^{-1} Z_j'W r_j (the level's own least-squares fit);
* partial pooling: b_hat_j, the conditional mode. Given beta_hat and the other factors' modes
  it minimizes ||W^{1/2}(r_j - Z_j b)||^2 + b'(T T')^{-1} b (T the factor's template, so
  Sigma = sigma^2 T T'), i.e. b_hat_j = S_j b_np_j with the shrinkage matrix

      S_j = (A_j + sigma^2 Sigma^{-1})^{-1} A_j = T (I + T'A_j T)^{-1} T' A_j,   A_j = Z_j'W Z_j.

  The second form (the Lambda/u parametrization, b = T u) is the one computed: I + T'A_j T is
  positive definite for every theta, so S_j stays finite when Sigma is singular (a variance
  on the bound gives S_j = 0 in that direction) and when A_j is (then b_np_j is missing but
  S_j is still defined). For a scalar random intercept S_j = sigma_b^2 / (sigma_b^2 +
  sigma^2 / n_j) with n_j the level's sum of prior weights.

The identity b_hat_j = S_j b_np_j is exact (up to rounding) for every model, crossed and
nested included: the conditional modes solve every block's equations simultaneously.
Everything here is host-side numpy, vectorized over levels (segment sums of Z'WZ with
``np.bincount`` and batched small solves).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .errors import DataError
from .pls import templates

COLUMNS = ["grpvar", "grp", "term", "n", "population", "complete_pooling", "no_pooling",
           "no_pooling_note", "partial_pooling", "condval", "shrinkage"]
RCOND = 1e-10  # a level's Z'WZ (diagonally scaled) with smaller eigenvalue ratio is singular


def _segment_gram(Z, w, codes, G):
    """A (G, q, q): per-level Z'WZ, by one bincount per entry."""
    q = Z.shape[1]
    A = np.empty((G, q, q))
    for a in range(q):
        for c in range(a, q):
            A[:, a, c] = A[:, c, a] = np.bincount(codes, w * Z[:, a] * Z[:, c], minlength=G)
    return A


def _segment_rhs(Z, wr, codes, G):
    """(G, q): per-level Z'W r."""
    return np.stack([np.bincount(codes, Z[:, a] * wr, minlength=G)
                     for a in range(Z.shape[1])], axis=1)


def _estimable(A, counts):
    """Per level: (estimable mask, note). A level is estimable when Z_j'WZ_j is nonsingular
    (smallest eigenvalue of its unit-diagonal scaling above RCOND)."""
    G, q, _ = A.shape
    d = np.sqrt(np.diagonal(A, axis1=1, axis2=2))
    with np.errstate(divide="ignore", invalid="ignore"):
        C = A / (d[:, :, None] * d[:, None, :])
    zero = np.any(d == 0.0, axis=1)
    C[zero] = np.eye(q)
    ev = np.linalg.eigvalsh(C)
    ok = ~zero & (ev[:, 0] > RCOND * ev[:, -1])
    few = counts < q
    notes = np.full(G, "", dtype=object)
    for j in np.flatnonzero(few):
        notes[j] = f"{counts[j]} row{'' if counts[j] == 1 else 's'} for {q} coefficients"
    notes[~ok & ~few] = "Z columns collinear within the group"
    notes[zero & ~few] = "a Z column is all zero within the group"
    return ok & ~few, notes


def complete_pooling(m) -> pd.Series:
    """Weighted least-squares coefficients of y - offset on X, ignoring all grouping."""
    fr = m.frame
    y = fr.y if fr.offset is None else fr.y - fr.offset
    sw = np.ones_like(y) if fr.weights is None else np.sqrt(fr.weights)
    coef, *_ = np.linalg.lstsq(fr.X * sw[:, None], y * sw, rcond=None)
    return pd.Series(coef, index=list(fr.fixef_names), name="complete_pooling")


class FactorShrinkage(NamedTuple):
    """One grouping factor's pieces (levels in the factor's order)."""

    counts: np.ndarray  # (G,) rows per level
    b_np: np.ndarray  # (G, q) no-pooling deviations (NaN rows where not estimable)
    notes: np.ndarray  # (G,) "" or why b_np is missing
    S: np.ndarray  # (G, q, q) shrinkage matrices, b_hat = S b_np
    b: np.ndarray  # (G, q) conditional modes


def _residual_parts(m):
    """(w, per-factor Z b_hat rows, full residual y - offset - X beta - Z b)."""
    fr, sol = m.frame, m.result.solution
    w = np.ones(fr.y.shape[0]) if fr.weights is None else np.asarray(fr.weights, float)
    bs = [np.asarray(b, float) for b in sol.b]
    eta = [np.sum(f.Z * bs[k][f.codes], axis=1) for k, f in enumerate(m.design.info.factors)]
    r = fr.y - fr.X @ np.asarray(sol.beta, float) - sum(eta)
    if fr.offset is not None:
        r = r - fr.offset
    return w, eta, r


def factor_shrinkage(m, pos: int, parts=None) -> FactorShrinkage:
    """The pieces of factor ``pos`` (elimination order, as ``m.design.info.factors``)."""
    w, eta, r_all = _residual_parts(m) if parts is None else parts
    f = m.design.info.factors[pos]
    G, q = f.nlevels, f.q
    codes = np.asarray(f.codes, np.int64)
    r = r_all + eta[pos]  # partial residual: add back this factor's own effects
    A = _segment_gram(f.Z, w, codes, G)
    rhs = _segment_rhs(f.Z, w * r, codes, G)
    counts = np.bincount(codes, minlength=G)
    ok, notes = _estimable(A, counts)
    b_np = np.full((G, q), np.nan)
    if ok.any():
        b_np[ok] = np.linalg.solve(A[ok], rhs[ok][:, :, None])[:, :, 0]
    T = np.asarray(templates(jnp.asarray(m.result.theta), m.design.struct)[pos])
    M = np.eye(q) + T.T @ A @ T  # I + T'A_j T, positive definite
    S = T @ np.linalg.solve(M, np.broadcast_to(T.T, (G, q, q)) @ A)
    return FactorShrinkage(counts, b_np, notes, S,
                           np.asarray(m.result.solution.b[pos], float))


def _factor_positions(m, group):
    """Factor positions (elimination order) in lme4's order, or the one named ``group``."""
    info = m.design.info
    order = list(dict.fromkeys(e.factor for e in info.entries))
    if group is None:
        return order
    names = [info.factors[pos].group for pos in order]
    if group not in names:
        raise DataError(f"group {group!r} is not a grouping factor of this model; use one "
                        f"of {names}")
    return [pos for pos in order if info.factors[pos].group == group]


def shrinkage(m, group: str | None = None) -> pd.DataFrame:
    """Per grouping factor, level and random-effect column: the no-pooling, complete-pooling
    and partial-pooling (mixed model) coefficients and the shrinkage factor.

    Columns: grpvar, grp, term, n (rows of the level), population (fixed effect of the
    same name, 0 if none), complete_pooling (weighted OLS ignoring grouping, 0 if none),
    no_pooling (population + the level's own fit of the partial residual, NaN when not
    estimable, with the reason in no_pooling_note), partial_pooling (population + condval,
    lme4's coef()), condval (conditional mode) and shrinkage (diagonal of S_j; module
    docstring). Rows are ordered as ``m.ranef()``: factors in lme4's order, then column,
    then level. ``group`` keeps one grouping factor (a DataError names the choices).
    """
    positions = _factor_positions(m, group)
    fixef = dict(zip(m.frame.fixef_names, np.asarray(m.result.solution.beta, float)))
    cp = complete_pooling(m).to_dict()
    parts = _residual_parts(m)
    frames = []
    for pos in positions:
        f = m.design.info.factors[pos]
        fs = factor_shrinkage(m, pos, parts)
        shrink = np.diagonal(fs.S, axis1=1, axis2=2)
        for c, col in enumerate(f.columns):
            pop = float(fixef.get(col, 0.0))
            frames.append(pd.DataFrame({
                "grpvar": f.group, "grp": [str(v) for v in f.levels], "term": col,
                "n": fs.counts.astype(int), "population": pop,
                "complete_pooling": float(cp.get(col, 0.0)),
                "no_pooling": pop + fs.b_np[:, c], "no_pooling_note": fs.notes.astype(str),
                "partial_pooling": pop + fs.b[:, c], "condval": fs.b[:, c],
                "shrinkage": shrink[:, c]}, columns=COLUMNS))
    return pd.concat(frames, ignore_index=True)
