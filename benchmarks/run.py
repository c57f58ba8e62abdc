#!/usr/bin/env python
"""Benchmark jaxlmm against lme4, mixedlm, mixedlm-rs and statsmodels.

    .venv/bin/python benchmarks/run.py [--quick] [--skip-slow] [--only NAME[,NAME...]]

Every workload's data are generated (or loaded) once, written to a temporary
directory (pickle for the Python tools, CSV for R) and fitted by every
applicable tool, each in its own fresh process.  Results are written to
``benchmarks/results.md`` and ``benchmarks/results.json`` (``--quick`` writes
to ``benchmarks/out/`` instead so that a smoke run never overwrites real
results).  See benchmarks/README.md for the meaning of every column.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the working tree's jaxlmm (for jaxlmm.datasets); workers get the same via PYTHONPATH
sys.path.insert(1, str(HERE.parent / "src"))

import workloads as W  # noqa: E402

REPO = HERE.parent
WORKER = HERE / "_worker.py"
R_SCRIPT = HERE / "lme4_bench.R"

TOOLS = ["jaxlmm", "lme4", "mixedlm", "mixedlm-rs", "statsmodels"]
SINGLE_FACTOR_ONLY = {"mixedlm-rs", "statsmodels"}
DIST_NAMES = {
    "jaxlmm": "jaxlmm",
    "mixedlm": "mixedlm",
    "mixedlm-rs": "mixedlm-rs",
    "statsmodels": "statsmodels",
}
# what "import" means for each Python tool (mixedlm loads lazily on attribute access)
IMPORT_STMT = {
    "jaxlmm": "import jaxlmm; jaxlmm.fit",
    "mixedlm": "import mixedlm; mixedlm.lmer",
    "mixedlm-rs": "import mixedlm_rs; mixedlm_rs.mixedlm",
    "statsmodels": "import statsmodels.formula.api as smf; smf.mixedlm",
}
REL_TOL = 1e-3
ABS_NOTE = 1e-2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# subprocess helpers
# --------------------------------------------------------------------------


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    # benchmark the working tree even if an older jaxlmm is installed
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        env.pop(k, None)
    # jaxlmm points JAX's persistent cache at ~/.cache/jaxlmm/xla unless told otherwise; the
    # in-process cold/warm measurement must compile for real, so switch that off by default
    env["JAXLMM_CACHE_DIR"] = "0"
    if extra:
        env.update(extra)
    return env


def run_proc(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, float]:
    """Run cmd in its own process group; kill that group on timeout.

    Returns (returncode or None on timeout, combined output tail, wall seconds).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        rc = None
    return rc, (out or "")[-3000:], time.perf_counter() - t0


# --------------------------------------------------------------------------
# environment / machine information
# --------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def jaxlmm_source_digest() -> str | None:
    """sha256 over the working tree's jaxlmm sources (to notice edits made during a run)."""
    import hashlib

    root = REPO / "src" / "jaxlmm"
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def machine_info() -> dict:
    info = {
        "loadavg_start": os.getloadavg()[0],
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": mem_total_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {
            n: dist_version(n)
            for n in ["jax", "jaxlib", "numpy", "scipy", "pandas", "formulaic", "jaxlmm", "mixedlm", "mixedlm-rs", "statsmodels"]
        },
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "JAX_PLATFORMS") if k in os.environ},
    }
    code = (
        "import jax, json; d = jax.devices(); "
        "print(json.dumps({'backend': jax.default_backend(), "
        "'devices': [f'{x.platform}:{getattr(x, \"device_kind\", \"?\")}' for x in d]}))"
    )
    rc, out, _ = run_proc([sys.executable, "-c", code], 300, child_env())
    if rc == 0:
        try:
            info["jax"] = json.loads(out.strip().splitlines()[-1])
        except Exception:
            info["jax"] = {"error": out[-500:]}
    else:
        info["jax"] = {"error": out[-500:]}
    return info


def r_info() -> dict:
    rscript = shutil.which("Rscript")
    if not rscript:
        return {"available": False, "reason": "Rscript not found on PATH"}
    code = (
        "ok <- suppressWarnings(suppressPackageStartupMessages(require(lme4, quietly=TRUE))); "
        "cat(R.version.string, '\\n'); "
        "cat(if (ok) as.character(packageVersion('lme4')) else 'MISSING', '\\n'); "
        "cat(if (ok) as.character(packageVersion('Matrix')) else 'MISSING', '\\n'); "
        "cat(paste(extSoftVersion()['BLAS'], La_library(), sep=' | '), '\\n')"
    )
    rc, out, _ = run_proc([rscript, "--vanilla", "-e", code], 300)
    lines = [ln.strip() for ln in out.strip().splitlines()]
    if rc != 0 or len(lines) < 4:
        return {"available": False, "reason": f"Rscript failed: {out[-300:].strip()}"}
    if lines[-3] == "MISSING":
        return {"available": False, "reason": "R package lme4 not installed", "r_version": lines[-4]}
    return {
        "available": True,
        "rscript": rscript,
        "r_version": lines[-4],
        "lme4": lines[-3],
        "Matrix": lines[-2],
        "blas": lines[-1],
    }


