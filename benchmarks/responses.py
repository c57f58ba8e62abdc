#!/usr/bin/env python
"""Responses per second: fit B simulated responses that share one design.

    .venv/bin/python benchmarks/responses.py [--quick] [--B 1000] [--only sleepstudy,slopes,crossed]

For each workload a design (formula + data) is fixed and B responses are
simulated from the model. Every method fits the *same* responses:

* ``jaxlmm-vmap``  all B in one call of
  ``jax.jit(lambda d, Y: jax.vmap(lambda y: fit_stats(suffstats(d, y=y)))(Y))``;
  the first call (trace + compile + run) is timed separately from the median of
  at least ``--reps`` warm calls;
* ``jaxlmm-loop``  all B, one warm call of the jitted single-response
  ``fit_stats(suffstats(d, y=y))`` per response;
* ``jaxlmm-fit``   ``jaxlmm.fit(formula, df)`` per response (pandas level, design
  rebuilt every time), on a subset;
* ``lme4-refit``   R: one ``lmer`` fit, then ``refit(m, newresp)`` per response
  (lme4's fast path for a new response), see ``lme4_responses.R``;
* ``lme4-lmer``    R: a full ``lmer`` per response, on a small subset;
* ``mixedlm``, ``mixedlm-rs``, ``statsmodels``: a Python loop of the tool's fit
  with the response column replaced, on a subset (the last two: one grouping
  factor only).

Each method runs in its own fresh process, one after the other. Subsets are
prefixes of the same B responses, cut short by ``--budget`` seconds, so that
agreement with jaxlmm (REML criterion and fixed effects) is checked on exactly
the responses a method fitted. Results go to ``benchmarks/responses.md`` and
``benchmarks/responses.json`` (``--quick``: ``benchmarks/out/responses_quick.*``).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
R_SCRIPT = HERE / "lme4_responses.R"

JAX_METHODS = ["jaxlmm-vmap", "jaxlmm-loop", "jaxlmm-fit"]
METHODS = JAX_METHODS + ["lme4-refit", "lme4-lmer", "mixedlm", "mixedlm-rs", "statsmodels"]
SINGLE_FACTOR_ONLY = {"mixedlm-rs", "statsmodels"}
WORKLOADS = ["sleepstudy", "slopes", "crossed"]
CRIT_TOL = 1e-3  # absolute difference of the REML criterion that counts as "a different optimum"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ==========================================================================
# workloads: a design plus B simulated responses
# ==========================================================================


@dataclass
class Workload:
    name: str
    title: str
    formula: str
    response: str
    factor_cols: tuple
    df: object  # pandas DataFrame with the design columns (response = first simulated one)
    Y: object  # (B, n) float64
    truth: dict
    single_factor: dict | None = None  # statsmodels-style description
    params: dict = field(default_factory=dict)


def _normalize(df, factor_cols):
    sys.path.insert(0, str(HERE))
    import workloads as W  # the same normalisation as run.py: factors -> str, numbers -> float64

    return W.normalize(df, factor_cols)


def make_sleepstudy(B: int, seed: int) -> Workload:
    """The sleepstudy design; responses from lme4's REML fit of Reaction ~ Days + (Days | Subject)."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    import workloads as W

    df, source = W._sleepstudy()
    df = _normalize(df, ("Subject",))
    # lme4 1.1 REMLcrit-optimal estimates (jaxlmm, lme4 and mixedlm agree to ~1e-7)
    beta = np.array([251.405104848, 10.467285960])
    theta = np.array([0.966732960, 0.015169048, 0.230909593])  # lme4 order: T11, T21, T22
    sigma = 25.591815540
    T = np.array([[theta[0], 0.0], [theta[1], theta[2]]])
    codes = np.unique(df["Subject"].to_numpy(), return_inverse=True)[1]
    G = codes.max() + 1
    days = df["Days"].to_numpy()
    rng = np.random.default_rng(seed)
    b = sigma * rng.standard_normal((B, G, 2)) @ T.T  # b_g ~ N(0, sigma^2 T T')
    Y = (beta[0] + beta[1] * days) + b[:, codes, 0] + b[:, codes, 1] * days
    Y = Y + sigma * rng.standard_normal((B, len(df)))
    df = df.copy()
    df["Reaction"] = Y[0]
    return Workload(
        name="sleepstudy",
        title=f"sleepstudy design ({source}), 18 subjects x 10 days, responses simulated from the REML fit",
        formula="Reaction ~ Days + (Days | Subject)",
        response="Reaction",
        factor_cols=("Subject",),
        df=df,
        Y=Y,
        truth={"beta": beta.tolist(), "theta": theta.tolist(), "sigma": sigma},
        single_factor={"fixed": "Reaction ~ Days", "group": "Subject", "re_formula": "~Days"},
    )


