"""Fit one workload with one Python tool in a fresh process and time it.

Invoked by ``run.py`` as ``python benchmarks/_worker.py SPEC.json OUT.json``.
Running every (tool, workload) pair in its own process keeps thread pools,
memory and JIT caches of different tools from interfering with each other and
lets ``run.py`` enforce a wall-clock timeout.

Timing protocol (same for every tool):
  * the first call is the *cold* fit (for jaxlmm it includes JIT compilation);
  * unless it took longer than ``slow_s`` seconds, further *warm* calls follow
    until at least ``reps`` calls (and ``min_total_s`` seconds, at most
    ``max_reps`` calls) were made; the reported fit time is their median;
  * the timed region is "formula + data frame in, fitted model with objective,
    fixed effects and variance parameters out", i.e. model construction
    (formula parsing, design matrices) is included for every tool.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings


def _jsonable(x):
    try:
        import numpy as np
    except Exception:  # pragma: no cover
        np = None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if np is not None and isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if np is not None and isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (int, str, bool)) or x is None:
        return x
    try:
        return float(x)
    except Exception:
        return str(x)


# --------------------------------------------------------------------------
# tool adapters: setup(spec) -> (fit() -> model, extract(model) -> dict, info)
# --------------------------------------------------------------------------


JAX_EVENTS: dict = {}


def _install_jax_monitor() -> None:
    """Accumulate JAX's compile / persistent-cache monitoring events (private API; best effort)."""
    try:
        from jax._src import monitoring
    except Exception:
        return

    def on_duration(name, secs, **kw):
        if "compile" in name or "cache" in name or "trace" in name:
            JAX_EVENTS[name] = JAX_EVENTS.get(name, 0.0) + float(secs)

    def on_event(name, **kw):
        if "cache" in name or "compile" in name:
            key = name + " [count]"
            JAX_EVENTS[key] = JAX_EVENTS.get(key, 0) + 1

    try:
        monitoring.register_event_duration_secs_listener(on_duration)
        monitoring.register_event_listener(on_event)
    except Exception:
        pass


def _adapter_jaxlmm(spec, df):
    import jax
    import numpy as np

    if spec.get("mode") == "cold-cache":
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    else:
        # the in-process cold/warm measurement must really compile
        jax.config.update("jax_enable_compilation_cache", False)

    import jaxlmm  # noqa: E402

    _install_jax_monitor()

    t0 = time.perf_counter()
    jax.numpy.zeros(()).block_until_ready()  # backend initialisation, not compile of the model
    backend_init_s = time.perf_counter() - t0

    formula, reml = spec["formula"], spec["reml"]

    def fit():
        m = jaxlmm.fit(formula, df, reml=reml)
        float(m.objective)
        np.asarray(m.fixef)
        return m

    def extract(m):
        opt = getattr(m, "optinfo", None)
        try:
            opt = dict(opt) if opt is not None else None
        except Exception:
            opt = str(opt)
        fixef = m.fixef
        return {
            "objective": float(m.objective),
            "converged": bool(m.converged),
            "theta": np.asarray(m.theta, dtype=float).ravel().tolist(),
            "fixef": {str(k): float(v) for k, v in fixef.items()} if hasattr(fixef, "items") else np.asarray(fixef).tolist(),
            "sigma": float(m.sigma),
            "optinfo": _jsonable(opt),
        }

    def memory(m):
        """What the fit needs in memory, from the compiled programs' own buffer accounting
        (XLA memory_analysis: arguments + outputs + temporaries, the device view) next to
        the statistics and the design's input arrays (memory._nbytes)."""
        from jaxlmm.memory import _nbytes, program_bytes

        d = m.design
        st = m.stats
        inputs = _nbytes((d.y, d.X, d.Z, d.codes, d.weights, d.offset, d.pattern))

        pass_ = program_bytes(jax.jit(lambda d: jaxlmm.suffstats(d)).lower(d).compile())
        fit_ = program_bytes(jax.jit(lambda s: jaxlmm.fit_stats(s, reml=reml)).lower(st).compile())
        return {"stats_bytes": _nbytes(st), "inputs_bytes": inputs,
                "pass_program_bytes": pass_, "fit_program_bytes": fit_}

    dev = jax.devices()[0]
    info = {
        "version": getattr(jaxlmm, "__version__", "?"),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '?')}",
        "n_devices": jax.device_count(),
        "backend_init_s": backend_init_s,
        "compilation_cache": {
            "enabled": bool(jax.config.jax_enable_compilation_cache),
            "dir": jax.config.jax_compilation_cache_dir,
        },
    }
    info["memory"] = memory
    return fit, extract, info


def _adapter_mixedlm(spec, df):
    import mixedlm
    import numpy as np

    lmer = mixedlm.lmer
    formula, reml = spec["formula"], spec["reml"]

    def fit():
        return lmer(formula, df, REML=reml)

    def extract(r):
        # REMLcrit() on an ML fit returns the deviance and `deviance` on a
        # REML fit returns the REML criterion (lme4 semantics); be explicit.
        obj = float(r.REMLcrit()) if reml else float(r.deviance)
        fixef = r.fixef()
        return {
            "objective": obj,
            "converged": bool(r.converged),
            "theta": np.asarray(r.theta, dtype=float).ravel().tolist(),
            "fixef": {str(k): float(v) for k, v in fixef.items()},
            "sigma": float(r.sigma() if callable(r.sigma) else r.sigma),
            "optinfo": {"iterations": _jsonable(r.n_iter), "evaluations": _jsonable(r.function_evals)},
        }

    return fit, extract, {"version": mixedlm.__version__}


