"""Parametric bootstrap: simulate from the fitted model, refit, collect (lme4's ``bootMer``,
MixedModels.jl's ``parametricbootstrap``).

Replicate i draws y*_i = ``simulate.draw(fold_in(key, i), ...)`` at the model's estimates
and refits it with ``fit_stats(suffstats(design, y=y*_i))`` (same REML flag, lme4's default
start: each replicate is exactly a separate ``jaxlmm.fit`` of y*_i). Replicates run in
batches of ``batch_size`` through one compiled program, ``jax.vmap`` of simulate-and-refit
over the replicate indices; the key of replicate i does not depend on the batching. The
last batch is padded (its extra replicates are computed and discarded) so every batch
reuses the same executable.

Variance parameters are reported three ways: theta (lme4's order), and the standard
deviations and correlations of each random-effects term, named as lme4's
``confint(m, method = "boot")`` names them: ``.sig01``, ``.sig02``, ... term by term (terms in
lme4's order), within a term the lower triangle column by column, standard deviations on
the diagonal and correlations below it; the residual standard deviation (lme4's ``.sigma``)
is the column ``sigma``. ``BootstrapResult.parameters`` maps every column to its group and
variables (MixedModels.jl's ``allpars`` calls them sigma / rho of group, names).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .diagnostics import SINGULAR_TOL
from .engine import fit_stats
from .errors import DataError
from .optimize import STATUS
from .simulate import as_key, draw, parameters, ranef_modes
from .stats import suffstats

MAX_DEFAULT_BATCH = 1000
MEMORY_BUDGET = 512 * 2 ** 20  # bytes per batch that the default batch_size aims at
CROSSED_CPU_WARNING = (
    "bootstrap(vectorize='vmap') of a model with crossed random effects on the CPU backend: "
    "jaxlib 0.10's batched LAPACK calls inside vmap can deadlock XLA's CPU thread pool (the "
    "process hangs with no CPU use; docs/jax.md). The default on the CPU, "
    "vectorize='map', runs the replicates one after another inside the compiled program "
    "instead (and is faster there); or pin the process to one core (`taskset -c 0 python "
    "...`); warn=False silences this warning")


class Replicates(NamedTuple):
    """What one batch returns (leading axis: replicate)."""

    objective: jax.Array  # (B,) REML criterion or ML deviance
    beta: jax.Array  # (B, p)
    stderr: jax.Array  # (B, p) standard errors of beta
    sigma: jax.Array  # (B,)
    theta: jax.Array  # (B, k)
    status: jax.Array  # (B,) optimizer status (optimize.STATUS)
    iterations: jax.Array  # (B,)


def refit_one(key, design, beta, theta, sigma, b, reml: bool, max_iter: int, hessian: str):
    """Simulate one response with ``key`` and refit it (pure; vmapped by ``refit_batch``)."""
    y = draw(key, design, beta, theta, sigma, b)
    r = fit_stats(suffstats(design, y=y), reml=reml, max_iter=max_iter, hessian=hessian)
    se = r.sigma * jnp.sqrt(jnp.diagonal(r.solution.xtx_inv))
    return Replicates(r.objective, r.beta, se, r.sigma, r.theta, r.status, r.iterations)


@partial(jax.jit, static_argnames=("size", "reml", "max_iter", "hessian", "vectorize"))
def refit_batch(design, key, start, beta, theta, sigma, b=None, *, size: int, reml: bool,
                max_iter: int = 200, hessian: str = "auto",
                vectorize: str = "vmap") -> Replicates:
    """Replicates start, ..., start + size - 1 in one compiled call: replicate i simulates
    with ``fold_in(key, i)`` and refits (``refit_one``). ``vectorize="vmap"`` batches them
    (jax.vmap), ``"map"`` runs them one after another inside the program (lax.map)."""
    def one(i):
        return refit_one(jax.random.fold_in(key, i), design, beta, theta, sigma, b, reml,
                         max_iter, hessian)

    idx = start + jnp.arange(size)
    if vectorize == "map":
        return jax.lax.map(one, idx)
    return jax.vmap(one)(idx)


# ------------------------------------------------------------------ compiled-program cache

_COMPILED: OrderedDict = OrderedDict()
_CACHE_SIZE = 8


def _compiled(args, statics):
    """The compiled ``refit_batch`` for these argument shapes and static options, compiled
    ahead of time (so compile time is measured apart from run time) and kept in a small LRU
    cache. Returns (executable, compile seconds, whether it came from the cache)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    sig = (treedef, tuple((np.shape(x), np.result_type(x).str if not isinstance(x, jax.Array)
                           else str(x.dtype)) for x in leaves), statics)
    hit = _COMPILED.get(sig)
    if hit is not None:
        _COMPILED.move_to_end(sig)
        return hit, 0.0, True
    t = time.perf_counter()
    exe = refit_batch.lower(*args, **dict(statics)).compile()
    dt = time.perf_counter() - t
    _COMPILED[sig] = exe
    while len(_COMPILED) > _CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return exe, dt, False