def make_slopes(B: int, groups: int, size: int, seed: int) -> Workload:
    """y ~ x + (x | g): `groups` groups of exactly `size` rows."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), size)
    n = g.size
    x = rng.standard_normal(n)
    sd, rho, sigma = np.array([1.0, 0.5]), 0.3, 1.0
    cov = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
    Lc = np.linalg.cholesky(cov)
    b = rng.standard_normal((B, groups, 2)) @ Lc.T
    Y = 1.0 + 0.5 * x + b[:, g, 0] + b[:, g, 1] * x + sigma * rng.standard_normal((B, n))
    df = pd.DataFrame({"y": Y[0], "x": x, "g": np.char.add("g", g.astype(str))})
    df = _normalize(df, ("g",))
    return Workload(
        name="slopes",
        title=f"simulated y ~ x + (x | g), {groups} groups x {size} rows",
        formula="y ~ x + (x | g)",
        response="y",
        factor_cols=("g",),
        df=df,
        Y=Y,
        truth={"beta": [1.0, 0.5], "sd": sd.tolist(), "corr": rho, "sigma": sigma},
        single_factor={"fixed": "y ~ x", "group": "g", "re_formula": "~x"},
        params={"groups": groups, "size": size},
    )


def make_crossed(B: int, users: int, items: int, rows: int, seed: int) -> Workload:
    """y ~ x + (1|u) + (1|i): every level at least once, the other rows uniform at random."""
    import numpy as np
    import pandas as pd

    if rows < max(users, items):
        raise ValueError("crossed workload needs rows >= max(users, items)")
    rng = np.random.default_rng(seed)
    u = np.concatenate([np.arange(users), rng.integers(users, size=rows - users)])
    i = np.concatenate([rng.permutation(items), rng.integers(items, size=rows - items)])
    rng.shuffle(i)
    x = rng.standard_normal(rows)
    sd_u, sd_i, sigma = 1.0, 0.5, 1.0
    Y = (1.0 + 0.5 * x + sd_u * rng.standard_normal((B, users))[:, u]
         + sd_i * rng.standard_normal((B, items))[:, i] + sigma * rng.standard_normal((B, rows)))
    df = pd.DataFrame({"y": Y[0], "x": x, "u": np.char.add("u", u.astype(str)),
                       "i": np.char.add("i", i.astype(str))})
    df = _normalize(df, ("u", "i"))
    return Workload(
        name="crossed",
        title=f"simulated y ~ x + (1|u) + (1|i), {users} x {items} levels, {rows} rows",
        formula="y ~ x + (1 | u) + (1 | i)",
        response="y",
        factor_cols=("u", "i"),
        df=df,
        Y=Y,
        truth={"beta": [1.0, 0.5], "sd_u": sd_u, "sd_i": sd_i, "sigma": sigma},
        params={"users": users, "items": items, "rows": rows},
    )


# ==========================================================================
# worker side (runs in a fresh process: responses.py --worker SPEC OUT)
# ==========================================================================


def _tolist(a):
    import numpy as np

    a = np.asarray(a, dtype=float)
    return [None if not math.isfinite(v) else v for v in a.ravel().tolist()] if a.ndim <= 1 else [
        _tolist(r) for r in a]


class _Recorder:
    """Collects per-response results and warning messages."""

    def __init__(self):
        self.objective, self.fixef, self.theta, self.converged = [], [], [], []
        self.warned = 0
        self.messages: list[str] = []

    def add(self, obj, fixef, theta=None, converged=True, caught=()):
        self.objective.append(float(obj))
        self.fixef.append([float(v) for v in fixef])
        self.theta.append(None if theta is None else [float(v) for v in theta])
        self.converged.append(bool(converged))
        if caught:
            self.warned += 1
            for w in caught:
                msg = f"{w.category.__name__}: {str(w.message)[:160]}"
                if msg not in self.messages and len(self.messages) < 10:
                    self.messages.append(msg)

    def dump(self):
        return {"objective": self.objective, "fixef": self.fixef, "theta": self.theta,
                "converged": self.converged, "n_warned": self.warned, "warnings": self.messages}


def _python_loop(spec, df, Y, fit_one):
    """Warm-up fit on response 0 (timed as 'first'), then the timed loop over a prefix."""
    resp = spec["response"]
    k_max = min(spec["subset"], Y.shape[0])
    budget = spec["budget"]
    rec = _Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df[resp] = Y[0]
        t = time.perf_counter()
        fit_one(df)
        first = time.perf_counter() - t
    t0 = time.perf_counter()
    for j in range(k_max):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df[resp] = Y[j]
            obj, fixef, theta, conv = fit_one(df)
        rec.add(obj, fixef, theta, conv, caught)
        if time.perf_counter() - t0 > budget:
            break
    total = time.perf_counter() - t0
    n = len(rec.objective)
    return {"first_s": first, "warm_total_s": total, "n_fitted": n, "per_response_s": total / n,
            **rec.dump()}


def _jax_setup():
    import jax

    # the compile must really be paid in this process (no persistent cache)
    jax.config.update("jax_enable_compilation_cache", False)
    import jaxlmm

    t = time.perf_counter()
    jax.numpy.zeros(()).block_until_ready()
    dev = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '?')}",
        "n_devices": jax.device_count(),
        "backend_init_s": time.perf_counter() - t,
        "jax_version": jax.__version__,
        "jaxlmm_version": getattr(jaxlmm, "__version__", "?"),
    }
    print(f"device: {info['device']} (backend {info['backend']})", flush=True)
    return jax, jaxlmm, info


def _fetch(jax, res):
    """Host copies of what a user reads from a FitResult (inside the timed region)."""
    import numpy as np

    return tuple(np.asarray(a) for a in jax.device_get(
        (res.objective, res.beta, res.theta, res.status, res.iterations)))


def _worker_jaxlmm_vmap(spec, df, Y):
    import numpy as np

    jax, jaxlmm, info = _jax_setup()
    reml = spec["reml"]
    d = jax.device_put(jaxlmm.design(spec["formula"], df))
    many = jax.jit(lambda d, Y: jax.vmap(lambda y: jaxlmm.fit_stats(jaxlmm.suffstats(d, y=y), reml=reml))(Y))
    t = time.perf_counter()
    out = _fetch(jax, many(d, Y))
    first = time.perf_counter() - t
    warm = []
    while len(warm) < spec["reps"] or (sum(warm) < spec["min_total"] and len(warm) < spec["max_reps"]):
        t = time.perf_counter()
        out = _fetch(jax, many(d, Y))
        warm.append(time.perf_counter() - t)
    obj, beta, theta, status, iters = out
    med = statistics.median(warm)
    B = Y.shape[0]
    return {**info, "first_s": first, "warm_s": warm, "warm_total_s": med, "n_fitted": B,
            "per_response_s": med / B, "compile_s": first - med,
            "objective": _tolist(obj), "fixef": _tolist(beta), "theta": _tolist(theta),
            "converged": [bool(s == 0) for s in np.asarray(status)],
            "status_counts": {str(int(k)): int(v) for k, v in zip(*np.unique(status, return_counts=True))},
            "iterations_mean": float(iters.mean()), "iterations_max": int(iters.max())}


def _worker_jaxlmm_loop(spec, df, Y):
    jax, jaxlmm, info = _jax_setup()
    reml = spec["reml"]
    d = jax.device_put(jaxlmm.design(spec["formula"], df))
    one = jax.jit(lambda d, y: jaxlmm.fit_stats(jaxlmm.suffstats(d, y=y), reml=reml))
    rows = list(Y)  # numpy rows (iterating a jax.Array row by row is far slower than the fits)
    t = time.perf_counter()
    _fetch(jax, one(d, rows[0]))
    first = time.perf_counter() - t
    passes = []
    while not passes or (len(passes) < spec["reps"] and sum(passes) < spec["loop_min_total"]):
        t = time.perf_counter()
        rs = [one(d, y) for y in rows]
        got = jax.device_get([(r.objective, r.beta, r.theta, r.status) for r in rs])
        passes.append(time.perf_counter() - t)
    med = statistics.median(passes)
    B = len(rows)
    per = med / B
    return {**info, "first_s": first, "warm_s": passes, "warm_total_s": med, "n_fitted": B,
            "per_response_s": per, "compile_s": first - per,
            "objective": [float(g[0]) for g in got], "fixef": [_tolist(g[1]) for g in got],
            "theta": [_tolist(g[2]) for g in got], "converged": [bool(g[3] == 0) for g in got]}


def _worker_jaxlmm_fit(spec, df, Y):
    import numpy as np

    jax, jaxlmm, info = _jax_setup()
    formula, reml = spec["formula"], spec["reml"]

    def fit_one(data):
        m = jaxlmm.fit(formula, data, reml=reml)
        return float(m.objective), np.asarray(m.fixef, dtype=float), np.asarray(m.theta, dtype=float), bool(m.converged)

    r = _python_loop(spec, df, Y, fit_one)
    r["compile_s"] = r["first_s"] - r["per_response_s"]
    return {**info, **r}


def _worker_mixedlm(spec, df, Y):
    import mixedlm
    import numpy as np

    formula, reml = spec["formula"], spec["reml"]

    def fit_one(data):
        r = mixedlm.lmer(formula, data, REML=reml)
        obj = float(r.REMLcrit()) if reml else float(r.deviance)
        return obj, list(r.fixef().values()), np.asarray(r.theta, dtype=float), bool(r.converged)

    return {"version": mixedlm.__version__, **_python_loop(spec, df, Y, fit_one)}


def _statsmodels_like(module_fit, spec, df, Y):
    import numpy as np

    sf, reml = spec["single_factor"], spec["reml"]

    def fit_one(data):
        r = module_fit(sf["fixed"], data, groups=sf["group"], re_formula=sf["re_formula"]).fit(reml=reml)
        # -2 llf (REML: restricted log-likelihood with all constants) == lme4's REMLcrit
        return -2.0 * float(r.llf), np.asarray(r.fe_params, dtype=float), None, bool(getattr(r, "converged", True))

    return _python_loop(spec, df, Y, fit_one)


def _worker_statsmodels(spec, df, Y):
    import statsmodels
    import statsmodels.formula.api as smf

    return {"version": statsmodels.__version__, **_statsmodels_like(smf.mixedlm, spec, df, Y)}


def _worker_mixedlm_rs(spec, df, Y):
    import mixedlm_rs

    return {"version": mixedlm_rs.__version__, **_statsmodels_like(mixedlm_rs.mixedlm, spec, df, Y)}


WORKERS = {
    "jaxlmm-vmap": _worker_jaxlmm_vmap,
    "jaxlmm-loop": _worker_jaxlmm_loop,
    "jaxlmm-fit": _worker_jaxlmm_fit,
    "mixedlm": _worker_mixedlm,
    "mixedlm-rs": _worker_mixedlm_rs,
    "statsmodels": _worker_statsmodels,
}


def run_worker(spec_path: str, out_path: str, body) -> int:
    """Worker-process entry: ``body(spec)`` -> result dict, written as JSON with a status;
    an exception is reported in the result, never raised."""
    spec = json.loads(Path(spec_path).read_text())
    result = {"method": spec["method"]}
    try:
        result.update(body(spec))
        result["status"] = "ok"
    except Exception as exc:  # report, never crash the benchmark
        result["status"] = "error"
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        result["traceback"] = traceback.format_exc()[-4000:]
    Path(out_path).write_text(json.dumps(result))
    return 0


def worker_main(spec_path: str, out_path: str) -> int:
    def body(spec):
        import numpy as np
        import pandas as pd

        return WORKERS[spec["method"]](spec, pd.read_pickle(spec["data"]), np.load(spec["Y"]))

    return run_worker(spec_path, out_path, body)


# ==========================================================================
# orchestrator side
# ==========================================================================


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), seconds; None where /proc is unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far (all cores; /proc/stat)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def run_proc(cmd, timeout, env=None, stall_s=0.0, pin_cpu=None):
    """Run cmd in its own process group; kill it on timeout or when it stalls.

    A *stall* is ``stall_s`` seconds in which the process used no CPU at all: what a deadlocked
    XLA:CPU thread pool looks like (every thread waiting on a futex). Returns
    (status, output tail, wall seconds, other) with status "ok", "exit N", "timeout" or "stalled" and
    other = the average number of cores that *other* processes kept busy meanwhile (None if unknown).
    """
    preexec = None
    if pin_cpu is not None:
        preexec = lambda: os.sched_setaffinity(0, {pin_cpu})  # noqa: E731
    t0 = time.perf_counter()
    busy0, own0 = _busy_s(), _own_cpu_s()
    with tempfile.TemporaryFile(mode="w+") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                                start_new_session=True, preexec_fn=preexec)
        status = None
        last_cpu, last_change = proc_cpu_s(proc.pid), time.monotonic()
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if now - t0 > timeout:
                status = "timeout"
                break
            cpu = proc_cpu_s(proc.pid)
            if cpu is None or last_cpu is None or cpu > last_cpu + 0.02:
                last_cpu, last_change = cpu, now
            elif stall_s and now - last_change > stall_s:
                status = "stalled"
                break
        if status is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        else:
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        logf.seek(0)
        out = logf.read()[-3000:]
    wall = time.perf_counter() - t0
    busy1, own1 = _busy_s(), _own_cpu_s()
    other = None
    if busy0 is not None and busy1 is not None and wall > 0:
        other = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    return status, out, wall, other


def run_python_method(method, wl_info, paths, args, tmp, pin_cpu=None):
    spec = {
        "method": method,
        "formula": wl_info["formula"],
        "reml": True,
        "response": wl_info["response"],
        "single_factor": wl_info["single_factor"],
        "data": str(paths["pkl"]),
        "Y": str(paths["npy"]),
        "subset": args.sm_subset if method == "statsmodels" else args.subset,
        "budget": args.budget,
        "reps": args.reps,
        "min_total": args.min_total,
        "max_reps": args.max_reps,
        "loop_min_total": args.loop_min_total,
    }
    stall = args.stall_s if method in JAX_METHODS else 0.0
    return spawn_worker(Path(__file__), spec, f"{wl_info['name']}.{method}", tmp, args, stall, pin_cpu)


def spawn_worker(script: Path, spec: dict, tag: str, tmp: Path, args, stall: float, pin_cpu=None) -> dict:
    """Run ``script --worker`` on ``spec`` in a fresh process (``args.timeout``; killed after
    ``stall`` s without CPU use, 0 = no guard): its result with wall_s and other_cpu_cores,
    or a record with status "error" / "stalled"."""
    import run as H

    tag = f"{tag}.{time.monotonic_ns()}"
    spec_path, out_path = tmp / f"{tag}.spec.json", tmp / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    status, out, wall, other = run_proc([sys.executable, str(Path(script).resolve()), "--worker",
                                         str(spec_path), str(out_path)], args.timeout, H.child_env(), stall, pin_cpu)
    if status != "ok" or not out_path.exists():
        why = {"timeout": f"killed after {args.timeout:g} s",
               "stalled": f"no CPU use for {args.stall_s:g} s (deadlock), killed"}.get(status, status)
        return {"method": spec["method"], "status": "stalled" if status == "stalled" else "error",
                "error": f"{why}: {out[-600:]}", "wall_s": wall, "other_cpu_cores": other}
    res = json.loads(out_path.read_text())
    res.update(wall_s=wall, other_cpu_cores=other)
    return res


def run_lme4(wl_info, paths, args, tmp, rinfo, k_refit, k_lmer):
    out_path = tmp / f"{wl_info['name']}.lme4.{time.monotonic_ns()}.json"
    k = min(args.lme4_subset, wl_info["B"])  # columns in Y.bin
    cmd = [rinfo["rscript"], "--vanilla", str(R_SCRIPT), str(paths["csv"]), str(paths["bin"]),
           str(wl_info["n"]), str(k), wl_info["formula"], "TRUE", ",".join(wl_info["factor_cols"]),
           wl_info["response"], str(k_refit), str(args.lme4_budget), str(k_lmer), str(args.lmer_budget),
           str(out_path)]
    status, out, wall, other = run_proc(cmd, args.timeout)
    if status != "ok" or not out_path.exists():
        err = {"status": "error", "error": f"Rscript {status}: {out[-600:]}", "wall_s": wall}
        return {"lme4-refit": dict(err, method="lme4-refit"), "lme4-lmer": dict(err, method="lme4-lmer")}
    res = json.loads(out_path.read_text())
    common = {k2: res.get(k2) for k2 in ("version", "matrix_version", "r_version", "import_s", "optimizer",
                                          "refit_reml_bug", "refit_patched")}
    out = {}
    for m, key in (("lme4-refit", "refit"), ("lme4-lmer", "lmer")):
        r = res[key]
        out[m] = ({"method": m, "status": "ok", "wall_s": wall, "other_cpu_cores": other, **common, **r}
                  if r["n_fitted"] > 0
                  else {"method": m, "status": "skipped", "reason": "not selected or subset 0"})
    return out


def agreement(res, ref, with_theta=True):
    """Max |difference| of criterion / fixef / theta between res and ref over res's prefix."""
    import numpy as np

    k = res.get("n_fitted", 0)
    if not k or ref is None:
        return None
    o1, o2 = np.asarray(res["objective"][:k], float), np.asarray(ref["objective"][:k], float)
    d = o1 - o2
    out = {
        "n": k,
        "max_abs_crit": float(np.nanmax(np.abs(d))),
        "n_crit_over_tol": int(np.sum(np.abs(d) > CRIT_TOL)),
        "n_peer_higher": int(np.sum(d > CRIT_TOL)),  # jaxlmm (ref) reached a lower criterion
        "n_peer_lower": int(np.sum(d < -CRIT_TOL)),
        "median_abs_crit": float(np.nanmedian(np.abs(d))),
    }
    f1, f2 = np.asarray(res["fixef"][:k], float), np.asarray(ref["fixef"][:k], float)
    out["max_abs_fixef"] = float(np.nanmax(np.abs(f1 - f2)))
    ok = np.abs(d) <= CRIT_TOL
    out["max_abs_fixef_where_crit_agrees"] = float(np.nanmax(np.abs(f1 - f2)[ok])) if ok.any() else None
    if with_theta and res.get("theta") and res["theta"][0] is not None and ref.get("theta"):
        t1, t2 = np.asarray(res["theta"][:k], float), np.asarray(ref["theta"][:k], float)
        out["max_abs_theta"] = float(np.nanmax(np.abs(t1 - t2)))
    return out


