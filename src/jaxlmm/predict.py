"""Predictions, prediction intervals and coef() of a fitted model (lme4's predict / coef).

Host side (numpy) on the fitted solution: the new rows' matrices come from the fit's
encoding (frame.new_rows), the estimates from ``m.result.solution``.

* prediction: mu = x'beta + offset + sum over the kept factors k of z_k' b_k[level]; a
  level not seen when fitting (or a missing grouping value) contributes 0, the population
  prediction for that factor, unless ``allow_new_levels=False``.
* interval variances, exact for known theta (Henderson 1975). With u the spherical random
  effects (b = Lambda u) and C = [Lambda'Z'WZ Lambda + I, Lambda'Z'WX; X'WZ Lambda, X'WX]
  the coefficient matrix of the mixed-model equations, Var([u_hat - u; beta_hat - beta])
  = sigma^2 C^{-1}. For a row with c = [Lambda'z; x] (z: the kept factors with a known
  level) the prediction error variance of its conditional mean is sigma^2 c'C^{-1}c,
  covariance between beta_hat and u_hat included. A kept factor at a new level adds its
  unconditional variance sigma^2 |T_k'z_k|^2; "prediction" adds sigma^2 (a new residual,
  weight 1) and sigma^2 |T_k'z_k|^2 for every factor left out by ``re``. With one grouping
  factor C^{-1} is read off the solution (cond_var, xtx_inv and the per-level Z'WX);
  otherwise C is factored as a sparse matrix (cost grows with the new rows times the fill
  of the factor). theta and sigma are taken as known; the quantiles are normal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError
from .formula import parse_formula
from .frame import new_rows
from .pls import templates

__all__ = ["predict", "coef"]

_CHUNK = 4_000_000  # doubles per dense block of right-hand sides in the sparse solves
_DENSE = 4_000  # C of at most this order is inverted as a dense matrix


# --------------------------------------------------------------------------
# coef
# --------------------------------------------------------------------------


def coef(m) -> dict:
    """lme4's ``coef(m)``: per grouping factor, a DataFrame indexed by level whose columns
    are the fixed effects plus that factor's conditional modes for same-named columns.

    As lme4: random-effect columns without a fixed counterpart (e.g. ``(0 + f | g)``) come
    first with fixed value 0, then the fixed effects in their order; fixed effects without a
    random counterpart are repeated. Factors in lme4's order (as ``ranef``).
    """
    beta = np.asarray(m.result.solution.beta, float)
    fixed = list(m.frame.fixef_names)
    factors = _factor_order(m)
    missing = []
    for f, _ in factors:
        missing.extend(c for c in f.columns if c not in fixed and c not in missing)
    columns = missing + fixed
    base = np.concatenate([np.zeros(len(missing)), beta])
    out = {}
    for f, b in factors:
        vals = np.tile(base, (f.nlevels, 1))
        for k, c in enumerate(f.columns):
            vals[:, columns.index(c)] += b[:, k]
        out[f.group] = pd.DataFrame(vals, index=pd.Index(list(f.levels), name=f.group),
                                    columns=columns)
    return out


def _factor_order(m):
    """(layout.Factor, b (G, q)) in lme4's order (first appearance in theta)."""
    info, sol = m.design.info, m.result.solution
    order = list(dict.fromkeys(e.factor for e in info.entries))
    return [(info.factors[pos], np.asarray(sol.b[pos], float)) for pos in order]


# --------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------