def import_times(tool: str, n: int) -> dict:
    """Median wall time of the import statement in n fresh interpreters."""
    code = (
        "import time; t = time.perf_counter(); "
        + IMPORT_STMT[tool]
        + "; print('IMPORT_S', time.perf_counter() - t)"
    )
    times, err = [], None
    for _ in range(n):
        rc, out, _ = run_proc([sys.executable, "-c", code], 600, child_env())
        vals = [ln.split()[1] for ln in out.splitlines() if ln.startswith("IMPORT_S ")]
        if rc != 0 or not vals:
            err = out.strip().splitlines()[-1] if out.strip() else f"exit code {rc}"
            break
        times.append(float(vals[-1]))
    if err is not None:
        return {"available": False, "reason": err[:300]}
    return {"available": True, "import_s": statistics.median(times), "import_runs": times}


# --------------------------------------------------------------------------
# running tools
# --------------------------------------------------------------------------


def run_python_tool(tool, wl, pkl, args, tmp, mode="bench", extra_env=None) -> dict:
    spec = {
        "tool": tool,
        "workload": wl.name,
        "mode": mode,
        "data": str(pkl),
        "formula": wl.formula,
        "reml": wl.reml,
        "single_factor": vars(wl.single_factor) if wl.single_factor else None,
        "reps": args.reps,
        "min_total_s": args.min_total,
        "max_reps": args.max_reps,
        "slow_s": args.jaxlmm_slow_s if tool == "jaxlmm" else args.slow_s,
    }
    tag = f"{wl.name}.{tool}.{mode}.{time.monotonic_ns()}"
    spec_path, out_path = tmp / f"{tag}.spec.json", tmp / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    rc, out, wall = run_proc(
        [sys.executable, str(WORKER), str(spec_path), str(out_path)], args.timeout, child_env(extra_env)
    )
    if rc is None:
        return {"status": "timeout", "error": f"killed after {args.timeout:g} s", "wall_s": wall}
    if not out_path.exists():
        return {"status": "error", "error": f"worker exit code {rc}: {out[-800:]}", "wall_s": wall}
    res = json.loads(out_path.read_text())
    res["wall_s"] = wall
    return res


def run_lme4(wl, csv, args, tmp, rinfo) -> dict:
    out_path = tmp / f"{wl.name}.lme4.{time.monotonic_ns()}.out.json"
    cmd = [
        rinfo["rscript"],
        "--vanilla",
        str(R_SCRIPT),
        str(csv),
        wl.formula,
        "TRUE" if wl.reml else "FALSE",
        ",".join(wl.factor_cols),
        str(args.reps),
        str(args.min_total),
        str(args.max_reps),
        str(args.slow_s),
        str(out_path),
    ]
    rc, out, wall = run_proc(cmd, args.timeout)
    if rc is None:
        return {"status": "timeout", "error": f"killed after {args.timeout:g} s", "wall_s": wall}
    if rc != 0 or not out_path.exists():
        return {"status": "error", "error": f"Rscript exit code {rc}: {out[-800:]}", "wall_s": wall}
    res = json.loads(out_path.read_text())
    res["wall_s"] = wall
    return res


def tool_status_reason(tool, wl, args, avail) -> str | None:
    """None if the tool should run on this workload, else why not."""
    if tool not in args.tools:
        return "not selected (--tools)"
    if not avail[tool]["available"]:
        return "unavailable: " + avail[tool]["reason"]
    if tool in SINGLE_FACTOR_ONLY and wl.single_factor is None:
        return "n/a: single grouping factor only"
    if args.skip_slow and tool in wl.slow_tools:
        return "skipped (--skip-slow)"
    return None