def bench_workload(wl: Workload, args, tmp: Path, rinfo: dict) -> dict:
    import numpy as np

    wdir = tmp / wl.name
    wdir.mkdir(parents=True, exist_ok=True)
    B, n = wl.Y.shape
    paths = {"pkl": wdir / "design.pkl", "npy": wdir / "Y.npy", "csv": wdir / "design.csv", "bin": wdir / "Y.bin"}
    wl.df.to_pickle(paths["pkl"])
    np.save(paths["npy"], np.ascontiguousarray(wl.Y, dtype=np.float64))
    wl.df.to_csv(paths["csv"], index=False)  # round-trip float formatting
    k_r = min(args.lme4_subset, B)
    np.ascontiguousarray(wl.Y[:k_r], dtype="<f8").tofile(paths["bin"])  # R: matrix(readBin(...), n, k)
    levels = {c: int(wl.df[c].nunique()) for c in wl.factor_cols}
    info = {"name": wl.name, "title": wl.title, "formula": wl.formula, "response": wl.response,
            "factor_cols": list(wl.factor_cols), "single_factor": wl.single_factor, "B": B, "n": n,
            "levels": levels, "truth": wl.truth, "params": wl.params}
    log(f"=== {wl.name}: {n} rows, levels {levels}, B = {B}")
    results: dict = {}
    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pin_all = args.jax_cores == "1"  # becomes True for the rest of the workload after a stall
    first_cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    for method in args.methods:
        if method in SINGLE_FACTOR_ONLY and wl.single_factor is None:
            results[method] = {"method": method, "status": "skipped", "reason": "n/a: one grouping factor only"}
            continue
        lme4_sel = [m for m in ("lme4-refit", "lme4-lmer") if m in args.methods]
        if method in lme4_sel and method != lme4_sel[0]:
            continue  # both lme4 methods come from one Rscript run
        load1 = os.getloadavg()[0]
        if method in lme4_sel:
            if not rinfo.get("available"):
                for m in lme4_sel:
                    results[m] = {"method": m, "status": "skipped", "reason": rinfo.get("reason", "R unavailable")}
                continue
            k_refit = k_r if "lme4-refit" in lme4_sel else 0
            k_lmer = min(args.lmer_subset, k_r) if "lme4-lmer" in lme4_sel else 0
            log(f"    lme4 (refit loop on <= {k_refit} responses, lmer loop on <= {k_lmer}) ...")
            rr = run_lme4(info, paths, args, wdir, rinfo, k_refit, k_lmer)
            for m, r in rr.items():
                if m not in lme4_sel:
                    continue
                r["cores"] = ncores
                r["load1_before"], r["load1_after"] = load1, os.getloadavg()[0]
                results[m] = r
        else:
            log(f"    {method} ... (load average {load1:.2f})")
            pin = first_cpu if (pin_all and method in JAX_METHODS) else None
            r = run_python_method(method, info, paths, args, wdir, pin_cpu=pin)
            r["cores"] = 1 if pin is not None else ncores
            if pin is not None and args.jax_cores != "1":
                r["pinned_after_stall_of_other"] = True
            if r.get("status") == "stalled" and args.stall_retry and ncores > 1 and first_cpu is not None:
                log(f"    {method}: stalled (XLA:CPU deadlock); retrying pinned to one core")
                first_err = r
                r = run_python_method(method, info, paths, args, wdir, pin_cpu=first_cpu)
                r["cores"] = 1
                r["retry_after_stall"] = {"error": first_err.get("error", "")[:300], "wall_s": first_err.get("wall_s")}
                pin_all = True  # like-for-like: the other jaxlmm methods of this workload run on one core too
            r["load1_before"], r["load1_after"] = load1, os.getloadavg()[0]
            results[method] = r
        for m in (lme4_sel if method in lme4_sel else (method,)):
            r = results.get(m, {})
            if r.get("status") == "ok":
                log(f"    {m}: {r['n_fitted']} responses, {r['per_response_s'] * 1e3:.3g} ms/response"
                    f" ({1 / r['per_response_s']:.4g}/s), first call {r.get('first_s', float('nan')):.3g} s")
            elif r:
                log(f"    {m}: {r.get('status')}: {str(r.get('error', r.get('reason')))[:300]}")

    # agreement: against jaxlmm-vmap (else the loop); the reference itself against lme4-refit
    ref_name = next((m for m in ("jaxlmm-vmap", "jaxlmm-loop") if results.get(m, {}).get("status") == "ok"), None)
    ref = results[ref_name] if ref_name else None
    for m, r in results.items():
        if r.get("status") != "ok":
            continue
        if m == ref_name:  # the reference itself: against lme4 (a full lmer per response if it ran)
            for ext in ("lme4-lmer", "lme4-refit"):
                other = results.get(ext)
                if other and other.get("status") == "ok":
                    a = agreement(other, ref)
                    r["agreement"] = a and {**a, "against": ext}
                    break
        else:
            a = agreement(r, ref)
            r["agreement"] = a and {**a, "against": ref_name}
    # responses whose criteria disagree (kept in the JSON even without --per-response)
    for m, r in results.items():
        a = r.get("agreement")
        if r.get("status") != "ok" or not a or not a["n_crit_over_tol"]:
            continue
        other = results[a["against"]]
        rows = []
        for j in range(a["n"]):
            dj = r["objective"][j] - other["objective"][j]
            if abs(dj) > CRIT_TOL and len(rows) < 20:
                rows.append({"index": j, "criterion": r["objective"][j], "criterion_ref": other["objective"][j],
                             "theta": r["theta"][j] if r.get("theta") else None,
                             "theta_ref": other["theta"][j] if other.get("theta") else None})
        r["disagreements"] = rows
    for r in results.values():
        if r.get("status") == "ok" and "converged" in r:
            r["n_nonconverged"] = sum(1 for c in r["converged"] if not c)
    # speed ratios
    per = {m: r["per_response_s"] for m, r in results.items() if r.get("status") == "ok"}
    for m, r in results.items():
        if m in per:
            if "jaxlmm-vmap" in per:
                r["ratio_vs_vmap"] = per[m] / per["jaxlmm-vmap"]
            if "jaxlmm-loop" in per:
                r["ratio_vs_loop"] = per[m] / per["jaxlmm-loop"]
    if not args.per_response:  # keep the JSON small: summaries only
        for r in results.values():
            for key in ("objective", "fixef", "theta", "converged"):
                r.pop(key, None)
    info["reference"] = ref_name
    info["results"] = results
    info["cores_available"] = ncores
    return info


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def fs(t):
    if t is None or (isinstance(t, float) and not math.isfinite(t)):
        return "—"
    if t < 0:
        return "−" + fs(-t)
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def frate(x):
    return "—" if not x else (f"{x:,.0f}" if x >= 100 else f"{x:.3g}")