def predict(m, newdata=None, re=True, allow_new_levels: bool = True, *, interval=None,
            level: float = 0.95, offset=None):
    """Predictions of a fitted model, as lme4's ``predict(m, newdata, re.form,
    allow.new.levels)``.

    ``newdata``: a DataFrame (or mapping of columns) with the predictors, the response not
    needed; None predicts the rows used in the fit. ``re``: True (all random effects, lme4's
    ``re.form = NULL``), False (population level, ``re.form = NA``: X beta + offset) or
    grouping-factor names to keep (``re.form = ~(1 | g)``, whole factors). Levels not seen
    when fitting, or missing grouping values, get the population prediction for that factor
    when ``allow_new_levels`` (default True; lme4's default is FALSE), else a DataError.
    Missing predictor values give NaN for the row (lme4's ``na.pass``). ``offset``: the
    fit-level offset for new rows (array or column name) when the model was fitted with
    ``offset=`` an array; formula ``offset()`` terms are evaluated in ``newdata``.

    Returns a numpy array, or with ``interval="confidence"`` / ``"prediction"`` a DataFrame
    with columns fit, lwr, upr, se at coverage ``level`` (module docstring: exact prediction
    error variances for known theta and sigma, normal quantiles).
    """
    if interval not in (None, "confidence", "prediction"):
        raise ValueError(f"interval must be None, 'confidence' or 'prediction', got {interval!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")
    info, sol = m.design.info, m.result.solution
    frame = m.frame
    kept = _kept_factors(m, re)
    beta = np.asarray(sol.beta, float)
    all_terms = range(len(frame.terms))
    need_z = [t for pos, f in enumerate(info.factors) for t in f.terms
              if pos in kept or interval == "prediction"]

    if newdata is None:
        if offset is not None:
            raise ValueError("offset= is for newdata; the fit's own offset is used without it")
        n = frame.X.shape[0]
        X = frame.X
        off = np.zeros(n) if frame.offset is None else np.asarray(frame.offset, float)
        Z = {t: frame.terms[t].Z for t in all_terms}
        codes = {pos: np.asarray(f.codes) for pos, f in enumerate(info.factors)}
        index = pd.RangeIndex(n)
    else:
        groups = [info.factors[pos].terms[0] for pos in kept]
        rows = new_rows(frame, newdata, terms=need_z, groups=groups)
        n, X, Z = rows.n, rows.X, rows.Z
        off = (np.zeros(n) if rows.offset is None else rows.offset) + _fit_offset(m, newdata,
                                                                                    offset, n)
        if not allow_new_levels:
            _check_new_levels([(frame.terms[t], t) for t in groups], rows)
        codes = {}
        for pos, t in zip(kept, groups):
            codes[pos] = _to_factor_codes(rows.codes[t], frame.terms[t].levels,
                                          info.factors[pos].levels)
        index = newdata.index if isinstance(newdata, pd.DataFrame) else pd.RangeIndex(n)

    fit = X @ beta + off
    zf = {}  # kept or needed factors: (n, q_f) new-row model matrix
    for pos, f in enumerate(info.factors):
        if all(t in Z for t in f.terms):
            zf[pos] = np.concatenate([np.asarray(Z[t], float) for t in f.terms], axis=1)
    for pos in kept:
        b = np.asarray(sol.b[pos], float)
        c = codes[pos]
        known = c >= 0
        contrib = np.zeros(n)
        contrib[known] = np.sum(zf[pos][known] * b[c[known]], axis=1)
        fit = fit + contrib
    if interval is None:
        return fit

    var = _pev(m, X, {pos: (zf[pos], codes[pos]) for pos in kept})  # / sigma^2
    T = _templates(m)
    for pos in kept:  # new levels: the unconditional variance of the factor
        new = codes[pos] < 0
        var[new] += np.sum((zf[pos][new] @ T[pos]) ** 2, axis=1)
    if interval == "prediction":
        var += 1.0
        for pos in range(len(info.factors)):
            if pos not in kept:
                var += np.sum((zf[pos] @ T[pos]) ** 2, axis=1)
    from scipy.stats import norm

    se = float(sol.sigma) * np.sqrt(np.maximum(var, 0.0))
    se[np.isnan(fit)] = np.nan
    q = norm.ppf(0.5 + 0.5 * float(level))
    return pd.DataFrame({"fit": fit, "lwr": fit - q * se, "upr": fit + q * se, "se": se},
                        index=index)


def _kept_factors(m, re) -> list[int]:
    """Positions (elimination order) of the factors whose random effects are included."""
    factors = m.design.info.factors
    if isinstance(re, (bool, np.bool_)):
        return list(range(len(factors))) if re else []
    names = [re] if isinstance(re, str) else re
    if not isinstance(names, (list, tuple, set, frozenset)) or not all(
            isinstance(g, str) for g in names):
        raise TypeError(f"re must be True, False or a list of grouping factor names, got {re!r}")
    groups = [f.group for f in factors]
    key = {":".join(sorted(g.split(":"))): i for i, g in enumerate(groups)}
    out = []
    for g in names:
        pos = groups.index(g) if g in groups else key.get(":".join(sorted(g.split(":"))))
        if pos is None:
            raise DataError(f"re names grouping factor {g!r}, which is not in the model; its "
                            f"grouping factors are {', '.join(map(repr, groups))}")
        if pos not in out:
            out.append(pos)
    return sorted(out)