def fmt_cmd(argv) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def bench_workload(wl, args, tmp, avail, rinfo, do_cache=True) -> dict:
    log(f"=== {wl.name}: preparing data")
    t0 = time.perf_counter()
    df, source = wl.make()
    wdir = tmp / wl.name
    wdir.mkdir(parents=True, exist_ok=True)
    pkl, csv = wdir / "data.pkl", wdir / "data.csv"
    df.to_pickle(pkl)
    df.to_csv(csv, index=False)
    levels = {":".join(g): int(df[list(g)].drop_duplicates().shape[0]) for g in wl.groupings}
    log(f"    {len(df)} rows, levels {levels}, data written in {time.perf_counter() - t0:.1f} s -> {wdir}")
    entry = {
        "name": wl.name,
        "title": wl.title,
        "formula": wl.formula,
        "method": wl.method,
        "single_factor": vars(wl.single_factor) if wl.single_factor else None,
        "n_rows": int(len(df)),
        "levels": levels,
        "source": source,
        "results": {},
        "cache": None,
    }
    del df

    for tool in TOOLS:
        reason = tool_status_reason(tool, wl, args, avail)
        if reason is not None:
            entry["results"][tool] = {"status": "skipped", "reason": reason}
            continue
        load1 = os.getloadavg()[0]
        log(f"    {tool} ... (load average {load1:.2f})")
        if tool == "lme4":
            res = run_lme4(wl, csv, args, wdir, rinfo)
        else:
            res = run_python_tool(tool, wl, pkl, args, wdir)
        res["load1_before"] = load1
        res["load1_after"] = os.getloadavg()[0]
        entry["results"][tool] = res
        if res.get("status") == "ok":
            log(
                f"    {tool}: objective {res['objective']:.6f}  fit {res['fit_s']:.4g} s "
                f"(n={res.get('n_timed')})  cold {res['cold_s']:.4g} s"
            )
        else:
            log(f"    {tool}: {res.get('status')}: {str(res.get('error'))[:300]}")

        if tool == "jaxlmm" and res.get("status") == "ok" and do_cache:
            cache_dir = Path(tempfile.mkdtemp(prefix="jaxcache-", dir=wdir))
            env = {
                "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_ENABLE_COMPILATION_CACHE": "true",
            }
            runs = []
            for k in (1, 2):
                r = run_python_tool(tool, wl, pkl, args, wdir, mode="cold-cache", extra_env=env)
                r["cache_files_after"] = sum(1 for p in cache_dir.rglob("*") if p.is_file())
                runs.append(r)
                log(f"    jaxlmm cache process {k}: {r.get('status')} cold {r.get('cold_s', float('nan')):.4g} s, "
                    f"{r['cache_files_after']} cache files")
            entry["cache"] = {"dir": str(cache_dir), "runs": runs}
    annotate(entry)
    return entry


# --------------------------------------------------------------------------
# analysis + reporting
# --------------------------------------------------------------------------


def annotate(entry: dict) -> None:
    res = entry["results"]
    ref = next((t for t in ("lme4", "jaxlmm", "mixedlm") if res.get(t, {}).get("status") == "ok"), None)
    entry["reference"] = ref
    jx = res.get("jaxlmm", {})
    jx_fit = jx.get("fit_s") if jx.get("status") == "ok" else None
    for tool, r in res.items():
        if r.get("status") != "ok":
            continue
        if ref is not None and r.get("objective") is not None:
            ro = res[ref]["objective"]
            r["obj_diff"] = r["objective"] - ro
            r["obj_rel_diff"] = abs(r["objective"] - ro) / max(abs(ro), 1e-300)
            r["obj_flag"] = r["obj_rel_diff"] > REL_TOL
        if jx_fit:
            r["ratio_vs_jaxlmm"] = r["fit_s"] / jx_fit
        if tool == "jaxlmm":
            r["compile_s"] = r["cold_s"] - r["fit_s"]


def ft(t) -> str:
    if t is None or (isinstance(t, float) and not math.isfinite(t)):
        return "—"
    if t < 0:
        return "−" + ft(-t)
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 0.1:
        return f"{t:.3f} s"
    return f"{t * 1000:.3g} ms"


def fratio(x) -> str:
    if x is None:
        return "—"
    return f"**{x:.3g}×**" if x < 100 else f"**{x:.0f}×**"


def short_status(r: dict) -> str:
    st = r.get("status")
    if st == "skipped":
        return r.get("reason", "skipped")
    if st == "timeout":
        return "timeout"
    return f"{st}: {str(r.get('error', ''))[:120]}".replace("|", "/").replace("\n", " ")


def report_ref(report: dict, name: str) -> str:
    for w in report["workloads"]:
        if w["name"] == name:
            return str(w.get("reference"))
    return "?"