def fratio(x, bold=True):
    if x is None:
        return "—"
    s = f"{x:.3g}×"
    return f"**{s}**" if bold and x > 1 else s


def fdiff(x):
    return "—" if x is None else f"{x:.1e}"


def agreement_cell(a):
    if not a:
        return "—"
    s = f"crit {fdiff(a['max_abs_crit'])}, β {fdiff(a['max_abs_fixef'])}"
    if a.get("max_abs_theta") is not None:
        s += f", θ {fdiff(a['max_abs_theta'])}"
    if a["n_crit_over_tol"]:
        s = (f"⚠ {a['n_crit_over_tol']}/{a['n']} differ > {CRIT_TOL:g} (jaxlmm lower in {a['n_peer_higher']}, "
             f"higher in {a['n_peer_lower']}); " + s)
        if a.get("max_abs_fixef_where_crit_agrees") is not None:
            s += f"; β {fdiff(a['max_abs_fixef_where_crit_agrees'])} where crit agrees"
    if a.get("against", "").startswith("lme4"):
        s = f"vs {a['against']}: " + s
    return s


def machine_lines(report: dict, extra: list | None = None) -> list:
    """The "## Machine" section of a report: CPU, OS, JAX backend, lme4, package versions,
    load, jaxlmm commit (``extra``: more bullet lines after lme4's)."""
    m = report["machine"]
    L = ["## Machine", ""]
    aff = m.get("cpu_affinity")
    L.append(f"- CPU: {m['cpu_model']}, {m['cpu_count']} logical cores ({aff} usable by this process)"
             + (f", {m['mem_total_gib']:.0f} GiB RAM" if m.get("mem_total_gib") else ""))
    L.append(f"- OS: {m['platform']}; Python {m['python']}")
    jx = m.get("jax", {})
    if "backend" in jx:
        L.append(f"- JAX {m['packages'].get('jax')} (jaxlib {m['packages'].get('jaxlib')}): backend "
                 f"`{jx['backend']}`, devices {', '.join(jx['devices'])}"
                 + ("  ← **jaxlmm ran on the accelerator**; the peers are CPU-only" if jx["backend"] != "cpu" else ""))
    else:
        L.append(f"- JAX: could not query devices ({jx.get('error', '?')[:200]})")
    r = report.get("r", {})
    if r.get("available"):
        L.append(f"- {r['r_version']}; lme4 {r['lme4']}, Matrix {r['Matrix']}"
                 + (f"; BLAS/LAPACK: {r['blas']}" if r.get("blas") else ""))
    else:
        L.append(f"- lme4: not run ({r.get('reason')})")
    L += list(extra or [])
    L.append("- versions: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v))
    L.append(f"- 1-minute load average: {m['loadavg_start']:.2f} at start, {m.get('loadavg_end', float('nan')):.2f} at end")
    g = report.get("git") or {}
    if g.get("commit"):
        L.append(f"- jaxlmm source: commit {g['commit']}"
                 + (f" with uncommitted changes in {', '.join(g['src_dirty'])}" if g.get("src_dirty") else "")
                 + f" (digest {report.get('jaxlmm_source_digest_start')})")
    if report.get("jaxlmm_source_digest_start") != report.get("jaxlmm_source_digest_end"):
        L.append("- **Warning: jaxlmm's source files changed during this run**; jaxlmm results may mix versions.")
    L.append("")
    return L


def render_md(report: dict) -> str:
    L = ["# jaxlmm benchmark: fitting many responses that share one design", ""]
    L.append(f"Generated {report['started']} by `{report['command']}` "
             f"({'quick' if report['quick'] else 'full'} sizes; total wall time {report.get('total_wall_s', 0):.0f} s).")
    L.append("")
    L.append("Responses per second for B simulated responses on one design. **Read the ratios; absolute times "
             "are specific to this machine** (a small shared CPU box unless the header says otherwise) and move with "
             "its load. Ratio = the method's time per response / jaxlmm's (vmap or loop) time per response: "
             "**> 1 means jaxlmm is faster**.")
    L.append("")
    L += machine_lines(report)
    wls = report["workloads"]
    L.append("## Summary: responses per second (ratio vs jaxlmm vmap)")
    L.append("")
    methods = [mm for mm in METHODS if any(mm in w["results"] for w in wls)]
    L.append("| workload | n rows | B | " + " | ".join(methods) + " |")
    L.append("|---|---:|---:|" + "---:|" * len(methods))
    for w in wls:
        cells = []
        for mm in methods:
            rr = w["results"].get(mm)
            if not rr or rr.get("status") != "ok":
                cells.append("n/a" if rr and "one grouping" in str(rr.get("reason", "")) else
                             (rr.get("status", "—") if rr else "—"))
                continue
            c = frate(1 / rr["per_response_s"])
            if mm != "jaxlmm-vmap" and rr.get("ratio_vs_vmap") is not None:
                c += f" ({fratio(rr['ratio_vs_vmap'])})"
            if rr.get("cores") == 1 and w.get("cores_available", 1) > 1:
                c += " †"
            a = rr.get("agreement")
            if a and a["n_crit_over_tol"]:
                c += " ⚠"
            cells.append(c)
        L.append(f"| {w['name']} | {w['n']:,} | {w['B']:,} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Responses per second from warm runs (jaxlmm: compile excluded, see the per-workload tables); "
             "in parentheses the ratio of the method's time per response to jaxlmm vmap's (> 1: vmap faster). "
             "Peers are timed on a prefix of the responses (see 'responses fitted'). "
             "† ran pinned to one CPU core (see notes). ⚠ criterion disagreement with jaxlmm on some responses "
             "(in the jaxlmm-vmap column: with lme4).")
    L.append("")

    for w in wls:
        L.append(f"## {w['name']}: `{w['formula']}` (REML), {w['n']:,} rows, B = {w['B']:,}")
        L.append("")
        lv = ", ".join(f"{k}: {v:,}" for k, v in w["levels"].items())
        L.append(f"{w['title']}; levels {lv}. Reference for agreement: {w.get('reference') or '—'}.")
        L.append("")
        L.append("| method | cores | responses fitted | first call | compile | warm total | per response | "
                 "responses/s | ratio vs vmap | ratio vs loop | agreement (max abs diff) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        notes = []
        for mm in METHODS:
            rr = w["results"].get(mm)
            if rr is None:
                continue
            if rr.get("status") != "ok":
                why = rr.get("reason") or rr.get("error", "")
                L.append(f"| {mm} | | {rr.get('status')} | | | | | | | | {str(why)[:120].replace('|', '/')} |")
                continue
            comp = rr.get("compile_s")
            L.append(
                f"| {mm} | {rr.get('cores', '?')} | {rr['n_fitted']:,} | {fs(rr.get('first_s'))} | "
                f"{fs(comp) if comp is not None else '—'} | {fs(rr['warm_total_s'])} | "
                f"{fs(rr['per_response_s'])} | {frate(1 / rr['per_response_s'])} | "
                f"{fratio(rr.get('ratio_vs_vmap')) if mm != 'jaxlmm-vmap' else '1'} | "
                f"{fratio(rr.get('ratio_vs_loop')) if mm != 'jaxlmm-loop' else '1'} | {agreement_cell(rr.get('agreement'))} |")
            nconv = rr.get("n_nonconverged", 0)
            if nconv:
                notes.append(f"{mm}: {nconv} of {rr['n_fitted']} fits report non-convergence"
                             + (f" (status counts {rr['status_counts']})" if rr.get("status_counts") else ""))
            if rr.get("n_warned"):
                notes.append(f"{mm}: {rr['n_warned']} of {rr['n_fitted']} fits raised warnings/messages, e.g. "
                             f"`{(rr.get('warnings') or [''])[0][:160]}`")
            if rr.get("disagreements"):
                ag = rr["agreement"]["against"]
                shown = []
                for q in rr["disagreements"][:5]:
                    th = (lambda t: "[" + ", ".join(f"{v:.3g}" for v in t) + "]" if t else "")
                    shown.append(f"#{q['index']}: {q['criterion']:.4f} {th(q['theta'])} vs {ag} "
                                 f"{q['criterion_ref']:.4f} {th(q['theta_ref'])}")
                notes.append(f"{mm}: responses whose criterion differs from {ag}'s (criterion θ): " + "; ".join(shown))
            if mm == "lme4-refit" and rr.get("refit_reml_bug"):
                notes.append("lme4-refit: the installed lme4 has the `refit()` REML bug (see 'lme4 refit' below); "
                             + ("**patched in-process** with upstream's one-line fix before timing."
                                if rr.get("refit_patched") else "**patching failed: these fits optimize a wrong "
                                "criterion**."))
            if rr.get("iterations_mean") is not None:
                notes.append(f"{mm}: optimizer iterations mean {rr['iterations_mean']:.1f}, max {rr['iterations_max']} "
                             "(under vmap every member runs until the slowest has finished)")
            if rr.get("retry_after_stall"):
                notes.append(f"{mm}: the first attempt (all cores) **deadlocked** (no CPU use for "
                             f"{report['settings']['stall_s']:g} s) and was killed; the row is the retry pinned to one "
                             "core. See 'Known problem' below.")
            if mm in ("jaxlmm-vmap", "jaxlmm-loop") and rr.get("warm_s"):
                notes.append(f"{mm}: warm {'calls' if mm == 'jaxlmm-vmap' else 'passes over all B'}: "
                             + ", ".join(fs(x) for x in rr["warm_s"]))
            oc = rr.get("other_cpu_cores")
            if oc is not None and oc > 0.2:
                notes.append(f"{mm}: other processes kept {oc:.2f} cores busy on average while it ran "
                             "(its times are inflated)")
            if rr.get("pinned_after_stall_of_other"):
                notes.append(f"{mm}: pinned to one core because an earlier jaxlmm method of this workload "
                             "deadlocked (like-for-like comparison among the jaxlmm rows)")
        vm, lp = w["results"].get("jaxlmm-vmap", {}), w["results"].get("jaxlmm-loop", {})
        if vm.get("status") == "ok" and lp.get("status") == "ok":
            tv = vm["first_s"]
            tl = lp["first_s"] + lp["warm_total_s"] - lp["per_response_s"]
            notes.insert(0, f"Including compilation, all {w['B']:,} responses take {fs(tv)} with vmap (first call) "
                            f"and {fs(tl)} with the jitted loop (first call + warm pass).")
        L.append("")
        for s in notes:
            L.append(f"- {s}")
        L.append("")

    s = report["settings"]
    L.append("## Methods and timing")
    L.append("")
    L.append("Every method runs in its own fresh process, one after the other, on the same design and the same "
             "simulated responses (numpy `.npy` / pickle for Python, CSV + raw float64 for R). Subsets are "
             "*prefixes* of the B responses.")
    L.append("")
    L.append("- **jaxlmm-vmap**: `many = jax.jit(lambda d, Y: jax.vmap(lambda y: fit_stats(suffstats(d, y=y)))(Y))`, "
             "design `d = jax.device_put(jaxlmm.design(formula, df))` passed as an argument; Y (B, n) is a host "
             "numpy array (its transfer is timed), results (criterion, β, θ, status) are copied back to the host "
             f"inside the timed region. *first call* = trace + compile + run; *warm total* = median of ≥ {s['reps']} "
             "further calls; *compile* = first − warm.")
    L.append("- **jaxlmm-loop**: `one = jax.jit(lambda d, y: fit_stats(suffstats(d, y=y)))`, "
             "`[one(d, y) for y in Y]` with numpy rows, then the results fetched; *warm total* = median pass over "
             f"all B (≥ 1 pass, up to {s['reps']} within {s['loop_min_total']:g} s); *compile* = first call − "
             "per-response warm time. Note: iterating a `jax.Array` row by row (`for y in jnp.asarray(Y)`) costs "
             "more than the fits themselves here; slice numpy rows or index instead.")
    L.append("- **jaxlmm-fit**: `jaxlmm.fit(formula, df, reml=True)` with the response column replaced, reading "
             "criterion, fixef and theta (design matrices rebuilt per response); first call on response 0 "
             "(compiles), then the timed loop.")
    L.append("- **lme4-refit** (`lme4_responses.R`): `m <- lmer(formula, data)` on response 1 (its time is "
             "*first call*), then `refit(m, Y[, j])` for each response, reading `REMLcrit`, `fixef`, `getME(, 'theta')`; "
             "only the loop is timed (`proc.time`). `refit` starts the optimizer at `m`'s θ (a warm start that the "
             "other methods do not get). **lme4-lmer**: a full `lmer()` per response (data column replaced).")
    L.append("- **mixedlm** (`mixedlm.lmer`), **mixedlm-rs** and **statsmodels** (`mixedlm(fixed, df, groups=, "
             "re_formula=).fit(reml=True)`, criterion = −2 llf): Python loops with the response column replaced; "
             "one warm-up fit first.")
    L.append(f"- Peers stop after `--subset` {s['subset']} responses (statsmodels {s['sm_subset']}, lme4-refit "
             f"{s['lme4_subset']}, lme4-lmer {s['lmer_subset']}) or once a loop has run for `--budget` "
             f"{s['budget']:g} s (lme4-refit {s['lme4_budget']:g} s, lme4-lmer {s['lmer_budget']:g} s), "
             "whichever comes first.")
    L.append(f"- **Agreement**: per response, |criterion − jaxlmm-vmap's| (REML criterion, lme4's `REMLcrit`), "
             f"max |Δβ| and max |Δθ| over the fitted prefix; ⚠ marks responses whose criteria differ by more "
             f"than {CRIT_TOL:g} (and says which side found the lower one). The jaxlmm-vmap row is compared with "
             "lme4-lmer (a full `lmer` per response from lme4's default start), else lme4-refit.")
    if s["stall_s"]:
        L.append(f"- **Deadlock guard**: a jaxlmm process that uses no CPU for {s['stall_s']:g} s is killed and "
                 + ("re-run pinned to one core; the workload's remaining jaxlmm methods then run pinned as well."
                    if s["stall_retry"] else "reported as stalled."))
    else:
        L.append("- **Deadlock guard**: off (`--stall-s 0`, or an accelerator backend).")
    L.append("- **Other load**: the CPU time used by other processes while a method ran is measured "
             "(/proc/stat minus this benchmark's own processes); a note appears above 0.2 cores.")
    L.append("")
    L.append("## lme4 refit: REML bug in lme4 < 1.1-33")
    L.append("")
    L.append("`refit(m, newresp)` in lme4 < 1.1-33 rebuilds the response module with "
             "`REML = isREML(object)`, i.e. 1, where `lmer` uses p, the number of fixed effects. For REML fits "
             "with p > 1 it therefore optimizes, and `REMLcrit()` reports, a criterion with n − 1 in place of n − p "
             "(sleepstudy: `REMLcrit(refit(m, y))` is ~8 units above the REML criterion of the same response fitted "
             "by `lmer`, at a slightly different θ). Upstream fixed it in April 2023 (lme4 commit 58b0f45b, "
             "`REML = object@resp$REML`). `lme4_responses.R` detects the bug (the refitted model's `resp$REML` "
             "differs from the original's) and then times a copy of `refit.merMod` with exactly that one change, "
             "so the timings are those of the fixed code path and the fits are correct.")
    L.append("")
    L.append("## Known problem: XLA:CPU deadlock with batched LAPACK calls (jaxlib 0.10)")
    L.append("")
    L.append("On the CPU backend, jaxlib 0.10's LAPACK custom calls (here the batched triangular solve "
             "`lapack_dtrsm_ffi`) split large batches over XLA's intra-op thread pool and block waiting for the "
             "pieces (`jax::ParallelBatchMap`). When the XLA runtime executes such calls on as many pool threads as "
             "the pool has (2 on a 2-core machine), every worker waits for work that no free worker can run: the "
             "process hangs with all threads in `futex_wait` and no CPU use (native stacks show "
             "`BlockingCounter::Wait` ← `ParallelBatchMap` ← `TriMatrixEquationSolver` on both `tf_XLAEigen` threads). "
             "It is timing dependent. With a one-core affinity the pool has one thread, the batch is never split and "
             "the hang cannot occur — hence the retry. "
             "A batch is split only when batch × cost per matrix ≥ 2·10⁵ flops, so small models and "
             "small B are rarely affected; accelerators are not affected.")
    L.append("")
    return "\n".join(L)


def git_state() -> dict:
    """Commit of the working tree and whether src/ has uncommitted changes (None outside git)."""
    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "src_dirty": sorted(ln[3:] for ln in (dirty or "").splitlines())}


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (B=50, tiny designs), writes to benchmarks/out/")
    p.add_argument("--B", type=int, default=None, help="responses per workload (default 1000; 50 with --quick)")
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--subset", type=int, default=None,
                   help="max responses for the per-response peers (jaxlmm-fit, mixedlm, mixedlm-rs); "
                        "default 100 (10 with --quick)")
    p.add_argument("--sm-subset", type=int, default=None, help="max responses for statsmodels (default 20; 5 quick)")
    p.add_argument("--lme4-subset", type=int, default=None, help="max responses for lme4-refit (default B)")
    p.add_argument("--budget", type=float, default=None,
                   help="stop a peer's loop once it has run this many seconds (default 20; 5 with --quick)")
    p.add_argument("--lme4-budget", type=float, default=None, help="same for lme4-refit (default 30; 10 quick)")
    p.add_argument("--lmer-subset", type=int, default=None,
                   help="max responses for lme4-lmer (default B, capped by --lme4-subset)")
    p.add_argument("--lmer-budget", type=float, default=None, help="time budget of lme4-lmer (default 15; 5 quick)")
    p.add_argument("--reps", type=int, default=3, help="min warm vmap calls; max loop passes (default 3)")
    p.add_argument("--min-total", type=float, default=1.0, help="keep repeating warm vmap calls until this many s")
    p.add_argument("--max-reps", type=int, default=10, help="max warm vmap calls (default 10)")
    p.add_argument("--loop-min-total", type=float, default=5.0,
                   help="stop repeating passes of the jitted loop after this many s (default 5)")
    p.add_argument("--timeout", type=float, default=900.0, help="per method and workload, seconds (default 900)")
    p.add_argument("--stall-s", type=float, default=20.0,
                   help="kill a jaxlmm process that used no CPU for this long (deadlock guard; 0 = off; default 20)")
    p.add_argument("--no-stall-retry", dest="stall_retry", action="store_false",
                   help="do not re-run a stalled jaxlmm method pinned to one core")
    p.add_argument("--jax-cores", choices=["all", "1"], default="all",
                   help="run the jaxlmm methods with all usable cores (default) or pinned to one")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("sizes")
    g.add_argument("--slope-groups", type=int, default=None, help="default 500 (100 quick)")
    g.add_argument("--slope-size", type=int, default=10, help="rows per group (default 10)")
    g.add_argument("--crossed-users", type=int, default=None, help="default 300 (60 quick)")
    g.add_argument("--crossed-items", type=int, default=None, help="default 50 (20 quick)")
    g.add_argument("--crossed-rows", type=int, default=None, help="default 5000 (1000 quick)")
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/responses; "
                                               "benchmarks/out/responses_quick with --quick)")
    p.add_argument("--keep-data", action="store_true", help="keep the generated data (temp dir)")
    p.add_argument("--per-response", action="store_true",
                   help="keep every response's criterion, fixef and theta in the JSON (large)")
    p.add_argument("--render", metavar="JSON", default=None, help="only re-render JSON to the matching .md")
    a = p.parse_args(argv)
    defaults = {"B": (1000, 50), "subset": (100, 10), "sm_subset": (20, 5), "budget": (20.0, 5.0),
                "lme4_budget": (30.0, 10.0), "lmer_budget": (15.0, 5.0), "slope_groups": (500, 100), "crossed_users": (300, 60),
                "crossed_items": (50, 20), "crossed_rows": (5000, 1000)}
    finish_args(p, a, defaults, WORKLOADS, METHODS)
    if a.lme4_subset is None:
        a.lme4_subset = a.B
    if a.lmer_subset is None:
        a.lmer_subset = a.B
    return a


