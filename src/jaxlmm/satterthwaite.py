"""Satterthwaite degrees of freedom, t and F tests and type I/III anova, as lmerTest 3.1.

The variance parameters are varpar = (theta, sigma). With beta profiled out at each theta,
lmerTest's deviance of varpar (``devfun_vp``) is

    ML:   d(theta, sigma) = log|L_theta|^2 + r^2(theta) / sigma^2 + n log(2 pi sigma^2)
    REML: d(theta, sigma) + log|R_X|^2 - p log(2 pi sigma^2)

(r^2 the penalized weighted RSS; prior weights enter through r^2 and L_theta only, so
lmerTest's deviance has no sum(log w) term). At the optimum

    A = vcov(varpar) = 2 H^+,   H = d^2 d / d varpar^2,
    J_i = d vcov(beta) / d varpar_i,   vcov(beta) = sigma^2 (X'V^{-1}X)^{-1}(theta),

with H^+ the inverse on the eigenvalues > 1e-8 (lmerTest: negative eigenvalues warn "failed
to converge", near-zero ones "may not have converged"). lmerTest differentiates numerically
(numDeriv); here H and J are exact (forward-mode autodiff through the blocked Cholesky).

For one contrast l: v = l'Vl, g_i = l'J_i l, df = 2 v^2 / (g'Ag), t = (l'beta - rhs) / sqrt(v).
For a matrix L (q rows): with L V L' = P diag(d) P', the F statistic is
sum_m (P_m'L beta)^2 / d_m / q over the positive eigenvalues; each direction has
nu_m = 2 d_m^2 / (g_m'A g_m) and the denominator df is 2E/(E - q), E = sum nu_m/(nu_m - 2)
(2 when some nu_m <= 2; their mean when all are equal to 1e-8).

Singular fits get no special treatment, as in lmerTest: the Hessian is taken at theta on
the boundary (d is smooth there; a scalar theta enters through theta^2).

The JAX part (``devfun_vp``, ``covbeta``, ``varpar_derivatives``) is pure and jitted with
``reml`` static; the tables are numpy/scipy on the host. See docs/inference.md.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats as sps

from . import autodiff
from .contrasts import _anova_type, hypotheses
from .deviance import log_det_r
from .errors import DataError
from .pls import factorize, pieces
from .solution import fixed_part
from .stats import Stats, suffstats
from .summary import format_perc

__all__ = ["devfun_vp", "covbeta", "varpar_derivatives", "VarparInfo", "varpar_info",
           "vcov_varpar", "coef_table", "contrast", "anova", "anova_hypotheses",
           "wald_confint", "satterthwaite_t", "satterthwaite_f", "fstat_ddf"]

EIG_TOL = 1e-8  # lmerTest's tolerance on the Hessian's eigenvalues
T_COLUMNS = ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
F_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


# ---------------------------------------------------------------------- JAX kernels


def _theta_pieces(theta, stats: Stats, reml: bool):
    """(log-determinant terms, pwrss, (X'V^{-1}X)^{-1}) at theta, in the data's units."""
    f = factorize(theta, stats)
    pc = pieces(f, stats.struct)
    _, xtx_inv = fixed_part(f, stats)
    ld = pc.logdet_l
    if reml:
        ld = ld + pc.logdet_x + 2.0 * log_det_r(stats.scale)
    return ld, stats.scale.s ** 2 * pc.pwrss, xtx_inv


def devfun_vp(varpar, stats: Stats, reml: bool = True):
    """lmerTest's deviance of varpar = (theta, sigma), beta profiled (module docstring)."""
    varpar = jnp.asarray(varpar, stats.dtype)
    theta, s2 = varpar[:-1], varpar[-1] ** 2
    ld, pwrss, _ = _theta_pieces(theta, stats, reml)
    nu = stats.n - stats.struct.p if reml else stats.n
    return ld + pwrss / s2 + nu * jnp.log(2.0 * jnp.pi * s2)


def covbeta(varpar, stats: Stats):
    """vcov(beta) = sigma^2 (X'V^{-1}X)^{-1}(theta) at varpar = (theta, sigma)."""
    varpar = jnp.asarray(varpar, stats.dtype)
    return varpar[-1] ** 2 * _theta_pieces(varpar[:-1], stats, False)[2]


@partial(jax.jit, static_argnames=("reml",))
def varpar_derivatives(varpar, stats: Stats, reml: bool = True):
    """(devfun_vp, its exact Hessian (k+1, k+1), vcov(beta) (p, p), its Jacobian
    (k+1, p, p): d vcov(beta) / d varpar_i) at varpar. Pure; compiled once per design
    structure and ``reml``."""
    varpar = jnp.asarray(varpar, stats.dtype)
    k1 = varpar.shape[0]
    value, _, H = autodiff.value_grad_hessian(lambda v: devfun_vp(v, stats, reml), k1)(varpar)
    # the Jacobian and, as the auxiliary output, the value itself: one pass
    J, V = jax.jacfwd(lambda v: (lambda c: (c, c))(covbeta(v, stats)), has_aux=True)(varpar)
    return value, 0.5 * (H + H.T), V, jnp.moveaxis(J, -1, 0)


# ---------------------------------------------------------------------- per-model results


class VarparInfo(NamedTuple):
    """What Satterthwaite's method needs from a fit (numpy, host side)."""

    varpar: np.ndarray  # (k+1,) theta (lme4's order), sigma
    names: list  # theta names + "sigma"
    beta: np.ndarray  # (p,)
    fixef_names: list
    sigma: float
    vcov_beta: np.ndarray  # (p, p)
    vcov_varpar: np.ndarray  # (k+1, k+1): 2 H^+
    jac: np.ndarray  # (k+1, p, p): d vcov(beta) / d varpar_i
    hessian: np.ndarray  # (k+1, k+1) of devfun_vp
    eigenvalues: np.ndarray  # of the Hessian, decreasing
    devfun_vp: float  # at varpar


def varpar_info(m) -> VarparInfo:
    """``VarparInfo`` of a fitted LinearMixedModel (computed once per model and result)."""
    hit = m.__dict__.get("_varpar_info")
    if hit is not None and hit[0] is m.result:
        return hit[1]
    info = _compute(m)
    m.__dict__["_varpar_info"] = (m.result, info)
    return info


def _compute(m) -> VarparInfo:
    varpar = np.concatenate([m.theta, [m.sigma]])
    stats = m.stats if hasattr(m, "stats") else suffstats(m.design)
    value, H, V, J = jax.device_get(varpar_derivatives(jnp.asarray(varpar), stats,
                                                       reml=bool(m.reml)))
    H = np.asarray(H, float)
    A, evals = _pinv_hessian(H)
    return VarparInfo(varpar, list(m.theta_names) + ["sigma"], np.asarray(m.fixef.values, float),
                      list(m.frame.fixef_names), float(m.sigma), np.asarray(V, float), A,
                      np.asarray(J, float), H, evals, float(value))


def _pinv_hessian(H):
    """2 H^+ on the eigenvalues > EIG_TOL, with lmerTest's warnings."""
    w, U = np.linalg.eigh(H)
    w, U = w[::-1], U[:, ::-1]
    neg, zero = w < -EIG_TOL, np.abs(w) < EIG_TOL
    if neg.any():
        warnings.warn(f"Model failed to converge with {neg.sum()} negative eigenvalue"
                      f"{'s' if neg.sum() > 1 else ''} of the Hessian of the deviance in "
                      f"(theta, sigma): {' '.join(f'{x:.1e}' for x in w[neg])}", RuntimeWarning,
                      stacklevel=4)
    if zero.any():
        warnings.warn(f"Model may not have converged with {zero.sum()} eigenvalue"
                      f"{'s' if zero.sum() > 1 else ''} close to zero: "
                      f"{' '.join(f'{x:.1e}' for x in w[zero])}", RuntimeWarning, stacklevel=4)
    pos = w > EIG_TOL
    Up = U[:, pos]
    return 2.0 * (Up / w[pos]) @ Up.T, w


def vcov_varpar(m):
    """(A, J): A = vcov of (theta, sigma), (k+1, k+1); J (k+1, p, p) with J[i] =
    d vcov(beta) / d varpar_i (lmerTest's ``vcov_varpar`` and ``Jac_list``)."""
    info = varpar_info(m)
    return info.vcov_varpar, info.jac


# ---------------------------------------------------------------------- tests on arrays


def fstat_ddf(nu, tol: float = 1e-8) -> float:
    """Denominator df of an F statistic from per-direction dfs (lmerTest's get_Fstat_ddf)."""
    nu = np.asarray(nu, float)
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = np.sum(nu / (nu - 2.0))
    return float(2.0 * E / (E - nu.size))


def _t_parts(info: VarparInfo, L):
    """(estimate, variance, df) of the 1-row contrasts in the rows of L."""
    L = np.atleast_2d(L)
    est = L @ info.beta
    var = np.einsum("ri,ij,rj->r", L, info.vcov_beta, L)
    g = np.einsum("ri,kij,rj->rk", L, info.jac, L)
    denom = np.einsum("rk,kl,rl->r", g, info.vcov_varpar, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, 2.0 * var ** 2 / np.where(denom > 0, denom, 1.0), np.inf)
    return est, var, df


def satterthwaite_t(info: VarparInfo, L, rhs=0.0) -> pd.DataFrame:
    """t test of each row l of L: H0 l'beta = rhs (lmerTest's contest1D)."""
    L = np.atleast_2d(np.asarray(L, float))
    est, var, df = _t_parts(info, L)
    se = np.sqrt(var)
    t = (est - np.broadcast_to(np.asarray(rhs, float), est.shape)) / se
    p = 2.0 * sps.t.sf(np.abs(t), df)
    return pd.DataFrame({"Estimate": est, "Std. Error": se, "df": df, "t value": t,
                         "Pr(>|t|)": p}, columns=T_COLUMNS)


def _f_table(F, q, ddf, sigma) -> pd.DataFrame:
    ms = F * sigma ** 2
    p = sps.f.sf(F, q, ddf) if q > 0 else np.nan
    return pd.DataFrame([[ms * q, ms, q, ddf, F, p]], columns=F_COLUMNS)


def satterthwaite_f(info: VarparInfo, L, rhs=0.0, eps: float = np.sqrt(np.finfo(float).eps)):
    """Joint F test of H0 L beta = rhs (lmerTest's contestMD); a one-row table."""
    L = np.atleast_2d(np.asarray(L, float))
    r = L.shape[0]
    rhs = np.broadcast_to(np.asarray(rhs, float), (r,))
    if r == 1:
        t = satterthwaite_t(info, L, rhs)
        return _f_table(float(t["t value"].iloc[0]) ** 2, 1, float(t["df"].iloc[0]), info.sigma)
    beta = info.beta
    if np.any(rhs != 0):
        beta = beta - np.linalg.pinv(L) @ rhs
    d, P = np.linalg.eigh(L @ info.vcov_beta @ L.T)
    d, P = d[::-1], P[:, ::-1]
    pos = d > max(eps * d[0], 0.0)
    q = int(pos.sum())
    if q < r and np.any(rhs != 0):
        warnings.warn("Contrast is rank deficient and test may be affected", RuntimeWarning,
                      stacklevel=3)
    if q == 0:
        return _f_table(np.nan, 0, np.nan, info.sigma)
    PtL = P[:, :q].T @ L
    if q == 1:  # lmerTest: a t test of the one direction (here with beta shifted by rhs)
        est, var, df = _t_parts(info._replace(beta=beta), PtL)
        return _f_table(float(est[0] ** 2 / var[0]), 1, float(df[0]), info.sigma)
    F = float(np.sum((PtL @ beta) ** 2 / d[:q]) / q)
    g = np.einsum("ri,kij,rj->rk", PtL, info.jac, PtL)
    nu = 2.0 * d[:q] ** 2 / np.einsum("rk,kl,rl->r", g, info.vcov_varpar, g)
    return _f_table(F, q, fstat_ddf(nu), info.sigma)


# ---------------------------------------------------------------------- user-facing tables


def coef_table(m, ddf: str | None = "Satterthwaite") -> pd.DataFrame:
    """The fixed-effects table of lmerTest's summary(m): Estimate, Std. Error, df, t value,
    Pr(>|t|); ``ddf="lme4"`` (or None): lme4's table (Estimate, Std. Error, t value)."""
    kind = _ddf(ddf)
    names = list(m.frame.fixef_names)
    if kind == "lme4":
        est = np.asarray(m.fixef.values, float)
        se = np.asarray(m.stderr.values, float)
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "t value": est / se},
                            index=pd.Index(names))
    info = varpar_info(m)
    out = satterthwaite_t(info, np.eye(len(names)))
    out.index = pd.Index(names)
    return out


