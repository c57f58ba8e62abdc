"""User-facing fit and result: a thin composition of design -> stats -> fit_stats -> tables."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from .diagnostics import (SINGULAR_TOL, WHAT_TO_TRY, bound_saddle, check, singular_message,
                          stuck_on_bound, value_grad_hessian)
from .engine import FitResult, fit_stats, use_exact_hessian
from . import memory, optimize
from .errors import DataError
from .frame import ModelFrame
from .modeldesign import Design, design as make_design
from .optimize import STATUS
from .stats import sharded_suffstats, suffstats



def fit(formula: str, data, *, reml: bool = True, weights=None, offset=None,
        start=None, max_iter: int = 200, hessian: str = "auto",
        data_name: str | None = None, chunk_rows: int | None = None,
        progress: bool | None = None, devices=None,
        batch_rows: int | None = None) -> "LinearMixedModel":
    """Fit a linear mixed model with lme4 syntax, e.g. ``"y ~ x + (1 + x | g)"``.

    The composition of the functional layer: ``design`` -> ``suffstats`` -> ``fit_stats``,
    with the result wrapped in a ``LinearMixedModel`` (names, tables, summary).
    ``reml=True`` (default) optimizes the REML criterion, else the ML deviance.
    ``weights``/``offset``: column names or arrays (lme4's prior weights and offset).
    ``start``: initial theta in lme4's order. Default: lme4's (1 on template diagonals, 0
    elsewhere), except that with a large dense block (crossed factors with many levels)
    scalar factors start from moment estimates (start.py; the optimum is the same).
    ``max_iter``: optimizer iterations (0 evaluates at ``start`` without optimizing).
    ``hessian``: "exact" (Newton), "bfgs" (quasi-Newton on exact gradients, started from the
    exact Hessian at the start) or "auto" (currently "bfgs"; see implicit.use_exact_hessian).
    ``chunk_rows``: compute the sufficient statistics in chunks of this many rows (bounded
    memory for the pass; stats.suffstats).
    ``progress``: a line per optimizer iteration on stderr (iteration, criterion, elapsed);
    default: on for big fits (1M rows or more, or a crossed dense block of 2,000 or more).
    ``devices``: a list of JAX devices to fit on: the statistics pass is split by rows
    (stats.sharded_suffstats, or chunked on the default device with ``chunk_rows``) and every
    evaluation by the first factor's groups (placement.shard_stats); same estimates.

    ``data`` may also be a Parquet file, a directory or list of Parquet (or Arrow
    IPC/Feather) files, or a pyarrow Dataset or Table: it is then read in batches of
    ``batch_rows`` rows (default 1,000,000; needs ``pip install "jaxlmm[parquet]"``) and
    never held whole: the same model as the table in memory (arrowio.py). ``weights`` and
    ``offset`` must then be column names; the model keeps no per-row data (fitted values,
    residuals, predict() without newdata, simulate and bootstrap raise RowsNotKeptError).
    """
    from . import arrowio

    if devices is not None:
        from .placement import as_devices

        devices = tuple(as_devices(devices))  # a clear error before any work
    if batch_rows is not None or arrowio.is_source(data):
        if not arrowio.is_source(data):
            raise DataError("batch_rows= reads a Parquet/Arrow source (a path, or a pyarrow "
                            "Dataset or Table) in batches; for a DataFrame use chunk_rows=")
        if chunk_rows is not None:
            raise DataError("chunk_rows= applies to data in memory; for data read in batches "
                            "use batch_rows=")
        return arrowio.fit_dataset(formula, data, batch_rows=batch_rows, reml=reml,
                                   weights=weights, offset=offset, start=start,
                                   max_iter=max_iter, hessian=hessian, data_name=data_name,
                                   progress=progress, devices=devices)
    t0 = time.perf_counter()
    d = make_design(formula, data, weights=weights, offset=offset)
    t1 = time.perf_counter()
    memory.check(d, chunk_rows=chunk_rows)  # an error now rather than out of memory later
    if devices is None or chunk_rows is not None:
        stats = suffstats(d, chunk_rows=chunk_rows)
    else:
        stats = sharded_suffstats(d, devices)
    return fitted(d, stats, {"design": t1 - t0}, t1, reml=reml, start=start,
                  max_iter=max_iter, hessian=hessian, progress=progress, devices=devices,
                  data_name=data_name, weights=weights, offset=offset)


def fitted(d: Design, stats, timings: dict, t_fit: float, *, reml: bool, start, max_iter: int,
           hessian: str, progress, devices, data_name, weights, offset) -> "LinearMixedModel":
    """The common end of ``fit`` and arrowio.fit_dataset: the optimum from the statistics
    (split across ``devices``, if any), wrapped with its names. ``timings`` of the earlier
    stages get "fit", the time since ``t_fit``; ``progress=None``: on for fits of 1M rows or
    more, or with a crossed dense block of 2,000 or more."""
    if progress is None:
        progress = d.n >= 1_000_000 or d.struct.m_rand >= 2_000
    res, notes = _run(_placed(stats, devices), d, reml, start, max_iter, hessian,
                      bool(progress))
    m = LinearMixedModel(d, res, reml, hessian, data_name,
                         timings=dict(timings, fit=time.perf_counter() - t_fit),
                         weights_name=weights if isinstance(weights, str) else None,
                         offset_name=offset if isinstance(offset, str) else None,
                         max_iter=max_iter, notes=notes, devices=devices)
    m.__dict__["stats"] = stats  # kept for refits, diagnostics and inference
    return m


def _placed(stats, devices):
    """The statistics split by groups across ``devices`` (placement.shard_stats), or as they
    are without devices."""
    if devices is None:
        return stats
    from .placement import shard_stats

    return shard_stats(stats, devices)


def _check_start(start, d: Design) -> np.ndarray:
    """``start`` as a float vector, checked before any tracing: its length, finite values,
    template diagonals >= 0."""
    names = d.info.theta_names
    try:
        theta0 = np.asarray(start, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"start must be {len(names)} numbers (lme4's theta order: "
                         f"{', '.join(names)}), got {start!r}") from None
    if theta0.shape != (d.struct.n_theta,):
        raise ValueError(f"start must have {d.struct.n_theta} elements (lme4's theta "
                         f"order: {', '.join(names)}), got shape {theta0.shape}")
    bad = [f"{nm} = {v!r}" for nm, v in zip(names, theta0.tolist()) if not np.isfinite(v)]
    if bad:
        raise ValueError(f"start must be finite; got {', '.join(bad)}")
    below = [f"{nm} = {v:g}" for nm, v, lo in zip(names, theta0, d.lower) if v < lo]
    if below:
        raise ValueError(f"start is below the lower bound 0 of the relative standard "
                         f"deviations: {', '.join(below)}; use values >= 0")
    return theta0


def _run(stats, d: Design, reml: bool, start, max_iter: int, hessian: str,
         progress: bool = False):
    """fit_stats on the host, with the start checked first; returns (result, notes).

    A criterion that is not finite at a given start (theta so large that the factorization
    overflows) is refitted from the default start, with a note; at the default start it
    is an error about the data (never a result full of NaN)."""
    theta0 = None if start is None else _check_start(start, d)
    if progress:
        optimize._PROGRESS["t0"] = time.perf_counter()
    res = _to_host(fit_stats(stats, reml=reml, theta0=theta0, max_iter=max_iter,
                             hessian=hessian, progress=progress))
    notes = ()
    if int(res.opt.status) == 3 and theta0 is not None:
        notes = (f"the criterion is not finite at the given start {theta0.tolist()} (theta "
                 "too large for the factorization); fitted from the default start instead",)
        res = _to_host(fit_stats(stats, reml=reml, max_iter=max_iter, hessian=hessian,
                                 progress=progress))
    if int(res.opt.status) in (0, 2) and not use_exact_hessian(hessian) and _stuck_on_saddle(
            stats, res, reml):
        # BFGS ended on a variance at 0 whose exact curvature is negative (a saddle on the
        # boundary: its positive-definite model keeps steering back there); Newton's exact
        # Hessian sees the negative curvature, so finish from where BFGS stopped
        newton = _to_host(fit_stats(stats, reml=reml, theta0=res.theta, max_iter=max_iter,
                                    hessian="exact", progress=progress))
        if int(newton.opt.status) == 0 and float(newton.objective) < float(res.objective):
            notes += ("the quasi-Newton search stopped on a saddle at the boundary (a variance "
                      "at 0 with negative curvature); finished by Newton's method with the "
                      "exact Hessian from there",)
            res = newton._replace(theta0=res.theta0)
    if int(res.opt.status) == 3:
        try:
            big = f"largest |response| {float(np.max(np.abs(np.asarray(d.y)), initial=0.0)):.3g}"
        except DataError:  # rows read in batches (arrowio) are not kept
            big = "response rows not kept"
        raise DataError(f"the criterion is not finite at the start theta = "
                        f"{np.asarray(res.theta0).tolist()} ({big}): "
                        f"{WHAT_TO_TRY[3]}")
    return res, notes


def _stuck_on_saddle(stats, res, reml: bool) -> bool:
    """Whether the fit ended with a variance at 0, zero gradient there and negative exact
    curvature (diagnostics.bound_saddle); the Hessian is evaluated only when some variance
    is at 0 with zero gradient."""
    lower = stats.struct.lower
    if not stuck_on_bound(res.theta, lower, float(res.opt.fun), res.opt.grad).any():
        return False
    f, g, H = value_grad_hessian(res.theta, stats, reml)
    return bool(bound_saddle(res.theta, lower, float(f), g, H).any())


def _to_host(tree):
    import jax

    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))  # one batched transfer


@dataclass
class LinearMixedModel:
    """A fitted linear mixed model (lme4's merMod / MixedModels.jl's LinearMixedModel)."""

    design: Design
    result: FitResult  # on the host (numpy leaves)
    reml: bool
    hessian: str = "auto"
    data_name: str | None = None
    timings: dict = field(default_factory=dict)
    weights_name: str | None = None  # column names, when given by name (for the summary)
    offset_name: str | None = None
    max_iter: int = 200
    notes: tuple = ()  # notes of the fitting itself (e.g. a start that was replaced)
    devices: tuple | None = None  # fit(devices=...): refits are split across them too

    @cached_property
    def stats(self):
        """The sufficient statistics of the design (stats.Stats), computed once."""
        return suffstats(self.design)

    def refit(self, *, reml: bool | None = None, start=None) -> "LinearMixedModel":
        """The same model refitted (default: same criterion), from ``start`` (default: this
        fit's theta). ``refit(reml=False)`` is lme4's refitML()."""
        reml = self.reml if reml is None else bool(reml)
        t0 = time.perf_counter()
        res, notes = _run(_placed(self.stats, self.devices), self.design, reml,
                          self.theta if start is None else start, self.max_iter, self.hessian)
        timings = {"design": self.timings.get("design", 0.0), "fit": time.perf_counter() - t0}
        m = LinearMixedModel(self.design, res, reml, self.hessian, self.data_name, timings,
                             self.weights_name, self.offset_name, self.max_iter, notes,
                             self.devices)
        m.__dict__["stats"] = self.stats
        return m

    def refit_ml(self) -> "LinearMixedModel":
        """This model fitted by maximum likelihood (itself when it already is), started
        from the REML estimate (lme4's refitML)."""
        return self if not self.reml else self.refit(reml=False)

    # ------------------------------------------------------------------ parameters
    @property
    def frame(self) -> ModelFrame:
        """The model frame: response, model matrices, terms, levels, dropped rows."""
        return self.design.info.frame

    @property
    def formula(self) -> str:
        return self.frame.formula

    @property
    def theta0(self) -> np.ndarray:
        """The optimizer's start (lme4's order)."""
        return np.asarray(self.result.theta0, float)

    @property
    def theta(self) -> np.ndarray:
        """Relative covariance parameters in lme4's order (getME(m, "theta"))."""
        return np.asarray(self.result.theta, float)

    @property
    def theta_names(self) -> list[str]:
        return self.design.info.theta_names

    @property
    def lower(self) -> np.ndarray:
        return self.design.lower

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def sigma(self) -> float:
        return float(self.result.sigma)

    @property
    def objective(self) -> float:
        """REML criterion (reml=True) or ML deviance at the optimum: REMLcrit()/deviance()."""
        return float(self.result.objective)

    @property
    def loglik(self) -> float:
        return -0.5 * self.objective

    @property
    def npar(self) -> int:
        return self.design.p + self.design.struct.n_theta + 1

    @property
    def aic(self) -> float:
        return self.objective + 2.0 * self.npar

    @property
    def bic(self) -> float:
        return self.objective + np.log(self.nobs) * self.npar

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates beta, named by coefficient."""
        return pd.Series(np.asarray(self.result.beta, float),
                         index=list(self.frame.fixef_names), name="fixef")

    @property
    def vcov(self) -> pd.DataFrame:
        """Covariance matrix of the fixed-effects estimates: sigma^2 (X'V^{-1}X)^{-1}."""
        v = (self.sigma ** 2) * np.asarray(self.result.solution.xtx_inv, float)
        names = list(self.frame.fixef_names)
        return pd.DataFrame(v, index=names, columns=names)

    @property
    def stderr(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov.values)), index=self.vcov.index, name="stderr")

    # ------------------------------------------------------------------ variance components
    def _term_covariances(self):
        """(term index, group label, column names, covariance matrix) in lme4's term order."""
        out = []
        for t, lab, cols, cells in self.design.info.theta_terms:
            T = np.zeros((len(cols), len(cols)))
            for i, r, c in cells:
                T[r, c] = self.theta[i]
            out.append((t, lab, cols, self.sigma ** 2 * T @ T.T))
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
                          if use_exact_hessian(self.hessian) else
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

    @cached_property
    def diagnostics(self) -> dict:
        """Convergence check at the optimum (diagnostics.check): Newton decrement, Hessian
        eigenvalues of the free parameters, gradient on the bounds, notes and what to try."""
        f, g, H = _to_host(value_grad_hessian(self.theta, self.stats, self.reml))
        return check(self.theta, self.lower, f, g, H, int(self.result.opt.status))

    @property
    def messages(self) -> list[str]:
        """Notes on the fit: model-frame notes, singular components, convergence problems
        and what to try (empty for a clean fit)."""
        msgs = list(self.frame.messages) + list(self.notes)
        if self.is_singular:
            msgs.append(singular_message(self.singular_components))
        d = self.diagnostics
        if not self.converged:
            msgs.append(f"convergence: {self.optinfo['message']}; what to try: "
                        f"{d['what_to_try']}")
        msgs += [f"convergence check: {n}" for n in d["notes"]]
        return msgs

    # ------------------------------------------------------------------ random effects
    def _ranef_arrays(self):
        """Per factor (lme4 factor order): (factor, b (G, q), condsd (G, q)) in data units."""
        info = self.design.info
        order, seen = [], set()
        for e in info.entries:
            if e.factor not in seen:
                seen.add(e.factor)
                order.append(e.factor)
        out = []
        for pos in order:
            f = info.factors[pos]
            b = np.asarray(self.result.solution.b[pos])
            cv = np.asarray(self.result.solution.cond_var[pos])
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

    def shrinkage(self, group: str | None = None) -> pd.DataFrame:
        """No, complete and partial pooling per grouping factor, level and random-effect
        column, with the shrinkage factor diag(S_j) (b_hat_j = S_j b_np_j); rows ordered as
        ``ranef()``, ``group`` keeps one factor. shrinkage.shrinkage."""
        from .shrinkage import shrinkage

        return shrinkage(self, group)

    def shrinkage_plot(self, group: str | None = None, terms=None, **kwargs):
        """No-pooling -> partial-pooling arrows per level (2-D for two terms, as
        MixedModelsMakie's shrinkageplot), population and complete pooling marked; a
        matplotlib Figure (``path=`` saves PNG/SVG). plots.shrinkage_plot."""
        from .plots import shrinkage_plot

        return shrinkage_plot(self, group=group, terms=terms, **kwargs)

    def caterpillar_plot(self, group: str | None = None, level: float = 0.95, **kwargs):
        """Sorted conditional modes with +- z conditional-sd intervals per grouping factor,
        as lme4's dotplot(ranef(m, condVar = TRUE)). plots.caterpillar_plot."""
        from .plots import caterpillar_plot

        return caterpillar_plot(self, group=group, level=level, **kwargs)

    def fitted(self) -> np.ndarray:
        """X beta + Z b (+ offset) for the rows used in the fit."""
        d = self.frame
        mu = d.X @ self.fixef.values
        for f, b, _ in self._ranef_arrays():
            mu = mu + np.sum(f.Z * b[f.codes], axis=1)
        if d.offset is not None:
            mu = mu + d.offset
        return mu

    def residuals(self, scaled: bool = False) -> np.ndarray:
        """Response residuals y - fitted; ``scaled=True`` gives Pearson residuals / sigma."""
        r = self.frame.y - self.fitted()
        if scaled:
            w = 1.0 if self.frame.weights is None else np.sqrt(self.frame.weights)
            r = r * w / self.sigma
        return r

    # ------------------------------------------------------------------ inference
    def coef_table(self, ddf: str | None = "Satterthwaite") -> pd.DataFrame:
        """Estimate, Std. Error, df, t value, Pr(>|t|) per fixed effect, as lmerTest's
        summary (Satterthwaite df from the exact Hessian in (theta, sigma));
        ``ddf="lme4"``: lme4's table without df and p (satterthwaite.coef_table)."""
        from .satterthwaite import coef_table

        return coef_table(self, ddf)

    def contrast(self, L, rhs=0.0, joint: bool = True) -> pd.DataFrame:
        """Test L beta = rhs with Satterthwaite df, as lmerTest's contest: a vector L (array
        or {fixef name: weight}) gives a t test, a matrix an F test (or a t test per row with
        ``joint=False``) (satterthwaite.contrast)."""
        from .satterthwaite import contrast

        return contrast(self, L, rhs, joint)

    def anova(self, type: int = 3, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """F tests of the fixed-effect terms, as lmerTest's anova(m) (type III by default,
        or type=1); for likelihood-ratio tests between models use jaxlmm.anova(m0, m1)."""
        from .satterthwaite import anova

        return anova(self, type, ddf)

    def profile(self):
        """The likelihood profile of the sds, correlations, sigma and fixed effects (lme4's
        profile(m)): ``.confint(level, which)``, ``.zeta(name, values)`` (the signed square
        root of the deviance change), ``.deviance(params)``. Computed once per model;
        profile.Profile."""
        if "_profile" not in self.__dict__:
            from .profile import Profile

            self.__dict__["_profile"] = Profile(self)
        return self.__dict__["_profile"]

    def confint(self, parm=None, level: float = 0.95, method: str = "profile",
                **kwargs) -> pd.DataFrame:
        """Confidence intervals, as lme4's confint(m): ``method="profile"`` (default;
        likelihood profiles of the sds, correlations, sigma and fixed effects), ``"Wald"``
        (fixed effects, normal quantiles) or ``"boot"`` (parametric bootstrap percentile
        intervals; ``nsim=``, ``seed=``)."""
        from .inference import confint

        return confint(self, parm, level, method, **kwargs)

    # ------------------------------------------------------------------ prediction
    def coef(self) -> dict:
        """Per grouping factor, a DataFrame (levels x fixef names) of fixed plus random
        effects, as lme4's coef(m) (predict.coef)."""
        from .predict import coef

        return coef(self)

    def predict(self, newdata=None, re=True, allow_new_levels: bool = True, *,
                interval: str | None = None, level: float = 0.95, offset=None):
        """Predictions for ``newdata`` (default: the fit's rows), as lme4's predict().

        ``re=True``: conditional on the random effects (a level not seen in the fit gets
        the population prediction for that factor, or a DataError with
        ``allow_new_levels=False``); ``re=False``: X beta + offset (lme4's re.form = NA);
        ``re=["g", ...]``: only those grouping factors. ``interval="confidence"`` or
        ``"prediction"`` returns a DataFrame (fit, lwr, upr, se) with normal quantiles at
        ``level``, theta and sigma taken as known (docs/inference.md). predict.predict.
        """
        from .predict import predict

        return predict(self, newdata, re, allow_new_levels, interval=interval, level=level,
                       offset=offset)

    # ------------------------------------------------------------------ simulation
    def simulate(self, n: int = 1, seed=0, use_ranef: bool = False, **kwargs) -> np.ndarray:
        """``n`` responses (n, nobs) simulated from the fitted model, as lme4's simulate():
        y* = X beta + offset + Z b* + e, b* ~ N(0, sigma^2 Lambda Lambda') (or the
        conditional modes with ``use_ranef=True``), e ~ N(0, sigma^2 / w). simulate.simulate.
        """
        from .simulate import simulate

        return simulate(self, n, seed, use_ranef, **kwargs)

    def bootstrap(self, n: int, seed=0, **kwargs):
        """Parametric bootstrap: ``n`` simulated responses refitted in batches through one
        compiled program (jax.vmap), as lme4's bootMer / MixedModels.jl's
        parametricbootstrap. Returns a BootstrapResult (replicates table, statuses,
        ``.confint(level, method="percentile" | "shortest")``). bootstrap.bootstrap."""
        from .bootstrap import bootstrap

        return bootstrap(self, n, seed, **kwargs)

    # ------------------------------------------------------------------ output
    def summary(self, ddf: str | None = "Satterthwaite") -> str:
        """Text summary laid out like lmerTest's summary(m) (fixed effects with
        Satterthwaite df and p-values), or lme4's with ``ddf="lme4"``."""
        from .summary import format_summary

        return format_summary(self, ddf)

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
            "diagnostics": self.diagnostics,
            "messages": self.messages,
        }