def finish_args(p, a, defaults, workloads, methods):
    """Fill the options left at None with their (full, quick) defaults, split ``--only`` and
    ``--methods`` into lists (checked against the allowed names, in their canonical order)."""
    for k, (full, quick) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if a.quick else full)
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    a.methods = [x.strip() for x in a.methods.split(",") if x.strip()]
    for lst, allowed in ((a.only, workloads), (a.methods, methods)):
        bad = set(lst) - set(allowed)
        if bad:
            p.error(f"unknown {sorted(bad)}; choose from {allowed}")
    a.only = [w for w in workloads if w in a.only]
    a.methods = [m for m in methods if m in a.methods]
    return a


def new_report(script: str, argv, args, rinfo: dict, **extra) -> dict:
    """The report a benchmark fills in: command, settings, machine, R, source digest, git.
    On an accelerator the no-CPU-use stall guard is switched off (``args.stall_s = 0``): it
    targets an XLA:CPU deadlock, and an accelerator run may wait without CPU use."""
    import run as H

    machine = H.machine_info()
    jx = machine.get("jax", {})
    log(f"JAX backend {jx.get('backend')}, devices {jx.get('devices')}")
    if jx.get("backend") not in (None, "cpu") and args.stall_s:
        log("accelerator backend: the no-CPU-use deadlock guard is switched off")
        args.stall_s = 0.0
    log("lme4: " + (f"{rinfo['r_version']}, lme4 {rinfo['lme4']}" if rinfo.get("available") else rinfo["reason"]))
    return {
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", f"benchmarks/{script}", *argv]),
        "quick": args.quick,
        "settings": {k: v for k, v in vars(args).items() if k not in ("render", "out")},
        "machine": machine,
        "r": rinfo,
        **extra,
        "jaxlmm_source_digest_start": H.jaxlmm_source_digest(),
        "git": git_state(),
        "workloads": [],
    }