def _statsmodels_like(module_fit, spec, df):
    import numpy as np

    sf = spec["single_factor"]
    reml = spec["reml"]
    re_formula = sf["re_formula"]

    def fit():
        model = module_fit(sf["fixed"], df, groups=sf["group"], re_formula=re_formula)
        return model.fit(reml=reml)

    def extract(r):
        fe = r.fe_params
        names = list(getattr(r.model, "exog_names", []))[: len(fe)]
        fe_vals = np.asarray(fe, dtype=float).ravel().tolist()
        fixef = dict(zip(names, fe_vals)) if len(names) == len(fe_vals) else fe_vals
        return {
            # statsmodels' REML llf is the restricted log-likelihood; -2 llf is
            # lme4's REMLcrit for REML fits and the deviance for ML fits.
            "objective": -2.0 * float(r.llf),
            "converged": bool(getattr(r, "converged", True)),
            "fixef": fixef,
            "sigma": float(np.sqrt(r.scale)),
            "cov_re": np.asarray(r.cov_re, dtype=float).tolist(),
        }

    return fit, extract


def _adapter_statsmodels(spec, df):
    import statsmodels
    import statsmodels.formula.api as smf

    fit, extract = _statsmodels_like(smf.mixedlm, spec, df)
    # mixedlm_rs.install() can redirect statsmodels' names to mixedlm-rs; make sure it did not
    impl = f"{smf.mixedlm.__module__}.{getattr(smf.mixedlm, '__qualname__', '?')}"
    if not impl.startswith("statsmodels."):
        raise RuntimeError(f"statsmodels.formula.api.mixedlm is {impl}, not statsmodels' own")
    return fit, extract, {"version": statsmodels.__version__, "impl": impl}


def _adapter_mixedlm_rs(spec, df):
    import mixedlm_rs

    fit, extract = _statsmodels_like(mixedlm_rs.mixedlm, spec, df)
    return fit, extract, {"version": mixedlm_rs.__version__}


ADAPTERS = {
    "jaxlmm": _adapter_jaxlmm,
    "mixedlm": _adapter_mixedlm,
    "mixedlm-rs": _adapter_mixedlm_rs,
    "statsmodels": _adapter_statsmodels,
}


def _rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


class _RssPeak:
    """The largest resident set size while the block runs, sampled every 5 ms."""

    def __enter__(self):
        import threading

        self.mb = _rss_mb()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.mb = max(self.mb, _rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, _rss_mb())
        return False


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    result: dict = {"tool": spec["tool"], "workload": spec["workload"], "mode": spec.get("mode", "bench")}
    captured: list[str] = []
    try:
        import pandas as pd

        df = pd.read_pickle(spec["data"])
        t0 = time.perf_counter()
        fit, extract, info = ADAPTERS[spec["tool"]](spec, df)
        result["setup_s"] = time.perf_counter() - t0
        memory = info.pop("memory", None)
        result.update(info)
        result["rss_before_mb"] = _rss_mb()
        peaks: list[float] = []

        def timed():
            with warnings.catch_warnings(record=True) as w, _RssPeak() as peak:
                warnings.simplefilter("always")
                t = time.perf_counter()
                m = fit()
                dt = time.perf_counter() - t
            peaks.append(peak.mb)
            for item in w:
                msg = f"{item.category.__name__}: {str(item.message)[:200]}"
                if msg not in captured:
                    captured.append(msg)
            return m, dt

        model, cold = timed()
        result["cold_s"] = cold
        if spec["tool"] == "jaxlmm":  # the library may (re)configure the cache on first use
            import jax

            result["jax_events_cold"] = dict(JAX_EVENTS)

            result["compilation_cache_after_fit"] = {
                "enabled": bool(jax.config.jax_enable_compilation_cache),
                "dir": jax.config.jax_compilation_cache_dir,
            }
        result.update(extract(model))
        warm: list[float] = []
        if spec.get("mode") != "cold-cache" and cold <= spec["slow_s"]:
            while len(warm) < spec["reps"] or (
                sum(warm) < spec["min_total_s"] and len(warm) < spec["max_reps"]
            ):
                model, dt = timed()
                warm.append(dt)
            result["objective_last"] = extract(model)["objective"]
        # resident memory: the peak while a fit ran (sampled), less the process before the
        # first fit (interpreter, libraries and the data frame); the allocator keeps freed
        # pages, so warm peaks show only growth beyond the cold fit's
        result["rss_peak_cold_mb"] = peaks[0]
        result["rss_peak_mb"] = max(peaks)
        if memory is not None:
            result["memory"] = memory(model)
        result["warm_s"] = warm
        result["fit_s"] = statistics.median(warm) if warm else cold
        result["n_timed"] = len(warm) if warm else 1
        result["status"] = "ok"
    except Exception as exc:  # report, never crash the whole benchmark
        result["status"] = "error"
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        result["traceback"] = traceback.format_exc()[-4000:]
    result["warnings"] = captured[:20]
    with open(out_path, "w") as f:
        json.dump(_jsonable(result), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
