"""User-facing fit and result: a thin composition of design -> stats -> fit_stats -> tables."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import layout
from .design import Design, build_design
from .engine import fit_stats_jit, use_exact_hessian
from .optimize import STATUS
from .start import moments, use_moments
from .stats import compute

SINGULAR_TOL = 1e-4  # lme4's isSingular() tolerance on theta


@dataclass(frozen=True)
class ModelSetup:
    """Host-side pieces linking the design to the kernels (shapes, order, theta layout)."""

    design: Design
    factors: list  # layout.Factor, in elimination order
    nchain: int
    entries: list  # layout.ThetaEntry, lme4's theta order
    struct: layout.Structure


def setup(design: Design) -> ModelSetup:
    factors = layout.amalgamate(design.terms)
    elim, nchain = layout.order_factors(factors)
    entries = layout.theta_layout(design.terms, factors, elim)
    struct = layout.structure(factors, elim, nchain, entries, design.X.shape[1])
    return ModelSetup(design, [factors[f] for f in elim], nchain, entries, struct)


def fit(formula: str, data, *, reml: bool = True, weights=None, offset=None,
        start=None, max_iter: int = 200, hessian: str = "auto",
        data_name: str | None = None) -> "LinearMixedModel":
    """Fit a linear mixed model with lme4 syntax, e.g. ``"y ~ x + (1 + x | g)"``.

    ``reml=True`` (default) optimizes the REML criterion, else the ML deviance.
    ``weights``/``offset``: column names or arrays (lme4's prior weights and offset).
    ``start``: initial theta in lme4's order. Default: lme4's (1 on template diagonals, 0
    elsewhere), except that with a large dense block (crossed factors with many levels)
    scalar factors start from moment estimates (start.py; the optimum is the same).
    ``max_iter``: optimizer iterations (0 evaluates at ``start`` without optimizing).
    ``hessian``: "exact" (Newton), "bfgs" (quasi-Newton on exact gradients, started from the
    exact Hessian at the start) or "auto" (currently "bfgs"; see engine.use_exact_hessian).
    """
    t0 = time.perf_counter()
    design = build_design(formula, data, weights=weights, offset=offset)
    ms = setup(design)
    t1 = time.perf_counter()
    stats, scaling = compute(ms.factors, ms.nchain, ms.struct, design.X, design.y,
                             design.weights, design.offset)
    if start is None:
        theta0 = layout.theta_start(ms.entries)
        if use_moments(ms.struct):
            theta0 = np.asarray(moments(stats, jnp.asarray(theta0)))
    else:
        theta0 = np.asarray(start, float)
    if theta0.shape != (ms.struct.n_theta,):
        raise ValueError(f"start must have {ms.struct.n_theta} elements (lme4's theta order), "
                         f"got shape {theta0.shape}")
    res = fit_stats_jit(stats, jnp.asarray(theta0), reml=reml, max_iter=max_iter,
                        hessian=hessian)
    res = _to_host(res)
    t2 = time.perf_counter()
    return LinearMixedModel(ms, scaling, res, reml, theta0, hessian, data_name,
                            timings={"design": t1 - t0, "fit": t2 - t1},
                            weights_name=weights if isinstance(weights, str) else None,
                            offset_name=offset if isinstance(offset, str) else None)


def _to_host(tree):
    import jax

    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))  # one batched transfer


def _unique_names(names):
    seen, out = {}, []
    for nm in names:
        k = seen.get(nm, 0)
        out.append(nm if k == 0 else f"{nm}.{k}")
        seen[nm] = k + 1
    return out


@dataclass
class LinearMixedModel:
    """A fitted linear mixed model (lme4's merMod / MixedModels.jl's LinearMixedModel)."""

    setup: ModelSetup
    scaling: object
    result: object  # engine.FitResult on the host
    reml: bool
    theta0: np.ndarray
    hessian: str = "auto"
    data_name: str | None = None
    timings: dict = field(default_factory=dict)
    weights_name: str | None = None  # column names, when given by name (for the summary)
    offset_name: str | None = None

    # ------------------------------------------------------------------ parameters
    @property
    def design(self) -> Design:
        return self.setup.design

    @property
    def formula(self) -> str:
        return self.design.formula

    @property
    def theta(self) -> np.ndarray:
        """Relative covariance parameters in lme4's order (getME(m, "theta"))."""
        return np.asarray(self.result.opt.theta, float)

    @property
    def theta_names(self) -> list[str]:
        terms = self.design.terms
        out = []
        for e in self.setup.entries:
            t = terms[e.term]
            f = self.setup.factors[e.factor]
            start = f.term_slices[f.terms.index(e.term)][0]
            r, c = e.row - start, e.col - start
            if r == c:
                out.append(f"{t.group}.{t.columns[r]}")
            else:
                out.append(f"{t.group}.{t.columns[r]}.{t.columns[c]}")
        return out

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.setup.struct.lower)

    @property
    def nobs(self) -> int:
        return int(self.design.y.shape[0])

    @property
    def sigma(self) -> float:
        return float(self.result.sol.sigma) * self.scaling.s

    @property
    def objective(self) -> float:
        """REML criterion (reml=True) or ML deviance at the optimum: REMLcrit()/deviance()."""
        return float(self.result.opt.fun)

    @property
    def loglik(self) -> float:
        return -0.5 * self.objective

    @property
    def npar(self) -> int:
        return self.design.X.shape[1] + self.setup.struct.n_theta + 1

    @property
    def aic(self) -> float:
        return self.objective + 2.0 * self.npar

    @property
    def bic(self) -> float:
        return self.objective + np.log(self.nobs) * self.npar

    def _a_inv(self):
        return np.linalg.inv(self.scaling.a_matrix())

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates beta, named by coefficient."""
        sc = self.scaling
        g = sc.s * np.asarray(self.result.sol.gamma, float)
        if sc.intercept is not None:
            g[sc.intercept] += sc.c
        return pd.Series(self._a_inv() @ g, index=list(self.design.fixef_names), name="fixef")

    @property
    def vcov(self) -> pd.DataFrame:
        """Covariance matrix of the fixed-effects estimates: sigma^2 (X'V^{-1}X)^{-1}."""
        ai = self._a_inv()
        v = (self.sigma ** 2) * ai @ np.asarray(self.result.sol.xtx_inv) @ ai.T
        names = list(self.design.fixef_names)
        return pd.DataFrame(v, index=names, columns=names)

    @property
    def stderr(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov.values)), index=self.vcov.index, name="stderr")

    # ------------------------------------------------------------------ variance components
    def _term_covariances(self):
        """(term index, group label, column names, covariance matrix) in lme4's term order."""
        terms = self.design.terms
        order = []
        for e in self.setup.entries:
            if e.term not in order:
                order.append(e.term)
        labels = _unique_names([terms[t].group for t in order])
        out = []
        for t, lab in zip(order, labels):
            q = terms[t].Z.shape[1]
            T = np.zeros((q, q))
            for i, e in enumerate(self.setup.entries):
                if e.term == t:
                    f = self.setup.factors[e.factor]
                    start = f.term_slices[f.terms.index(t)][0]
                    T[e.row - start, e.col - start] = self.theta[i]
            out.append((t, lab, terms[t].columns, self.sigma ** 2 * T @ T.T))
        return out

    @property
    def varcorr(self) -> pd.DataFrame:
        """Like R's as.data.frame(VarCorr(m)): grp, var1, var2, vcov, sdcor."""
        rows = []
        for _, lab, cols, S in self._term_covariances():
            sd = np.sqrt(np.diag(S))
            for i, c in enumerate(cols):
                rows.append((lab, c, None, S[i, i], sd[i]))
            q = len(cols)
            for j in range(q):
                for i in range(j + 1, q):
                    den = sd[i] * sd[j]
                    cor = S[i, j] / den if den > 0 else np.nan
                    rows.append((lab, cols[j], cols[i], S[i, j], cor))
        rows.append(("Residual", None, None, self.sigma ** 2, self.sigma))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    @property
    def is_singular(self) -> bool:
        return bool(self.singular_components)

    @property
    def singular_components(self) -> list[str]:
        """Variance components on the boundary (template diagonal <= 1e-4, as isSingular)."""
        th, names = self.theta, self.theta_names
        return [nm for i, (nm, lo) in enumerate(zip(names, self.lower))
                if lo == 0.0 and th[i] <= SINGULAR_TOL]

    # ------------------------------------------------------------------ optimizer record
    @property
    def converged(self) -> bool:
        return int(self.result.opt.status) == 0

    @property
    def optinfo(self) -> dict:
        o = self.result.opt
        status = int(o.status)
        return {
            "optimizer": ("projected Newton, exact autodiff gradient and Hessian"
                          if use_exact_hessian(self.setup.struct, self.hessian) else
                          "projected BFGS, exact autodiff gradient"),
            "status": status,
            "message": STATUS[status],
            "converged": status == 0,
            "iterations": int(o.iterations),
            "evaluations": int(o.evaluations),
            "proj_grad": float(o.proj_grad),
            "gradient": np.asarray(o.grad, float).tolist(),
            "theta0": np.asarray(self.theta0, float).tolist(),
            "theta": self.theta.tolist(),
            "objective": self.objective,
            "reml": self.reml,
            "timings": dict(self.timings),
        }

    @property
    def messages(self) -> list[str]:
        msgs = list(self.design.messages)
        if self.is_singular:
            msgs.append("boundary (singular) fit: variance component(s) at zero: "
                        + ", ".join(self.singular_components))
        if not self.converged:
            msgs.append("convergence: " + self.optinfo["message"])
        return msgs

    # ------------------------------------------------------------------ random effects
    def _ranef_arrays(self):
        """Per factor (lme4 factor order): (factor, b (G, q), condsd (G, q)) in data units."""
        s = self.scaling.s
        order, seen = [], set()
        for e in self.setup.entries:
            if e.factor not in seen:
                seen.add(e.factor)
                order.append(e.factor)
        out = []
        for pos in order:
            f = self.setup.factors[pos]
            b = s * np.asarray(self.result.sol.b[pos])
            cv = np.asarray(self.result.sol.cond_var[pos])
            csd = self.sigma * np.sqrt(np.maximum(np.diagonal(cv, axis1=1, axis2=2), 0.0))
            out.append((f, b, csd))
        return out

    def ranef(self, condvar: bool = True) -> pd.DataFrame:
        """Like as.data.frame(ranef(m, condVar = TRUE)): grpvar, term, grp, condval, condsd."""
        frames = []
        for f, b, csd in self._ranef_arrays():
            G, q = b.shape
            for c in range(q):
                d = {"grpvar": f.group, "term": f.columns[c], "grp": list(f.levels),
                     "condval": b[:, c]}
                if condvar:
                    d["condsd"] = csd[:, c]
                frames.append(pd.DataFrame(d))
        return pd.concat(frames, ignore_index=True)

    def fitted(self) -> np.ndarray:
        """X beta + Z b (+ offset) for the rows used in the fit."""
        d = self.design
        mu = d.X @ self.fixef.values
        for f, b, _ in self._ranef_arrays():
            mu = mu + np.sum(f.Z * b[f.codes], axis=1)
        if d.offset is not None:
            mu = mu + d.offset
        return mu

    def residuals(self, scaled: bool = False) -> np.ndarray:
        """Response residuals y - fitted; ``scaled=True`` gives Pearson residuals / sigma."""
        r = self.design.y - self.fitted()
        if scaled:
            w = 1.0 if self.design.weights is None else np.sqrt(self.design.weights)
            r = r * w / self.sigma
        return r

    # ------------------------------------------------------------------ output
    def summary(self) -> str:
        from .summary import format_summary

        return format_summary(self)

    def __repr__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        """JSON-ready record of the fit."""
        return {
            "formula": self.formula,
            "reml": self.reml,
            "nobs": self.nobs,
            "objective": self.objective,
            "loglik": self.loglik,
            "aic": self.aic,
            "bic": self.bic,
            "theta": dict(zip(self.theta_names, self.theta.tolist())),
            "sigma": self.sigma,
            "fixef": self.fixef.to_dict(),
            "stderr": self.stderr.to_dict(),
            "varcorr": self.varcorr.replace({np.nan: None}).to_dict(orient="records"),
            "is_singular": self.is_singular,
            "singular_components": self.singular_components,
            "converged": self.converged,
            "optinfo": self.optinfo,
            "messages": self.messages,
        }
