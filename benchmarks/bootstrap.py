#!/usr/bin/env python
"""Parametric bootstrap: replicates per second, compile time apart from run time.

    .venv/bin/python benchmarks/bootstrap.py [--quick] [--B 1000] [--only sleepstudy,slopes,crossed]

For each workload a model is fitted once and B parametric bootstrap replicates are drawn
and refitted (simulate at the estimates, refit with the same REML flag) by

* ``jaxlmm``   ``jaxlmm.bootstrap.bootstrap(m, B, seed)`` with the library's default: every
  refit runs inside one compiled simulate-and-fit program, in batches, batched by
  ``jax.vmap`` on accelerators and by ``lax.map`` (one after another) on the CPU, where that
  is faster (recorded as ``vectorize``); ``jaxlmm-vmap`` forces ``jax.vmap``. The first call
  (ahead-of-time compile + run) is timed apart from warm calls (the compiled program
  reused); JAX's persistent compilation cache is off in that process, so the compile is
  really paid;
* ``lme4``     R: ``bootMer(m, FUN, nsim)`` (``lme4_bootstrap.R``; lme4 1.1-31's ``refit()``
  REML bug patched in-process as in ``lme4_responses.R``), in chunks until B replicates or
  ``--lme4-budget`` seconds;
* ``mixedlm``  PyPI mixedlm's ``bootMer(result, nsim, seed)`` (its parametric bootstrap), in
  chunks until B replicates or ``--mixedlm-budget`` seconds;
* MixedModels.jl's ``parametricbootstrap`` is the reference peer, but it is run only
  where ``julia`` is on the PATH with MixedModels installed (not on this machine: the
  report says so).

The tools draw different random responses (each its own RNG), so their replicates are
compared as distributions: bootstrap standard deviations of the fixed effects and sigma,
within Monte Carlo error. Every method runs in its own fresh process; a jaxlmm process
that stops using CPU (the XLA:CPU batched-LAPACK deadlock of jaxlib 0.10, see
responses.py) is killed and re-run pinned to one core. Results go to
``benchmarks/bootstrap.md`` / ``.json`` (``--quick``: ``benchmarks/out/bootstrap_quick.*``),
written with run.py's ``write_outputs``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
R_SCRIPT = HERE / "lme4_bootstrap.R"
sys.path.insert(0, str(HERE))

import responses as RS  # noqa: E402  (workload generators, process runner with stall guard)

WORKLOADS = ["sleepstudy", "slopes", "crossed"]
METHODS = ["jaxlmm", "jaxlmm-vmap", "lme4", "mixedlm", "mixedmodels-jl"]
Z_FLAG = 4.0  # |z| of a bootstrap-SD ratio beyond which the report flags a disagreement


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ==========================================================================
# workloads (designs and data only; the responses are simulated by each tool)
# ==========================================================================


def make_workload(name: str, args) -> dict:
    import workloads as W

    if name == "sleepstudy":
        df, source = W._sleepstudy()
        df = W.normalize(df, ("Subject",))
        return {"name": name, "formula": "Reaction ~ Days + (Days | Subject)", "reml": True,
                "factor_cols": ["Subject"], "df": df,
                "title": f"sleepstudy ({source}), 18 subjects x 10 days"}
    if name == "slopes":
        wl = RS.make_slopes(1, args.slope_groups, args.slope_size, args.seed + 20)
        return {"name": name, "formula": wl.formula, "reml": True, "factor_cols": list(wl.factor_cols),
                "df": wl.df, "title": wl.title}
    wl = RS.make_crossed(1, args.crossed_users, args.crossed_items, args.crossed_rows, args.seed + 30)
    return {"name": name, "formula": wl.formula, "reml": True, "factor_cols": list(wl.factor_cols),
            "df": wl.df, "title": wl.title}


# ==========================================================================
# workers (fresh processes: bootstrap.py --worker SPEC OUT)
# ==========================================================================


def _summaries(table: dict) -> dict:
    """{name: {mean, sd, n}} of columns given as lists (non-finite values skipped)."""
    import numpy as np

    out = {}
    for k, v in table.items():
        a = np.asarray(v, float)
        a = a[np.isfinite(a)]
        out[k] = {"mean": float(a.mean()) if a.size else None,
                  "sd": float(a.std(ddof=1)) if a.size > 1 else None, "n": int(a.size)}
    return out


def _worker_jaxlmm(spec, df):
    import numpy as np

    jax, jaxlmm, info = RS._jax_setup()  # persistent compilation cache off
    from jaxlmm.bootstrap import bootstrap

    m = jaxlmm.fit(spec["formula"], df, reml=spec["reml"])
    B, seed = spec["B"], spec["seed"]
    t = time.perf_counter()
    vec = spec.get("vectorize")
    b = bootstrap(m, B, seed=seed, batch_size=spec.get("batch_size"), vectorize=vec, warn=False)
    first_call = time.perf_counter() - t
    first = dict(b.timings)
    warm_call, warm_run, maxdiff = [], [], 0.0
    while len(warm_call) < spec["reps"] or (sum(warm_call) < spec["min_total"]
                                            and len(warm_call) < spec["max_reps"]):
        t = time.perf_counter()
        b2 = bootstrap(m, B, seed=seed, batch_size=spec.get("batch_size"), vectorize=vec,
                       warn=False)
        warm_call.append(time.perf_counter() - t)
        warm_run.append(b2.timings["run_s"])
        d = np.abs(b2.replicates.to_numpy() - b.replicates.to_numpy())
        maxdiff = max(maxdiff, float(np.nanmax(d)))
    call = statistics.median(warm_call)
    cols = b.default_parm()
    return {**info, "n_fitted": B, "batch_size": first["batch_size"], "batches": first["batches"],
            "vectorize": first.get("vectorize"),
            "first_call_s": first_call, "compile_s": first["compile_s"], "first_run_s": first["run_s"],
            "warm_call_s": warm_call, "warm_run_s": warm_run, "total_s": call,
            "per_replicate_s": call / B, "run_per_replicate_s": statistics.median(warm_run) / B,
            "repeat_max_abs_diff": maxdiff,
            "status_counts": b.status_counts, "n_nonconverged": B - b.n_converged,
            "n_singular": b.n_singular,
            "iterations_mean": float(b.status["iterations"].mean()),
            "iterations_max": int(b.status["iterations"].max()),
            "summaries": _summaries({c: b.replicates[c].tolist() for c in cols}),
            "estimates": {c: float(b.estimates[c]) for c in cols}}


def _worker_mixedlm(spec, df):
    import mixedlm
    import numpy as np

    r = mixedlm.lmer(spec["formula"], df, REML=spec["reml"])
    beta, sigma, failed, total, k = [], [], 0, 0.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while len(sigma) < spec["B"] and total < spec["budget"]:
            size = min(spec["chunk"], spec["B"] - len(sigma))
            t = time.perf_counter()
            b = mixedlm.bootMer(r, nsim=size, seed=spec["seed"] + k)
            total += time.perf_counter() - t
            beta.extend(np.asarray(b.beta_samples, float).tolist())
            sigma.extend(np.asarray(b.sigma_samples, float).tolist())
            failed += int(b.n_failed)
            k += 1
    beta = np.asarray(beta)
    names = list(getattr(b, "fixed_names", None) or [f"beta{j}" for j in range(beta.shape[1])])
    table = {nm: beta[:, j].tolist() for j, nm in enumerate(names)}
    table["sigma"] = sigma
    n = len(sigma)
    return {"version": mixedlm.__version__, "n_fitted": n, "chunks": k, "total_s": total,
            "per_replicate_s": total / n, "n_failed": failed, "summaries": _summaries(table)}


WORKERS = {"jaxlmm": _worker_jaxlmm, "jaxlmm-vmap": _worker_jaxlmm, "mixedlm": _worker_mixedlm}


def worker_main(spec_path: str, out_path: str) -> int:
    def body(spec):
        import pandas as pd

        return WORKERS[spec["method"]](spec, pd.read_pickle(spec["data"]))

    return RS.run_worker(spec_path, out_path, body)


# ==========================================================================
# orchestrator
# ==========================================================================


def run_python(method, wl, pkl, args, tmp, pin_cpu=None):
    spec = {"method": method, "formula": wl["formula"], "reml": wl["reml"], "data": str(pkl),
            "B": args.B, "seed": args.seed, "batch_size": args.batch_size, "reps": args.reps,
            "min_total": args.min_total, "max_reps": args.max_reps, "chunk": args.mixedlm_chunk,
            "budget": args.mixedlm_budget,
            "vectorize": "vmap" if method == "jaxlmm-vmap" else None}
    stall = args.stall_s if method.startswith("jaxlmm") else 0.0
    return RS.spawn_worker(Path(__file__), spec, f"{wl['name']}.{method}", tmp, args, stall, pin_cpu)


def run_lme4(wl, csv, args, tmp, rinfo):
    out_path = tmp / f"{wl['name']}.lme4.{time.monotonic_ns()}.json"
    cmd = [rinfo["rscript"], "--vanilla", str(R_SCRIPT), str(csv), wl["formula"],
           "TRUE" if wl["reml"] else "FALSE", ",".join(wl["factor_cols"]), str(args.B),
           str(args.lme4_budget), str(args.seed), str(args.lme4_chunk), str(out_path)]
    status, out, wall, other = RS.run_proc(cmd, args.timeout)
    if status != "ok" or not out_path.exists():
        return {"method": "lme4", "status": "error", "error": f"Rscript {status}: {out[-600:]}",
                "wall_s": wall}
    res = json.loads(out_path.read_text())
    cols = res.pop("columns")
    mean, sd = res.pop("mean"), res.pop("sd")
    res["summaries"] = {c: {"mean": mu, "sd": s, "n": res["n_fitted"] - res["n_failed"]}
                        for c, mu, s in zip(cols, mean, sd)}
    conv = res["summaries"].get("converged")
    sing = res["summaries"].get("singular")
    if conv and conv["mean"] is not None:
        res["n_nonconverged"] = int(round((1 - conv["mean"]) * res["n_fitted"]))
    if sing and sing["mean"] is not None:
        res["n_singular"] = int(round(sing["mean"] * res["n_fitted"]))
    res.update(method="lme4", status="ok", wall_s=wall, other_cpu_cores=other)
    return res


def julia_info() -> dict:
    julia = shutil.which("julia")
    if not julia:
        return {"available": False,
                "reason": "Julia is not installed on this machine (`julia` not on PATH); MixedModels.jl's "
                          "parametricbootstrap, the reference peer, was not run"}
    try:
        r = subprocess.run([julia, "-e", "using MixedModels; print(pkgversion(MixedModels))"],
                           capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "reason": f"julia failed: {exc}"}
    if r.returncode != 0:
        return {"available": False, "reason": "julia is installed but MixedModels.jl is not"}
    return {"available": False, "version": r.stdout.strip(),
            "reason": f"MixedModels.jl {r.stdout.strip()} is installed, but this benchmark has no Julia "
                      "driver yet"}


def sd_agreement(res, ref) -> dict | None:
    """Bootstrap SDs of the shared quantities (fixed effects, sigma): peer / jaxlmm, with the
    z-score of log(ratio) (SE of a log SD from n draws ~ 1/sqrt(2 (n - 1)))."""
    if not res.get("summaries") or not ref.get("summaries"):
        return None
    rows = {}
    for k, s in res["summaries"].items():
        r = ref["summaries"].get(k)
        if not r or k not in ref.get("estimates", {}) or k.startswith(".sig"):
            continue
        if not s.get("sd") or not r.get("sd") or s["n"] < 3 or r["n"] < 3:
            continue
        ratio = s["sd"] / r["sd"]
        se = math.sqrt(1 / (2 * (s["n"] - 1)) + 1 / (2 * (r["n"] - 1)))
        rows[k] = {"ratio": ratio, "z": math.log(ratio) / se, "sd": s["sd"], "sd_ref": r["sd"]}
    return rows or None


def bench_workload(wl, args, tmp, rinfo, jinfo) -> dict:
    wdir = tmp / wl["name"]
    wdir.mkdir(parents=True, exist_ok=True)
    pkl, csv = wdir / "data.pkl", wdir / "data.csv"
    wl["df"].to_pickle(pkl)
    wl["df"].to_csv(csv, index=False)
    df = wl.pop("df")
    info = {**wl, "n": len(df), "levels": {c: int(df[c].nunique()) for c in wl["factor_cols"]}, "B": args.B}
    log(f"=== {wl['name']}: {info['n']} rows, levels {info['levels']}, B = {args.B}")
    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    first_cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    results = {}
    for method in args.methods:
        load1 = os.getloadavg()[0]
        if method == "mixedmodels-jl":
            results[method] = {"method": method, "status": "skipped", "reason": jinfo["reason"]}
            continue
        if method == "lme4":
            if not rinfo.get("available"):
                results[method] = {"method": method, "status": "skipped", "reason": rinfo.get("reason")}
                continue
            log(f"    lme4 bootMer (<= {args.B} replicates, budget {args.lme4_budget:g} s) ...")
            r = run_lme4(info, csv, args, wdir, rinfo)
            r["cores"] = ncores
        else:
            pin = first_cpu if (method.startswith("jaxlmm") and args.jax_cores == "1") else None
            log(f"    {method} ... (load average {load1:.2f})")
            r = run_python(method, info, pkl, args, wdir, pin_cpu=pin)
            r["cores"] = 1 if pin is not None else ncores
            if r.get("status") == "stalled" and args.stall_retry and ncores > 1 and first_cpu is not None:
                log(f"    {method}: stalled (XLA:CPU deadlock); retrying pinned to one core")
                first_err = r
                r = run_python(method, info, pkl, args, wdir, pin_cpu=first_cpu)
                r["cores"] = 1
                r["retry_after_stall"] = {"error": first_err.get("error", "")[:300],
                                          "wall_s": first_err.get("wall_s")}
        r["load1_before"], r["load1_after"] = load1, os.getloadavg()[0]
        results[method] = r
        if r.get("status") == "ok":
            log(f"    {method}: {r['n_fitted']} replicates, {r['per_replicate_s'] * 1e3:.3g} ms/replicate "
                f"({1 / r['per_replicate_s']:.4g}/s)"
                + (f", compile {r['compile_s']:.2f} s" if r.get("compile_s") is not None else ""))
        else:
            log(f"    {method}: {r.get('status')}: {str(r.get('error', r.get('reason')))[:300]}")
    ref = results.get("jaxlmm", {})
    if ref.get("status") == "ok":
        for m, r in results.items():
            if m != "jaxlmm" and r.get("status") == "ok":
                r["ratio_vs_jaxlmm"] = r["per_replicate_s"] / ref["per_replicate_s"]
                r["sd_agreement"] = sd_agreement(r, ref)
    info["results"] = results
    info["cores_available"] = ncores
    return info


# --------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------


def render_md(report: dict) -> str:
    fs, frate, fratio = RS.fs, RS.frate, RS.fratio
    s = report["settings"]
    L = ["# jaxlmm benchmark: parametric bootstrap", ""]
    L.append(f"Generated {report['started']} by `{report['command']}` "
             f"({'quick' if report['quick'] else 'full'} sizes; total wall time {report.get('total_wall_s', 0):.0f} s).")
    L.append("")
    L.append("Replicates per second of a parametric bootstrap (simulate at the fitted model's estimates, refit, "
             "collect). **Read the ratios; absolute times are specific to this machine** and move with its load. "
             "Ratio = the tool's time per replicate / jaxlmm's warm time per replicate: **> 1 means jaxlmm is "
             "faster**.")
    L.append("")
    L += RS.machine_lines(report, extra=[f"- MixedModels.jl: {report['julia']['reason']}"])

    wls = report["workloads"]
    L.append("## Summary: replicates per second (ratio vs jaxlmm)")
    L.append("")
    L.append("| workload | rows | B | jaxlmm (warm) | jaxlmm compile | jaxlmm incl. compile | jaxlmm vmap | "
             "lme4 bootMer | mixedlm bootMer | MixedModels.jl |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for w in wls:
        res = w["results"]
        j = res.get("jaxlmm", {})
        if j.get("status") == "ok":
            jc = frate(1 / j["per_replicate_s"]) + (" †" if j.get("cores") == 1 and w["cores_available"] > 1 else "")
            jc += " (lax.map)" if j.get("vectorize") == "map" else ""
            comp = fs(j["compile_s"])
            incl = frate(j["n_fitted"] / j["first_call_s"])
        else:
            jc, comp, incl = j.get("status", "—"), "—", "—"
        cells = []
        for mm in ("jaxlmm-vmap", "lme4", "mixedlm"):
            rr = res.get(mm, {})
            if rr.get("status") == "ok":
                c = frate(1 / rr["per_replicate_s"])
                if rr.get("ratio_vs_jaxlmm") is not None:
                    c += f" ({fratio(rr['ratio_vs_jaxlmm'])})"
                ag = rr.get("sd_agreement") or {}
                if any(abs(a["z"]) > Z_FLAG for a in ag.values()):
                    c += " ⚠"
                cells.append(c)
            else:
                cells.append(rr.get("status", "—"))
        jl = res.get("mixedmodels-jl", {})
        cells.append("not run" if jl.get("status") != "ok" else frate(1 / jl["per_replicate_s"]))
        L.append(f"| {w['name']} | {w['n']:,} | {w['B']:,} | {jc} | {comp} | {incl} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("jaxlmm (warm): a whole `bootstrap(m, B)` call with the compiled program reused (median of warm "
             "calls, tables included); *incl. compile*: B / the first call's time (ahead-of-time compile + run). "
             "Peers: their bootstrap calls only (model fit, R start-up and imports excluded); in parentheses "
             "the ratio to jaxlmm's warm time per replicate (> 1: jaxlmm faster). † jaxlmm ran pinned to one "
             "CPU core (see notes). ⚠ a bootstrap SD differs from jaxlmm's by more than "
             f"{Z_FLAG:g} Monte Carlo standard errors.")
    L.append("")

    for w in wls:
        res = w["results"]
        lv = ", ".join(f"{k}: {v:,}" for k, v in w["levels"].items())
        L.append(f"## {w['name']}: `{w['formula']}` ({'REML' if w['reml'] else 'ML'}), {w['n']:,} rows, B = {w['B']:,}")
        L.append("")
        L.append(f"{w['title']}; levels {lv}.")
        L.append("")
        L.append("| tool | cores | replicates | compile | first call | warm call / total | per replicate | "
                 "replicates/s | ratio vs jaxlmm |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        notes = []
        for mm in METHODS:
            rr = res.get(mm)
            if rr is None:
                continue
            if rr.get("status") != "ok":
                why = str(rr.get("reason") or rr.get("error", ""))[:160].replace("|", "/")
                L.append(f"| {mm} | | {rr.get('status')} | | | | | | {why} |")
                continue
            L.append(f"| {mm} | {rr.get('cores', '?')} | {rr['n_fitted']:,} | {fs(rr.get('compile_s'))} | "
                     f"{fs(rr.get('first_call_s'))} | {fs(rr['total_s'])} | {fs(rr['per_replicate_s'])} | "
                     f"{frate(1 / rr['per_replicate_s'])} | "
                     f"{'1' if mm == 'jaxlmm' else fratio(rr.get('ratio_vs_jaxlmm'))} |")
            if mm == "jaxlmm":
                notes.append(f"jaxlmm: batches of {rr['batch_size']} ({rr['batches']} per call); device run time "
                             f"{fs(rr['run_per_replicate_s'])} per replicate (without building the tables); "
                             f"warm calls {', '.join(fs(x) for x in rr['warm_call_s'])}; optimizer iterations "
                             f"mean {rr['iterations_mean']:.1f}, max {rr['iterations_max']}; repeated calls "
                             f"reproduce the replicates to {rr['repeat_max_abs_diff']:.1e}")
            nc, sg = rr.get("n_nonconverged"), rr.get("n_singular")
            if nc is not None or sg is not None:
                notes.append(f"{mm}: {nc if nc is not None else '?'} of {rr['n_fitted']} refits not converged"
                             + (f" ({rr['status_counts']})" if rr.get("status_counts") else "")
                             + f", {sg if sg is not None else '?'} singular")
            if rr.get("n_failed"):
                notes.append(f"{mm}: {rr['n_failed']} replicates failed")
            if mm == "lme4" and rr.get("refit_reml_bug"):
                notes.append("lme4: the installed lme4 has the `refit()` REML bug that `bootMer` inherits; "
                             + ("**patched in-process** (upstream's one-line fix) before timing."
                                if rr.get("refit_patched") else "**patching failed: its replicates optimize a "
                                "wrong criterion**."))
            if rr.get("retry_after_stall"):
                notes.append(f"{mm}: the first attempt (all cores) **deadlocked** and was killed; the row is the "
                             "retry pinned to one core (XLA:CPU batched-LAPACK deadlock, see responses.md).")
            oc = rr.get("other_cpu_cores")
            if oc is not None and oc > 0.2:
                notes.append(f"{mm}: other processes kept {oc:.2f} cores busy on average while it ran")
        L.append("")
        # distributions
        j = res.get("jaxlmm", {})
        if j.get("status") == "ok":
            peers = [mm for mm in ("lme4", "mixedlm") if res.get(mm, {}).get("sd_agreement")]
            L.append("Bootstrap standard deviations (each tool its own random draws; ratio = tool / jaxlmm, z = "
                     "log ratio / its Monte Carlo SE):")
            L.append("")
            L.append("| quantity | estimate | jaxlmm SD | " + " | ".join(f"{p} SD (ratio, z)" for p in peers) + " |")
            L.append("|---|---:|---:|" + "---:|" * len(peers))
            for k, sm in j["summaries"].items():
                cells = []
                for p in peers:
                    a = res[p]["sd_agreement"].get(k)
                    cells.append("—" if not a else f"{a['sd']:.4g} ({a['ratio']:.3f}, {a['z']:+.1f})")
                L.append(f"| {k} | {j['estimates'][k]:.5g} | {sm['sd']:.4g} | " + " | ".join(cells) + " |")
            L.append("")
        for n_ in notes:
            L.append(f"- {n_}")
        L.append("")

    L.append("## Methods")
    L.append("")
    L.append(f"- **jaxlmm**: `jaxlmm.fit(formula, df)` then `jaxlmm.bootstrap.bootstrap(m, B, seed)` "
             f"(batch size {s['batch_size'] or 'default'}): per batch one call of a compiled "
             "`jax.vmap(simulate-and-refit)` program, replicate i drawn with `fold_in(key, i)`, refitted from "
             "lme4's default start with the model's REML flag. *compile* = ahead-of-time lower + compile (JAX's "
             f"persistent cache off); *first call* = compile + run; *warm call* = median of ≥ {s['reps']} further "
             "calls (same seed; the compiled program reused).")
    L.append(f"- **lme4**: `bootMer(m, FUN, nsim)` in chunks of {s['lme4_chunk']} (seeds seed, seed + 1, ...) "
             f"until B replicates or {s['lme4_budget']:g} s; FUN reads theta, sigma, fixef, the criterion, "
             "isSingular and the convergence code. Timed: the bootMer calls (`proc.time`).")
    L.append(f"- **mixedlm**: `mixedlm.bootMer(mixedlm.lmer(formula, df), nsim, seed)` in chunks of "
             f"{s['mixedlm_chunk']} until B replicates or {s['mixedlm_budget']:g} s (its default "
             "`n_jobs=1`); only the bootMer calls are timed.")
    L.append("- **MixedModels.jl** `parametricbootstrap` is the reference peer (the design of jaxlmm's bootstrap "
             "follows it); it runs only where Julia with MixedModels.jl is installed.")
    L.append("- Every tool runs in its own fresh process, one after the other. The tools draw different "
             "random responses, so agreement is statistical: bootstrap SDs of the fixed effects and sigma.")
    if s["stall_s"]:
        L.append(f"- **Deadlock guard**: a jaxlmm process using no CPU for {s['stall_s']:g} s is killed and re-run "
                 "pinned to one core.")
    L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (B=100, tiny designs), writes to benchmarks/out/")
    p.add_argument("--B", type=int, default=None, help="replicates (default 1000; 100 with --quick)")
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--batch-size", type=int, default=None, help="jaxlmm replicates per batch (default: library's)")
    p.add_argument("--reps", type=int, default=3, help="min warm jaxlmm calls (default 3)")
    p.add_argument("--min-total", type=float, default=1.0, help="repeat warm jaxlmm calls until this many s")
    p.add_argument("--max-reps", type=int, default=10, help="max warm jaxlmm calls")
    p.add_argument("--lme4-budget", type=float, default=None, help="seconds of bootMer (default 60; 10 quick)")
    p.add_argument("--lme4-chunk", type=int, default=25, help="replicates per bootMer call (default 25)")
    p.add_argument("--mixedlm-budget", type=float, default=None, help="seconds of bootMer (default 30; 5 quick)")
    p.add_argument("--mixedlm-chunk", type=int, default=25, help="replicates per mixedlm bootMer call")
    p.add_argument("--timeout", type=float, default=900.0, help="per tool and workload, seconds")
    p.add_argument("--stall-s", type=float, default=20.0, help="kill a jaxlmm process idle this long (0 = off)")
    p.add_argument("--no-stall-retry", dest="stall_retry", action="store_false")
    p.add_argument("--jax-cores", choices=["all", "1"], default="all")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("sizes")
    g.add_argument("--slope-groups", type=int, default=None, help="default 1000 (100 quick)")
    g.add_argument("--slope-size", type=int, default=10)
    g.add_argument("--crossed-users", type=int, default=None, help="default 300 (60 quick)")
    g.add_argument("--crossed-items", type=int, default=None, help="default 50 (20 quick)")
    g.add_argument("--crossed-rows", type=int, default=None, help="default 5000 (1000 quick)")
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/bootstrap; "
                                               "benchmarks/out/bootstrap_quick with --quick)")
    p.add_argument("--render", metavar="JSON", default=None, help="only re-render JSON to the matching .md")
    a = p.parse_args(argv)
    defaults = {"B": (1000, 100), "lme4_budget": (60.0, 10.0), "mixedlm_budget": (30.0, 5.0),
                "slope_groups": (1000, 100), "crossed_users": (300, 60), "crossed_items": (50, 20),
                "crossed_rows": (5000, 1000)}
    return RS.finish_args(p, a, defaults, WORKLOADS, METHODS)


def main(argv=None) -> int:
    code, job = RS.script_start(argv, "bootstrap", worker_main, parse_args, render_md)
    if job is None:
        return code
    argv, args, prefix, tmp = job
    started = time.perf_counter()
    import run as H
    rinfo = H.r_info() if "lme4" in args.methods else {"available": False, "reason": "not selected"}
    jinfo = julia_info()
    log("MixedModels.jl: " + jinfo["reason"])
    report = RS.new_report("bootstrap.py", argv, args, rinfo, julia=jinfo)
    runs = [lambda name=name: bench_workload(make_workload(name, args), args, tmp, rinfo, jinfo)
            for name in args.only]
    return RS.run_report(report, runs, prefix, render_md, started, tmp)


if __name__ == "__main__":
    sys.exit(main())