def _check_new_levels(terms, rows) -> None:
    """lme4's errors for allow.new.levels = FALSE, naming every factor and its new levels."""
    for term, t in terms:
        if rows.missing[t].any():
            where = np.flatnonzero(rows.missing[t])
            shown = ", ".join(map(str, where[:5])) + (", ..." if where.size > 5 else "")
            raise DataError(
                f"grouping factor {term.group!r} is missing in newdata rows (positions {shown}); "
                "missing grouping values are allowed only with allow_new_levels=True "
                "(population prediction for that factor)")
    found = []
    for term, t in terms:
        lev = rows.new_levels[t]
        if lev:
            found.append(f"{term.group!r}: " + ", ".join(lev[:10]) + (", ..." if len(lev) > 10
                                                                      else ""))
    if found:
        raise DataError(
            f"new levels of grouping factors in newdata ({'; '.join(found)}); pass "
            "allow_new_levels=True to predict them at the population level for that factor")


def _to_factor_codes(codes, term_levels, factor_levels) -> np.ndarray:
    if tuple(term_levels) == tuple(factor_levels):
        return np.asarray(codes)
    index = {lev: i for i, lev in enumerate(factor_levels)}  # pragma: no cover - defensive
    lut = np.array([index[lev] for lev in term_levels] + [-1])
    return lut[np.asarray(codes)]


def _fit_offset(m, newdata, offset, n: int) -> np.ndarray:
    """The fit-level offset (fit(..., offset=)) for new rows."""
    from .frame import _as_frame, _numeric_vector

    df = _as_frame(newdata)
    name = offset if isinstance(offset, str) else (
        getattr(m, "offset_name", None) if offset is None else None)
    if name is not None:
        if name not in df.columns:
            raise DataError(f"the model was fitted with offset={name!r}; newdata needs a column "
                            f"{name!r} (or pass offset= an array)")
        return _numeric_vector(df[name], f"offset column {name!r}")
    if offset is not None:
        v = np.asarray(offset, dtype=float).reshape(-1)
        if v.shape[0] != n:
            raise DataError(f"offset has {v.shape[0]} values for {n} rows of newdata")
        return v
    if m.frame.offset is not None and not parse_formula(m.frame.formula).offsets:
        raise DataError("the model was fitted with an offset array (fit(..., offset=array)); "
                        "pass offset= (an array of len(newdata) or a column name) to predict "
                        "new rows")
    return np.zeros(n)


# --------------------------------------------------------------------------
# prediction error variances
# --------------------------------------------------------------------------


def _templates(m) -> list[np.ndarray]:
    """Relative covariance factors T_k (q_k x q_k), elimination order: b = T_k u per level."""
    import jax.numpy as jnp

    return [np.asarray(T) for T in templates(jnp.asarray(m.result.theta), m.design.struct)]


def _pev(m, X, known: dict) -> np.ndarray:
    """c'C^{-1}c per row (module docstring); ``known``: pos -> (Z_new, codes), -1 = new."""
    if len(m.design.info.factors) == 1:
        return _pev_single(m, X, known)
    return _pev_sparse(m, X, known)


def _pev_single(m, X, known: dict) -> np.ndarray:
    """One grouping factor: C^{-1}'s random-effects block is block diagonal, so with
    CV_j = Var(b_j | y, beta) / sigma^2 (cond_var), S^{-1} = xtx_inv and
    h = x - (Z_j'WX_j)' CV_j z: c'C^{-1}c = z'CV_j z + h' S^{-1} h."""
    sol, d = m.result.solution, m.design
    Sinv = np.asarray(sol.xtx_inv, float)
    pev = np.einsum("ij,jk,ik->i", X, Sinv, X)
    if not known:
        return pev
    Znew, codes = known[0]
    CV = np.asarray(sol.cond_var[0], float)
    G, q = CV.shape[:2]
    Zf, cf, Xf = np.asarray(d.Z[0], float), np.asarray(d.codes[0]), np.asarray(d.X, float)
    w = np.ones(Xf.shape[0]) if d.weights is None else np.asarray(d.weights, float)
    ZWX = np.zeros((G, q, Xf.shape[1]))
    np.add.at(ZWX, cf, (w[:, None] * Zf)[:, :, None] * Xf[:, None, :])
    r = np.flatnonzero(codes >= 0)
    j = codes[r]
    v = np.einsum("iab,ib->ia", CV[j], Znew[r])
    h = X[r] - np.einsum("iap,ia->ip", ZWX[j], v)
    pev[r] = np.sum(Znew[r] * v, axis=1) + np.einsum("ij,jk,ik->i", h, Sinv, h)
    return pev