def _ddf(ddf):
    if ddf is None or str(ddf).lower() == "lme4":
        return "lme4"
    if str(ddf).lower() == "satterthwaite":
        return "satterthwaite"
    raise DataError(f"ddf must be 'Satterthwaite' or 'lme4' (None), got {ddf!r}; "
                    "Kenward-Roger is not implemented")


def contrast(m, L, rhs=0.0, joint: bool = True) -> pd.DataFrame:
    """Test H0: L beta = rhs with Satterthwaite's df (lmerTest's contest).

    ``L``: a vector of p weights (array, or a dict / Series {fixef name: weight}, others 0)
    gives a t test (Estimate, Std. Error, df, t value, Pr(>|t|)); a matrix (r, p) (2-D
    array, list of dicts, or DataFrame with fixef names as columns; missing entries are 0)
    gives one joint F test
    (Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)), or with ``joint=False`` a t test per
    row. ``rhs``: a number or one per row.
    """
    names = list(m.frame.fixef_names)
    Lm, vector, rows = _as_matrix(L, names)
    r = Lm.shape[0]
    rhs_arr = np.asarray(rhs, float)
    if rhs_arr.ndim > 1 or rhs_arr.size not in (1, r) or not np.all(np.isfinite(rhs_arr)):
        raise DataError(f"rhs must be a finite number or {r} finite numbers (one per row of "
                        f"L), got {rhs!r}")
    info = varpar_info(m)
    if vector or not joint:
        out = satterthwaite_t(info, Lm, np.broadcast_to(rhs_arr.reshape(-1), (r,)))
        out.index = pd.Index(rows)
        return out
    out = satterthwaite_f(info, Lm, rhs_arr.reshape(-1))
    out.index = pd.Index(["contrast"])
    return out