def default_batch_size(design, n: int) -> int:
    """Replicates per batch: as many as fit a memory budget of MEMORY_BUDGET bytes
    (a rough count of the per-replicate arrays: rows, per-level blocks, the dense block),
    at most MAX_DEFAULT_BATCH and n."""
    st = design.struct
    rows = design.n * (st.p + 2)
    levels = sum(G * q * (q + st.p + 1) for G, q in st.factors)
    per = 8 * (4 * rows + 8 * levels + 6 * st.m ** 2)
    return int(max(1, min(n, MAX_DEFAULT_BATCH, MEMORY_BUDGET // max(per, 1))))


# ------------------------------------------------------------------ variance parameters


def sdcor(info, theta, sigma):
    """Standard deviations and correlations of every random-effects term, lme4's ``.sigNN``
    order (module docstring), from theta (R, k) and sigma (R,).

    Returns (values (R, s), descriptors [(name, kind, group, var1, var2)]). A correlation
    with a zero standard deviation is NaN (0/0, as lme4's)."""
    theta = np.atleast_2d(np.asarray(theta, float))
    sigma = np.atleast_1d(np.asarray(sigma, float))
    cols, desc = [], []
    for _, label, names, cells in info.theta_terms:
        q = len(names)
        T = np.zeros((theta.shape[0], q, q))
        for i, r, c in cells:
            T[:, r, c] = theta[:, i]
        S = (sigma ** 2)[:, None, None] * T @ np.swapaxes(T, 1, 2)
        sd = np.sqrt(np.maximum(np.diagonal(S, axis1=1, axis2=2), 0.0))
        for j in range(q):
            for i in range(j, q):
                if i == j:
                    cols.append(sd[:, i])
                    desc.append(("sd", label, names[i], None))
                else:
                    den = sd[:, i] * sd[:, j]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        cols.append(np.where(den > 0, S[:, i, j] / np.where(den > 0, den, 1.0),
                                             np.nan))
                    desc.append(("cor", label, names[j], names[i]))
    width = max(2, len(str(len(cols))))
    named = [(f".sig{j + 1:0{width}d}",) + d for j, d in enumerate(desc)]
    values = np.stack(cols, axis=1) if cols else np.zeros((theta.shape[0], 0))
    return values, named


# ------------------------------------------------------------------ intervals


def shortest_interval(v, level: float = 0.95):
    """The shortest interval holding ``ceil(level * n)`` of the n finite values of ``v``
    (MixedModels.jl's ``shortestcovint``; ties: the leftmost). NaN if there are none."""
    x = np.sort(np.asarray(v, float)[np.isfinite(v)])
    n = x.size
    if n == 0:
        return (np.nan, np.nan)
    k = int(math.ceil(n * level))
    if k >= n:
        return (x[0], x[-1])
    k = max(k, 1)
    width = x[k - 1:] - x[:n - k + 1]
    i = int(np.argmin(width))
    return (x[i], x[i + k - 1])


def percentile_interval(v, level: float = 0.95):
    """Equal-tailed quantiles (1 -/+ level) / 2 of the finite values of ``v``: R's default
    ``quantile(type = 7)`` (numpy's "linear"). NaN if there are none."""
    x = np.asarray(v, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (np.nan, np.nan)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(x, [a, 1.0 - a])
    return (float(lo), float(hi))


# ------------------------------------------------------------------ result


@dataclass
class BootstrapResult:
    """Parametric bootstrap replicates of a fitted model (see ``bootstrap``).

    ``replicates``: one row per replicate: ``objective``, the fixed effects by name,
    ``sigma``, the sd/cor parameters ``.sig01``, ... and ``theta:<lme4 theta name>``.
    ``estimates``: the same quantities for the fitted model. ``parameters``: what each column
    is (kind: objective / beta / sigma / sd / cor / theta; group; var1; var2).
    ``status``: per replicate the optimizer's status code and message, ``converged``,
    ``singular`` (a template diagonal <= 1e-4, lme4's isSingular) and ``iterations``.
    ``stderr``: per replicate the standard errors of the fixed effects.
    ``timings``: ``compile_s`` (0 if the program was already compiled in this process),
    ``run_s`` (all batches), ``per_replicate_s``, ``batches``, ``batch_size``.
    """

    replicates: pd.DataFrame
    estimates: pd.Series
    parameters: pd.DataFrame
    status: pd.DataFrame
    stderr: pd.DataFrame
    reml: bool
    seed: object
    use_ranef: bool
    timings: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.replicates)

    @property
    def n_converged(self) -> int:
        return int(self.status["converged"].sum())

    @property
    def n_singular(self) -> int:
        return int(self.status["singular"].sum())

    @property
    def status_counts(self) -> dict:
        """{status message: number of replicates}, every status that occurred."""
        c = self.status["code"].value_counts().sort_index()
        return {STATUS[int(k)]: int(v) for k, v in c.items()}

    def default_parm(self) -> list[str]:
        """lme4's ``confint(method = "boot")`` rows: sd/cor parameters, sigma, fixed effects."""
        kinds = self.parameters["kind"]
        sig = list(self.parameters.index[kinds.isin(["sd", "cor"])])
        beta = list(self.parameters.index[kinds == "beta"])
        return sig + ["sigma"] + beta

    def confint(self, level: float = 0.95, method: str = "percentile", parm=None, *,
                converged_only: bool = False) -> pd.DataFrame:
        """Bootstrap confidence intervals, one row per parameter (columns lower, upper,
        estimate, n = finite replicates used).

        ``method="percentile"``: equal-tailed quantiles by R's default ``quantile(type = 7)``
        (lme4's ``confint(method = "boot")`` uses boot.ci's "perc", which interpolates on
        the normal-quantile scale instead; the two differ by less than the spacing of
        neighbouring replicates). ``method="shortest"``: the shortest interval holding
        ``ceil(level * n)`` replicates (MixedModels.jl's ``confint`` / ``shortestcovint``).
        ``parm``: column names of ``replicates`` (default: sd/cor parameters, sigma, fixed
        effects, as lme4). Non-finite values (a correlation of a zero variance) are
        skipped. ``converged_only``: drop replicates whose optimizer did not converge.
        """
        if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
            raise DataError(f"level must be in (0, 1), got {level!r}")
        fun = {"percentile": percentile_interval, "shortest": shortest_interval}.get(method)
        if fun is None:
            raise DataError(f"method must be 'percentile' or 'shortest', got {method!r}")
        parm = self.default_parm() if parm is None else (
            [parm] if isinstance(parm, str) else list(parm))
        missing = [p for p in parm if p not in self.replicates.columns]
        if missing:
            raise DataError(f"unknown parameter(s) {missing}; choose from "
                            f"{list(self.replicates.columns)}")
        rep = self.replicates[self.status["converged"].values] if converged_only \
            else self.replicates
        rows = []
        for p in parm:
            v = rep[p].to_numpy(float)
            lo, hi = fun(v, level)
            rows.append((p, lo, hi, self.estimates[p], int(np.isfinite(v).sum())))
        out = pd.DataFrame(rows, columns=["parameter", "lower", "upper", "estimate", "n"])
        out = out.set_index("parameter")
        out.attrs.update(level=level, method=method)
        return out

    def summary(self) -> str:
        rep = self.replicates
        lines = [f"Parametric bootstrap: {self.n} replicates ({'REML' if self.reml else 'ML'}"
                 f"{', conditional on the random effects' if self.use_ranef else ''}), seed "
                 f"{self.seed!r}"]
        counts = "; ".join(f"{v} {k.split(';')[0]}" for k, v in self.status_counts.items())
        lines.append(f"optimizer status: {counts}")
        lines.append(f"singular fits (a variance component at zero): {self.n_singular}")
        t = self.timings
        if t:
            lines.append(f"compile {t.get('compile_s', 0):.2f} s"
                         f"{' (cached)' if t.get('compile_cached') else ''}, run "
                         f"{t.get('run_s', 0):.3f} s ({t.get('batches')} batch(es) of "
                         f"{t.get('batch_size')})")
        cols = self.default_parm()
        tab = pd.DataFrame({"estimate": self.estimates[cols],
                            "boot mean": rep[cols].mean(),
                            "boot sd": rep[cols].std(ddof=1)})
        lines.append(tab.to_string(float_format=lambda x: f"{x:.5g}"))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _columns(m):
    """Column names and descriptors of a replicates table for model ``m``."""
    info = m.design.info
    fixef = list(m.fixef.index)
    _, sdc = sdcor(info, m.theta[None, :], np.array([m.sigma]))
    desc = [("objective", "objective", None, None, None)]
    desc += [(nm, "beta", None, nm, None) for nm in fixef]
    desc += [("sigma", "sigma", "Residual", None, None)]
    desc += list(sdc)
    desc += [(f"theta:{nm}", "theta", None, nm, None) for nm in m.theta_names]
    names = [d[0] for d in desc]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:  # a fixed effect named like another column
        raise DataError(f"fixed-effect names clash with bootstrap column names: {dup}")
    params = pd.DataFrame(desc, columns=["name", "kind", "group", "var1", "var2"])
    return params.set_index("name")


def _table(m, objective, beta, sigma, theta, params):
    vals, _ = sdcor(m.design.info, theta, sigma)
    data = np.column_stack([objective, beta, sigma, vals, theta])
    return pd.DataFrame(data, columns=list(params.index))


def bootstrap(m, n: int, seed=0, batch_size: int | None = None, use_ranef: bool = False, *,
              beta=None, theta=None, sigma=None, max_iter: int = 200,
              hessian: str | None = None, vectorize: str | None = None,
              warn: bool = True) -> BootstrapResult:
    """Parametric bootstrap of the fitted model ``m``: ``n`` responses simulated at its
    estimates (``simulate``), each refitted with the model's REML flag; lme4's
    ``bootMer(m, FUN, nsim = n, use.u = use_ranef)``, MixedModels.jl's
    ``parametricbootstrap``.

    All refits go through ``jax.vmap`` of one compiled simulate-and-fit program, in batches
    of ``batch_size`` replicates (default: ``default_batch_size``, at most 1,000, bounded
    by a memory budget); no Python loop per replicate. Replicate i uses the PRNG key
    ``fold_in(key(seed), i)``: results do not depend on ``batch_size``, and
    ``simulate(m, n, seed)[i]`` is the response replicate i refits. ``beta``, ``theta``,
    ``sigma`` replace the parameters simulated from; ``max_iter`` and ``hessian`` (default:
    the model's) go to the optimizer. Non-converged and singular replicates are kept and
    counted (``status``); a warning says how many did not converge (``warn=False``
    silences it).

    ``vectorize``: "vmap" (batched refits; the default on accelerators) or "map" (lax.map:
    the batch's refits one after another inside the same compiled program, still no Python
    loop; the default on the CPU, where it measured 2.2-2.5x faster than vmap, whose loop
    runs until the batch's slowest member converges). On a multi-core CPU, "vmap" of a model
    with crossed factors runs batched LAPACK calls on which jaxlib 0.10 can deadlock
    (docs/jax.md) and warns.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise DataError(f"n must be a positive integer (number of replicates), got {n!r}")
    n = int(n)
    design = m.design
    if batch_size is None:
        batch_size = default_batch_size(design, n)
    if (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool)
            or batch_size < 1):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(min(batch_size, n))
    hessian = m.hessian if hessian is None else hessian
    cpu = jax.default_backend() == "cpu"
    risky = bool(design.struct.rest) and cpu and _cores() > 1
    if vectorize is None:
        vectorize = "map" if cpu else "vmap"
    if vectorize not in ("vmap", "map"):
        raise DataError(f"vectorize must be 'vmap' or 'map', got {vectorize!r}")
    if warn and risky and vectorize == "vmap":
        warnings.warn(CROSSED_CPU_WARNING, RuntimeWarning, stacklevel=2)
    key = as_key(seed)
    b0, th0, s0 = parameters(m, beta, theta, sigma)
    b = ranef_modes(m) if use_ranef else None
    design = jax.device_put(design)
    args = (design, key, jnp.asarray(0), jnp.asarray(b0), jnp.asarray(th0), jnp.asarray(s0),
            None if b is None else jax.device_put(b))
    statics = (("size", batch_size), ("reml", bool(m.reml)), ("max_iter", int(max_iter)),
               ("hessian", str(hessian)), ("vectorize", vectorize))
    exe, compile_s, cached = _compiled(args, statics)

    nb = -(-n // batch_size)
    t = time.perf_counter()
    outs = [exe(design, key, jnp.asarray(i * batch_size), *args[3:]) for i in range(nb)]
    outs = jax.device_get(outs)
    run_s = time.perf_counter() - t
    R = Replicates(*(np.concatenate([np.asarray(getattr(o, f)) for o in outs])[:n]
                     for f in Replicates._fields))

    params = _columns(m)
    table = _table(m, R.objective, R.beta, R.sigma, R.theta, params)
    est = _table(m, np.array([m.objective]), m.fixef.values[None, :], np.array([m.sigma]),
                 m.theta[None, :], params).iloc[0]
    est.name = "estimate"
    diag = np.isfinite(np.asarray(design.struct.lower, float))
    singular = (np.any(R.theta[:, diag] <= SINGULAR_TOL, axis=1) if diag.any()
                else np.zeros(n, bool))
    status = pd.DataFrame({"code": R.status.astype(int),
                           "message": [STATUS[int(s)].split(";")[0] for s in R.status],
                           "converged": R.status == 0, "singular": singular,
                           "iterations": R.iterations.astype(int)})
    stderr = pd.DataFrame(R.stderr, columns=list(m.fixef.index))
    timings = {"compile_s": compile_s, "compile_cached": cached, "run_s": run_s,
               "per_replicate_s": run_s / n, "batches": nb, "batch_size": batch_size,
               "padded": nb * batch_size - n, "vectorize": vectorize}
    res = BootstrapResult(table, est, params, status, stderr, bool(m.reml), seed,
                          bool(use_ranef), timings)
    bad = n - res.n_converged
    if warn and bad:
        warnings.warn(f"{bad} of {n} bootstrap refits did not converge "
                      f"({res.status_counts}); they are kept in the replicates (see .status; "
                      "confint(converged_only=True) drops them)", stacklevel=2)
    return res