def _pev_sparse(m, X, known: dict) -> np.ndarray:
    """c'C^{-1}c with C assembled as a sparse matrix (module docstring).

    Each row's c has few nonzeros (the q_k entries of each known level, and x), so only the
    entries of C^{-1} at the indices the new rows use are needed: from a dense inverse when
    C is small, else from sparse LU solves (scipy's splu) for those columns, or for the rows'
    own c vectors when there are fewer rows than indices.
    """
    import scipy.sparse as sp
    from scipy.linalg import cho_factor, cho_solve
    from scipy.sparse.linalg import splu

    d = m.design
    T = _templates(m)
    sizes = [G * q for G, q in d.struct.factors]
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    Q, p = int(offs[-1]), d.p

    def entries(Zs, codes_list, positions):
        """(index, value) pairs of z'Lambda per row, (n, sum q_k); index 0 and value 0 for
        an unknown level."""
        idx, val = [], []
        for pos, Zk, ck in zip(positions, Zs, codes_list):
            q = T[pos].shape[0]
            ck = np.asarray(ck)
            ok = (ck >= 0)[:, None]
            V = np.nan_to_num(np.asarray(Zk, float)) @ T[pos]
            idx.append(np.where(ok, offs[pos] + np.maximum(ck, 0)[:, None] * q + np.arange(q), 0))
            val.append(np.where(ok, V, 0.0))
        return idx, val

    # C = [Lambda'Z'WZ Lambda + I, Lambda'Z'WX; X'WZ Lambda, X'WX]
    Xf = np.asarray(d.X, float)
    nf = Xf.shape[0]
    w = np.ones(nf) if d.weights is None else np.asarray(d.weights, float)
    fi, fv = entries(d.Z, d.codes, range(len(T)))
    fi, fv = np.concatenate(fi, axis=1), np.concatenate(fv, axis=1)
    ZL = sp.csr_matrix((fv.ravel(), (np.repeat(np.arange(nf), fi.shape[1]), fi.ravel())),
                       shape=(nf, Q))
    ZtW = (ZL.T @ sp.diags(w)).tocsr()
    C = sp.bmat([[ZtW @ ZL + sp.identity(Q), sp.csr_matrix(ZtW @ Xf)],
                 [sp.csr_matrix((Xf.T * w) @ ZL), sp.csr_matrix(Xf.T @ (w[:, None] * Xf))]],
                format="csc")

    # the new rows' c: (n, K) indices into C and values
    n = X.shape[0]
    positions = sorted(known)
    ni, nv = entries([known[k][0] for k in positions], [known[k][1] for k in positions],
                     positions)
    idx = np.concatenate(ni + [np.broadcast_to(Q + np.arange(p), (n, p))], axis=1)
    val = np.concatenate(nv + [np.nan_to_num(X)], axis=1)
    used = np.unique(idx[val != 0])

    if used.size == 0:  # pragma: no cover - only all-zero rows
        pev = np.zeros(n)
    elif Q + p <= _DENSE:  # dense inverse (BLAS 3) and a gather
        Cinv = cho_solve(cho_factor(C.toarray(), lower=True), np.eye(Q + p))
        pev = _quad_gather(Cinv, idx, val)
    elif used.size <= n and used.size ** 2 <= _CHUNK * 8:  # C^{-1} at the used indices
        lu = splu(C)
        sub = np.empty((used.size, used.size))
        step = max(1, _CHUNK // (Q + p))
        for a in range(0, used.size, step):
            E = np.zeros((Q + p, min(step, used.size - a)))
            E[used[a:a + step], np.arange(E.shape[1])] = 1.0
            sub[:, a:a + step] = lu.solve(E)[used]
        pev = _quad_gather(sub, np.minimum(np.searchsorted(used, idx), used.size - 1), val)
    else:  # one solve per new row
        lu = splu(C)
        pev = np.empty(n)
        step = max(1, _CHUNK // (Q + p))
        for a in range(0, n, step):
            rows = slice(a, a + step)
            k = val[rows].shape[0]
            block = np.zeros((Q + p, k))
            np.add.at(block, (idx[rows], np.arange(k)[:, None]), val[rows])
            pev[rows] = np.sum(block * lu.solve(block), axis=0)
    pev[np.isnan(X).any(axis=1)] = np.nan
    return pev


def _quad_gather(M, idx, val) -> np.ndarray:
    """Per row r: sum_ab val[r, a] val[r, b] M[idx[r, a], idx[r, b]] (rows in chunks)."""
    n, K = idx.shape
    out = np.empty(n)
    step = max(1, _CHUNK // max(1, K * K))
    for a in range(0, n, step):
        i, v = idx[a:a + step], val[a:a + step]
        out[a:a + step] = np.einsum("ra,rab,rb->r", v, M[i[:, :, None], i[:, None, :]], v)
    return out