def _as_matrix(L, names):
    """(r, p) float matrix, whether L was a vector, row labels."""
    p = len(names)
    shown = ", ".join(names)
    if isinstance(L, pd.DataFrame):
        rows = [_weights_from_map(row.dropna(), names) for _, row in L.iterrows()]
        M, vector, labels = np.array(rows).reshape(-1, p), False, list(L.index)
    elif isinstance(L, (Mapping, pd.Series)):
        M, vector, labels = _weights_from_map(L, names)[None, :], True, [0]
    elif isinstance(L, (list, tuple)) and L and all(isinstance(x, Mapping) for x in L):
        M = np.array([_weights_from_map(x, names) for x in L])
        vector, labels = False, list(range(len(L)))
    else:
        try:
            M = np.asarray(L, dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"L must be numeric (a vector of {p} weights, a matrix with {p} "
                            f"columns, or a dict {{fixef name: weight}}), got {type(L).__name__}"
                            ) from None
        if M.ndim == 1 and M.shape[0] == p:
            M, vector = M[None, :], True
        elif M.ndim == 2 and M.shape[1] == p and M.shape[0] > 0:
            vector = False
        else:
            raise DataError(f"L must be a vector of length {p} or a matrix with {p} columns "
                            f"(one per fixed effect: {shown}), got shape {M.shape}")
        labels = list(range(M.shape[0]))
    if M.shape[0] == 0:
        raise DataError("L has no rows; give at least one hypothesis")
    if not np.all(np.isfinite(M)):
        raise DataError("L has missing or non-finite weights; give finite numbers")
    return M, vector, labels