def render_md(report: dict) -> str:
    m = report["machine"]
    ri = report["r"]
    L = []
    L.append("# jaxlmm benchmark results")
    L.append("")
    L.append(f"Generated {report['started']} by `{report['command']}` "
             f"({'QUICK smoke-test sizes' if report['quick'] else 'full sizes'}; "
             f"total wall time {report.get('total_wall_s', 0):.0f} s).")
    L.append("")
    L.append("Timings on a small shared CPU box are for comparing tools *with each other on the same "
             "machine in the same run*: read the ratios, not the absolute seconds.")
    L.append("")
    d0, d1 = report.get("jaxlmm_source_digest_start"), report.get("jaxlmm_source_digest_end")
    if d0 and d1 and d0 != d1:
        L.append(f"**Warning: jaxlmm's source files changed during this run** (digest {d0} → {d1}); "
                 "jaxlmm rows may come from different versions of the code.")
        L.append("")
    elif d0:
        L.append(f"jaxlmm source digest (sha256 of src/jaxlmm/**/*.py): `{d0}`.")
        L.append("")
    L.append("## Machine")
    L.append("")
    mem = f", {m['mem_total_gib']:.0f} GiB RAM" if m.get("mem_total_gib") else ""
    L.append(f"- CPU: {m['cpu_model']}, {m['cpu_count']} logical cores "
             f"({m['cpu_affinity']} usable by this process){mem}")
    L.append(f"- OS: {m['platform']}; Python {m['python']}")
    jx = m.get("jax", {})
    if "backend" in jx:
        L.append(f"- JAX {m['packages'].get('jax')} (jaxlib {m['packages'].get('jaxlib')}): "
                 f"backend `{jx['backend']}`, devices {', '.join(jx['devices'])}")
    else:
        L.append(f"- JAX: not importable ({jx.get('error', '')[:200]})")
    if ri.get("available"):
        L.append(f"- {ri['r_version']}; lme4 {ri['lme4']}, Matrix {ri['Matrix']}; BLAS/LAPACK: {ri['blas']}")
    else:
        L.append(f"- R/lme4: not available ({ri.get('reason')})")
    if m.get("loadavg_start") is not None:
        L.append(f"- 1-minute load average: {m['loadavg_start']:.2f} at start, "
                 f"{m.get('loadavg_end', float('nan')):.2f} at end (other work on the machine inflates timings; "
                 "the per-row `load avg` note flags runs where it exceeded half the usable cores)")
    if m.get("thread_env"):
        L.append(f"- thread environment: {m['thread_env']}")
    L.append("")
    L.append("| tool | version | import time (fresh process, median) |")
    L.append("|---|---|---|")
    for tool in TOOLS:
        a = report["availability"].get(tool, {})
        if tool == "lme4":
            ver = ri.get("lme4", "—") if ri.get("available") else "—"
            imps = [w["results"]["lme4"].get("import_s") for w in report["workloads"]
                    if w["results"].get("lme4", {}).get("status") == "ok"]
            imp = ft(statistics.median(imps)) + " (`library(lme4)` inside Rscript)" if imps else "—"
        else:
            ver = m["packages"].get(DIST_NAMES[tool]) or "—"
            imp = ft(a.get("import_s")) if a.get("available") else "unavailable: " + a.get("reason", "")[:100]
            if a.get("available"):
                imp += f" (`{IMPORT_STMT[tool]}`)"
        L.append(f"| {tool} | {ver} | {imp} |")
    L.append("")

    peers = [t for t in TOOLS if t != "jaxlmm"]
    L.append("## Speed ratios: peer warm fit time / jaxlmm warm fit time")
    L.append("")
    L.append("Values > 1 mean jaxlmm is faster; < 1 mean the peer is faster. "
             "jaxlmm's time is the median of warm (already compiled) calls; see the compile column below "
             "and the persistent-cache section for the one-off compile cost.")
    L.append("")
    L.append("| workload | n rows | jaxlmm warm fit | " + " | ".join(peers) + " |")
    L.append("|---|---:|---:|" + "---:|" * len(peers))
    for w in report["workloads"]:
        jr = w["results"].get("jaxlmm", {})
        cells = []
        for t in peers:
            r = w["results"].get(t, {})
            if r.get("status") == "ok":
                cells.append(fratio(r.get("ratio_vs_jaxlmm")) if r.get("ratio_vs_jaxlmm") else f"({ft(r['fit_s'])})")
            elif r.get("status") == "skipped":
                cells.append("n/a" if "single grouping" in r.get("reason", "") else "skipped")
            else:
                cells.append(r.get("status", "—"))
        jt = ft(jr.get("fit_s")) if jr.get("status") == "ok" else jr.get("status", "—")
        L.append(f"| {w['name']} | {w['n_rows']:,} | {jt} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("(When jaxlmm did not run, the peer's absolute fit time is shown in parentheses.)")
    L.append("")

    L.append("## Details")
    L.append("")
    L.append("| workload | n rows | tool | objective | Δ objective vs ref | fit time (warm median) | "
             "compile / cold | ratio vs jaxlmm warm | notes |")
    L.append("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for w in report["workloads"]:
        ref = w.get("reference")
        kind = "REML crit." if w["method"] == "REML" else "deviance"
        for t in TOOLS:
            r = w["results"].get(t, {})
            if r.get("status") != "ok":
                if r.get("status") == "skipped" and r.get("reason", "").startswith(("n/a", "not selected")):
                    continue
                L.append(f"| {w['name']} | {w['n_rows']:,} | {t} | — | — | — | — | — | {short_status(r)} |")
                continue
            obj = f"{r['objective']:.4f}"
            if t == ref:
                d = f"ref ({kind})"
            else:
                d = f"{r['obj_diff']:+.2e}" + (" ⚠ **>1e-3 rel**" if r.get("obj_flag") else "")
            if t == "jaxlmm":
                cc = f"compile {ft(r['compile_s'])} (cold {ft(r['cold_s'])})"
            else:
                cc = f"cold {ft(r['cold_s'])}"
            notes = [f"n={r.get('n_timed')}"]
            ev = r.get("jax_events_cold") or {}
            if t == "jaxlmm" and ev:
                notes.append(
                    "cold: trace {} + lower {} + XLA compile {}".format(
                        ft(ev.get("/jax/core/compile/jaxpr_trace_duration")),
                        ft(ev.get("/jax/core/compile/jaxpr_to_mlir_module_duration")),
                        ft(ev.get("/jax/core/compile/backend_compile_duration")),
                    ))
            busy = max(r.get("load1_before", 0.0), r.get("load1_after", 0.0))
            if busy > 0.5 * (report["machine"].get("cpu_affinity") or 1):
                notes.append(f"load avg {busy:.1f}")
            if not r.get("converged", True):
                notes.append("not converged")
            if r.get("warnings"):
                notes.append(f"{len(r['warnings'])} warning(s)")
            ratio = "1 (baseline)" if t == "jaxlmm" else fratio(r.get("ratio_vs_jaxlmm"))
            L.append(f"| {w['name']} | {w['n_rows']:,} | {t} | {obj} | {d} | {ft(r['fit_s'])} | {cc} | "
                     f"{ratio} | {'; '.join(notes)} |")
    L.append("")
    L.append(f"Objective: REML criterion for REML workloads, deviance (−2 log-likelihood) for ML ones, as "
             f"lme4's `REMLcrit()` / `deviance()`; statsmodels and mixedlm-rs report −2·llf. Δ is relative to "
             f"the reference tool (lme4 when available). ⚠ marks a relative difference > {REL_TOL:g}.")
    L.append("")

    flagged = [(w["name"], t, r) for w in report["workloads"] for t, r in w["results"].items()
               if r.get("status") == "ok" and r.get("obj_flag")]
    L.append("### Objective agreement")
    L.append("")
    if flagged:
        for name, t, r in flagged:
            L.append(f"- ⚠ {name}: {t} differs from the reference by {r['obj_diff']:+.4g} "
                     f"(relative {r['obj_rel_diff']:.2e})")
    else:
        L.append(f"All tools that ran agree with the reference objective to within {REL_TOL:g} relative.")
    near = [(w["name"], t, r) for w in report["workloads"] for t, r in w["results"].items()
            if r.get("status") == "ok" and not r.get("obj_flag") and abs(r.get("obj_diff", 0.0)) > ABS_NOTE]
    if near:
        L.append("")
        L.append(f"Not flagged by the relative rule but larger than {ABS_NOTE:g} in absolute value "
                 "(for a log-likelihood criterion this means a different optimum; lower is better):")
        for name, t, r in near:
            L.append(f"- {name}: {t} {r['obj_diff']:+.4g} vs {report_ref(report, name)}")
    noconv = [(w["name"], t, r) for w in report["workloads"] for t, r in w["results"].items()
              if r.get("status") == "ok" and r.get("converged") is False]
    if noconv:
        L.append("")
        L.append("Convergence problems reported by the tools themselves:")
        for name, t, r in noconv:
            msg = (r.get("warnings") or [""])[0]
            L.append(f"- {name}: {t} reports non-convergence" + (f" (`{msg[:200]}`)" if msg else ""))
    L.append("")
    worst = {}
    for w in report["workloads"]:
        for t, r in w["results"].items():
            if r.get("status") == "ok" and t != w.get("reference") and "obj_diff" in r:
                worst[w["name"]] = max(worst.get(w["name"], 0.0), abs(r["obj_diff"]))
    if worst:
        L.append("Largest absolute objective difference per workload: "
                 + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()) + ".")
    L.append("")

    cache_rows = [w for w in report["workloads"] if w.get("cache")]
    if cache_rows:
        L.append("## jaxlmm persistent compilation cache")
        L.append("")
        L.append("Two fresh processes, each doing `import jaxlmm` and one cold `jaxlmm.fit(...)`, sharing "
                 "`JAX_COMPILATION_CACHE_DIR=<new temp dir>` with "
                 "`jax_persistent_cache_min_compile_time_secs=0`. Process 2 should load the compiled "
                 "executables from disk instead of compiling.")
        L.append("")
        L.append("| workload | process 1 cold fit | process 2 cold fit | jaxlmm warm fit (in-process) | "
                 "time saved by process 2 | XLA compile time, proc 1 → proc 2 | "
                 "persistent-cache hits / misses, proc 1 → proc 2 |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for w in cache_rows:
            runs = w["cache"]["runs"]
            c1 = runs[0].get("cold_s") if runs[0].get("status") == "ok" else None
            c2 = runs[1].get("cold_s") if len(runs) > 1 and runs[1].get("status") == "ok" else None
            warm = w["results"]["jaxlmm"].get("fit_s")
            saved = f"{ft(c1 - c2)} ({(c1 - c2) / c1:.0%} of process 1)" if c1 and c2 else "—"
            ev = [r.get("jax_events_cold") or {} for r in runs]
            xla = " → ".join(ft(e.get("/jax/core/compile/backend_compile_duration")) for e in ev)
            hm = " → ".join(
                f"{e.get('/jax/compilation_cache/cache_hits [count]', 0)} / "
                f"{e.get('/jax/compilation_cache/cache_misses [count]', 0)}" for e in ev)
            L.append(f"| {w['name']} | {ft(c1)} | {ft(c2)} | {ft(warm)} | {saved} | {xla} | {hm} |")
        L.append("")
        L.append("XLA compile time and cache hits come from JAX's internal monitoring events, so they are "
                 "robust to machine load; wall-clock cold times are not. Tracing and lowering to MLIR are "
                 "not covered by the persistent cache and are paid by every process.")
        L.append("")

    mem_rows = [(w, r) for w in report["workloads"] for t, r in w["results"].items()
                if r.get("status") == "ok" and r.get("rss_peak_mb") is not None]
    if mem_rows:
        L.extend(memory_section(mem_rows))

    L.append("## Workloads")
    L.append("")
    for w in report["workloads"]:
        lv = ", ".join(f"{k}: {v:,}" for k, v in w["levels"].items())
        L.append(f"- **{w['name']}** — {w['title']}. `{w['formula']}` ({w['method']}); "
                 f"{w['n_rows']:,} rows; levels {lv}. Data: {w['source']}.")
        if w.get("single_factor"):
            sf = w["single_factor"]
            L.append(f"  statsmodels / mixedlm-rs: `mixedlm({sf['fixed']!r}, data, groups={sf['group']!r}, "
                     f"re_formula={sf['re_formula']!r}).fit(reml={w['method'] == 'REML'})`")
    L.append("")
    L.append("Timing protocol: every (tool, workload) pair runs in a fresh process on identical data "
             "(pickle for Python, CSV for R). The first call is *cold*; then warm calls are repeated "
             f"(at least {report['settings']['reps']}, until {report['settings']['min_total']:g} s total, "
             f"at most {report['settings']['max_reps']}) and the median is reported; a peer whose cold call "
             f"exceeds {report['settings']['slow_s']:g} s is timed once (n=1). Python timings cover "
             "formula + data frame in, fitted model out; lme4 timings are `system.time(lmer(...))` inside R. "
             "jaxlmm compile = cold − warm median (persistent cache disabled in that process).")
    L.append("")
    return "\n".join(L)


def memory_section(rows) -> list[str]:
    """The memory table: per tool, resident memory added by the first fit (peak less the
    process before it); for jaxlmm also the compiled programs' buffers (XLA's accounting)
    against the sufficient statistics plus the design's input arrays."""
    mb = 2.0 ** 20
    L = ["## Memory", "",
         "Resident memory is sampled every 5 ms while a fit runs; *added* = peak during the first "
         "(cold) fit less the process before it (interpreter, libraries, the data frame), so it "
         "includes compilation for jaxlmm. For jaxlmm, *stats + inputs* is the size of the "
         "sufficient statistics plus the design's input arrays (y, X, Z, level codes, index "
         "lists), and the two program columns are XLA's own buffer accounting "
         "(`memory_analysis()`: arguments + outputs + temporaries) of the statistics pass and of "
         "`fit_stats`, which is what a device must hold; the ratio is the larger program over "
         "stats + inputs (target: at most 2).", "",
         "| workload | tool | process before | added by the cold fit | stats + inputs | "
         "pass program | fit program | ratio |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
    for w, r in rows:
        added = r["rss_peak_cold_mb"] - r["rss_before_mb"]
        m = r.get("memory")
        if m:
            base = m["stats_bytes"] + m["inputs_bytes"]
            ratio = max(m["pass_program_bytes"], m["fit_program_bytes"]) / base
            cols = (f"{base / mb:,.0f} MB ({m['stats_bytes'] / mb:,.0f} + "
                    f"{m['inputs_bytes'] / mb:,.0f})", f"{m['pass_program_bytes'] / mb:,.0f} MB",
                    f"{m['fit_program_bytes'] / mb:,.0f} MB", f"{ratio:.2f}")
        else:
            cols = ("—", "—", "—", "—")
        L.append(f"| {w['name']} | {r['tool']} | {r['rss_before_mb']:,.0f} MB | {added:,.0f} MB | "
                 + " | ".join(cols) + " |")
    L.append("")
    return L


def write_outputs(report: dict, out_prefix: Path, render=None) -> None:
    """``out_prefix``.json (everything) and .md (``render(report)``, default render_md)."""
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out_prefix) + ".json").write_text(json.dumps(report, indent=1, default=str))
    Path(str(out_prefix) + ".md").write_text((render or render_md)(report))


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, smoke test (< 1 minute)")
    p.add_argument("--skip-slow", action="store_true",
                   help="skip lme4 and statsmodels on the large (100k-group) slopes workload")
    p.add_argument("--only", action="append", default=[],
                   help="comma-separated workload names or glob patterns (repeatable), e.g. "
                        "'sleepstudy,slopes_10k' or 'slopes*'")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--reps", type=int, default=3, help="minimum number of warm fits (default 3)")
    p.add_argument("--min-total", type=float, default=None,
                   help="keep repeating warm fits until this many seconds were spent "
                        "(default 1, 0.2 with --quick)")
    p.add_argument("--max-reps", type=int, default=None,
                   help="maximum number of warm fits (default 20, 5 with --quick)")
    p.add_argument("--slow-s", type=float, default=60.0,
                   help="a peer's cold fit longer than this is not repeated (default 60)")
    p.add_argument("--jaxlmm-slow-s", type=float, default=1800.0,
                   help="same for jaxlmm (default 1800: jaxlmm always gets warm fits so that "
                        "compile = cold - warm can be reported)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per tool and workload, seconds")
    p.add_argument("--cache-check", choices=["all", "first", "none"], default=None,
                   help="persistent-compilation-cache runs for all workloads, only the first one, or none "
                        "(default all; 'first' with --quick)")
    p.add_argument("--import-runs", type=int, default=None,
                   help="fresh processes per import-time measurement (default 3, 1 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="output prefix (default benchmarks/results, or benchmarks/out/results_quick with --quick)")
    p.add_argument("--data-dir", default=None, help="write data here (kept) instead of a temp dir")
    p.add_argument("--keep-data", action="store_true", help="do not delete the temp data dir")
    p.add_argument("--render", metavar="RESULTS_JSON", default=None,
                   help="only re-render RESULTS_JSON to the matching .md (no benchmarking)")
    g = p.add_argument_group("sizes (defaults: the full benchmark; --quick uses tiny ones)")
    g.add_argument("--slope-groups", default=None, help="comma-separated group counts, e.g. 10000,100000")
    g.add_argument("--slope-mean-size", type=float, default=None)
    g.add_argument("--vector-groups", default=None,
                   help="comma-separated group counts of y ~ x1 + x2 + (x1 + x2 | g) (default: none)")
    g.add_argument("--nested-schools", type=int, default=None)
    g.add_argument("--nested-classes", type=int, default=None)
    g.add_argument("--nested-rows", type=int, default=None)
    g.add_argument("--crossed-users", type=int, default=None)
    g.add_argument("--crossed-items", type=int, default=None)
    g.add_argument("--crossed-rows", type=int, default=None)
    g.add_argument("--insteval-rows", type=int, default=None, help="random subsample of InstEval rows")
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = set(args.tools) - set(TOOLS)
    if bad:
        p.error(f"unknown tools {sorted(bad)}")
    args.only = [x.strip() for o in args.only for x in o.split(",") if x.strip()]
    defaults = {"cache_check": ("all", "first"), "import_runs": (3, 1), "min_total": (1.0, 0.2), "max_reps": (20, 5)}
    for k, (full, quick) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick if args.quick else full)
    if args.max_reps < args.reps:
        args.max_reps = args.reps
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        src = Path(args.render)
        report = json.loads(src.read_text())
        for entry in report["workloads"]:
            annotate(entry)
        src.with_suffix(".md").write_text(render_md(report))
        log(f"rendered {src.with_suffix('.md')}")
        return 0
    started = time.perf_counter()
    base = W.QUICK if args.quick else W.Sizes()
    sizes = W.replace_sizes(
        base,
        slope_groups=tuple(int(x) for x in args.slope_groups.split(",")) if args.slope_groups else None,
        slope_mean_size=args.slope_mean_size,
        vector_groups=tuple(int(x) for x in args.vector_groups.split(",")) if args.vector_groups else None,
        nested_schools=args.nested_schools,
        nested_classes=args.nested_classes,
        nested_rows=args.nested_rows,
        crossed_users=args.crossed_users,
        crossed_items=args.crossed_items,
        crossed_rows=args.crossed_rows,
        insteval_rows=args.insteval_rows,
    )
    wls = W.suite(sizes, seed=args.seed)
    if args.only:
        wls = [w for w in wls if any(fnmatch.fnmatch(w.name, pat) for pat in args.only)]
        if not wls:
            print(f"no workload matches {args.only}; available: "
                  f"{[w.name for w in W.suite(sizes, seed=args.seed)]}", file=sys.stderr)
            return 2
    out_prefix = Path(args.out) if args.out else (HERE / "out" / "results_quick" if args.quick else HERE / "results")

    if args.data_dir:
        tmp = Path(args.data_dir)
        tmp.mkdir(parents=True, exist_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="jaxlmm-bench-"))

    log(f"workloads: {[w.name for w in wls]}; data dir {tmp}")
    log("collecting machine info ...")
    machine = machine_info()
    rinfo = r_info() if "lme4" in args.tools else {"available": False, "reason": "not selected"}
    avail: dict = {"lme4": rinfo}
    for tool in TOOLS:
        if tool == "lme4":
            continue
        if tool not in args.tools:
            avail[tool] = {"available": False, "reason": "not selected"}
            continue
        avail[tool] = import_times(tool, args.import_runs)
        log(f"{tool}: " + (f"import {avail[tool]['import_s']:.3f} s" if avail[tool]["available"]
                           else avail[tool]["reason"]))
    log("lme4: " + (f"{rinfo['r_version']}, lme4 {rinfo['lme4']}" if rinfo.get("available") else rinfo["reason"]))

    report = {
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": fmt_cmd([".venv/bin/python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "settings": {
            "reps": args.reps, "min_total": args.min_total, "max_reps": args.max_reps,
            "slow_s": args.slow_s, "jaxlmm_slow_s": args.jaxlmm_slow_s, "timeout": args.timeout, "skip_slow": args.skip_slow,
            "cache_check": args.cache_check, "import_runs": args.import_runs,
            "seed": args.seed, "sizes": vars(sizes), "tools": args.tools,
        },
        "machine": machine,
        "jaxlmm_source_digest_start": jaxlmm_source_digest(),
        "r": rinfo,
        "availability": avail,
        "workloads": [],
    }
    try:
        for k, wl in enumerate(wls):
            do_cache = args.cache_check == "all" or (args.cache_check == "first" and k == 0)
            report["workloads"].append(bench_workload(wl, args, tmp, avail, rinfo, do_cache))
            report["total_wall_s"] = time.perf_counter() - started
            write_outputs(report, out_prefix)
    finally:
        report["total_wall_s"] = time.perf_counter() - started
        report["machine"]["loadavg_end"] = os.getloadavg()[0]
        report["jaxlmm_source_digest_end"] = jaxlmm_source_digest()
        write_outputs(report, out_prefix)
        if not (args.data_dir or args.keep_data):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"data kept in {tmp}")
    log(f"wrote {out_prefix}.md and {out_prefix}.json ({report['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