def run_report(report: dict, runs, prefix: Path, render, started: float, tmp: Path,
               keep_data: bool = False) -> int:
    """Run each workload thunk in ``runs``, writing the report (JSON + markdown) after each
    one and, whatever happens, at the end; then remove ``tmp`` unless ``keep_data``."""
    import run as H

    try:
        for run_one in runs:
            report["workloads"].append(run_one())
            report["total_wall_s"] = time.perf_counter() - started
            H.write_outputs(report, prefix, render)
    finally:
        report["total_wall_s"] = time.perf_counter() - started
        report["machine"]["loadavg_end"] = os.getloadavg()[0]
        report["jaxlmm_source_digest_end"] = H.jaxlmm_source_digest()
        H.write_outputs(report, prefix, render)
        if keep_data:
            log(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {prefix}.md and {prefix}.json ({report['total_wall_s']:.0f} s)")
    return 0


def script_start(argv, name: str, worker_main, parse_args, render_md):
    """The common start of responses.py and bootstrap.py (``name``): a ``--worker`` call or
    ``--render`` is done here and gives (exit code, None); otherwise (None, (argv, args,
    output prefix, temporary directory)), with ``benchmarks/`` and ``src/`` importable."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1], argv[2]), None
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    sys.path.insert(1, str(REPO / "src"))
    if args.render:
        src = Path(args.render)
        src.with_suffix(".md").write_text(render_md(json.loads(src.read_text())))
        log(f"rendered {src.with_suffix('.md')}")
        return 0, None
    prefix = Path(args.out) if args.out else (
        HERE / "out" / f"{name}_quick" if args.quick else HERE / name)
    return None, (argv, args, prefix, Path(tempfile.mkdtemp(prefix=f"jaxlmm-{name}-")))


def main(argv=None) -> int:
    code, job = script_start(argv, "responses", worker_main, parse_args, render_md)
    if job is None:
        return code
    argv, args, prefix, tmp = job
    started = time.perf_counter()
    import run as H
    log("collecting machine info ...")
    want_r = any(m.startswith("lme4") for m in args.methods)
    rinfo = H.r_info() if want_r else {"available": False, "reason": "not selected"}
    report = new_report("responses.py", argv, args, rinfo)
    makers = {
        "sleepstudy": lambda: make_sleepstudy(args.B, args.seed + 10),
        "slopes": lambda: make_slopes(args.B, args.slope_groups, args.slope_size, args.seed + 20),
        "crossed": lambda: make_crossed(args.B, args.crossed_users, args.crossed_items, args.crossed_rows,
                                        args.seed + 30),
    }
    runs = [lambda name=name: bench_workload(makers[name](), args, tmp, rinfo) for name in args.only]
    return run_report(report, runs, prefix, render_md, started, tmp, keep_data=args.keep_data)


if __name__ == "__main__":
    sys.exit(main())