def _weights_from_map(d, names):
    out = np.zeros(len(names))
    index = {nm: i for i, nm in enumerate(names)}
    for k, v in dict(d).items():
        if k not in index:
            close = difflib.get_close_matches(str(k), names, n=3, cutoff=0.5)
            tip = ("did you mean " + " or ".join(repr(c) for c in close) + "?") if close else \
                f"the fixed effects are: {', '.join(names)}"
            raise DataError(f"L names {k!r}, which is not a fixed effect of the model; {tip}")
        try:
            out[index[k]] = float(v)
        except (TypeError, ValueError):
            raise DataError(f"L's weight for {k!r} must be a number, got {v!r}") from None
    return out


def anova_hypotheses(m, type=3) -> dict:
    """The hypothesis matrix of each term for anova(m, type=): label -> DataFrame (rows:
    the term's columns, columns: fixef names), as attr(anova(m), "hypotheses") in lmerTest."""
    names = list(m.frame.fixef_names)
    return {label: pd.DataFrame(h.L, index=pd.Index([names[c] for c in h.rows]), columns=names)
            for label, h in hypotheses(m.frame, type).items()}


def anova(m, type=3, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """lmerTest's anova(m): one F test per term of the fixed part (type III by default,
    or type=1), with Satterthwaite's denominator df. Columns: Sum Sq, Mean Sq, NumDF, DenDF,
    F value, Pr(>F) (Sum Sq = F NumDF sigma^2, Mean Sq = F sigma^2). Terms whose hypothesis
    has no rows (columns dropped) come last with missing values, as in lmerTest.
    """
    if _ddf(ddf) != "satterthwaite":
        raise DataError("anova here uses Satterthwaite's method only (ddf='Satterthwaite')")
    t = _anova_type(type)
    hyp = hypotheses(m.frame, t)
    info = varpar_info(m) if hyp else None
    tabs, labels, empty = [], [], []
    for label, (H, _) in hyp.items():
        if H.shape[0] == 0:
            empty.append(label)
            continue
        tab = satterthwaite_f(info, H)
        if np.isnan(tab["F value"].iloc[0]):
            empty.append(label)
            continue
        tabs.append(tab)
        labels.append(label)
    out = pd.concat(tabs, ignore_index=True) if tabs else pd.DataFrame(columns=F_COLUMNS,
                                                                       dtype=float)
    out.index = pd.Index(labels)
    if empty:
        out = pd.concat([out, pd.DataFrame(np.nan, index=pd.Index(empty), columns=F_COLUMNS)])
    out.attrs["heading"] = (f"Type {'III' if t == 3 else 'I'} Analysis of Variance Table "
                            "with Satterthwaite's method")
    return out


def wald_confint(m, level: float = 0.95) -> pd.DataFrame:
    """Wald intervals for the fixed effects with the normal quantile, as lme4's
    confint(m, method = "Wald", parm = "beta_")."""
    if not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise DataError(f"level must be a number in (0, 1), got {level!r}")
    a = (1.0 - float(level)) / 2.0
    z = sps.norm.ppf(1.0 - a)
    est = np.asarray(m.fixef.values, float)
    se = np.asarray(m.stderr.values, float)
    cols = format_perc([a, 1.0 - a])
    return pd.DataFrame({cols[0]: est - z * se, cols[1]: est + z * se},
                        index=pd.Index(list(m.frame.fixef_names)))
