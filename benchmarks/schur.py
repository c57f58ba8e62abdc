"""The crossed Schur update, measured on its own: how its cost grows with rows and levels.

For ``y ~ x + (1 | u) + (1 | i)`` (Zipf item popularity, benchmarks/workloads.sim_crossed)
one evaluation of the criterion is

1. the chain factor's (users') diagonal blocks and their Cholesky (cheap, O(levels));
2. the Schur update of the dense block of the crossed factor (items):
   S = Lambda' A_22 Lambda + I - L_21 L_21', computed from the co-occurrence pair-of-pair
   lists (pattern.py) as a sorted segment sum (pls.schur_parts / assemble); its cost is
   proportional to the number of pairs of pairs npp = sum over users of (items rated)^2 / 2;
3. the dense Cholesky of S (m x m, m = items + p + 1): O(m^3).

This script times 1+2 (``eliminate_chain``) and 3 (``chol_sym``) separately, warm, in float64,
over a grid of rows (fixed levels) and of item counts (fixed rows), and writes
benchmarks/schur.md and benchmarks/schur.json.

    .venv/bin/python benchmarks/schur.py               # full grid (about 3 minutes on 2 cores)
    .venv/bin/python benchmarks/schur.py --quick       # small sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlmm  # noqa: E402
from jaxlmm import pls  # noqa: E402
from jaxlmm.dense import chol_sym  # noqa: E402
from workloads import sim_crossed  # noqa: E402


def _time(fn, *args, reps: int = 5) -> float:
    jax.block_until_ready(fn(*args))  # compile
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


@jax.jit
def _eliminate(theta, stats):
    return pls.eliminate_chain(theta, stats)[-1]


_chol = jax.jit(chol_sym)


def measure(users: int, items: int, rows: int, seed: int = 3) -> dict:
    df = sim_crossed(users, items, rows, seed=seed)()[0]
    d = jaxlmm.design("y ~ x + (1 | u) + (1 | i)", df)
    stats = jaxlmm.suffstats(d)
    theta = jnp.asarray([0.8, 0.6])
    npp = int(sum(np.shape(v)[0] for v in stats.ppa.values()))
    npairs = int(sum(np.shape(v)[0] for v in stats.pi.values()))
    M = _eliminate(theta, stats)
    t_schur = _time(_eliminate, theta, stats)
    t_chol = _time(_chol, M)
    return {"users": users, "items": items, "rows": rows, "m": d.struct.m,
            "chain": d.struct.chain, "rest": d.struct.rest, "pairs": npairs,
            "pairs_of_pairs": npp, "schur_s": t_schur, "cholesky_s": t_chol}


def render(rep: dict) -> str:
    lines = [
        "# The crossed Schur update on its own",
        "",
        f"Generated {rep['started']} by `{rep['command']}`. Machine: {rep['machine']}; "
        f"JAX {jax.__version__}, backend {jax.default_backend()}, float64, warm medians.",
        "",
        "`y ~ x + (1 | u) + (1 | i)`, Zipf item popularity. The larger factor (users) is "
        "eliminated first; the items' block is the dense one (m = items + 3). *Schur* = "
        "the chain factor's blocks and the dense block's update S = Lambda'A22 Lambda + I - "
        "L21 L21' from the pair-of-pair lists; *Cholesky* = the dense Cholesky of S. Both "
        "are what one evaluation of the criterion costs (no derivatives).",
        "",
        "| grid | users | items | rows | pairs | pairs of pairs | Schur update | ns per pair of pairs | dense Cholesky |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep["results"]:
        lines.append(
            f"| {r['grid']} | {r['users']:,} | {r['items']:,} | {r['rows']:,} | {r['pairs']:,} | "
            f"{r['pairs_of_pairs']:,} | {r['schur_s'] * 1e3:.1f} ms | "
            f"{r['schur_s'] / max(r['pairs_of_pairs'], 1) * 1e9:.1f} | "
            f"{r['cholesky_s'] * 1e3:.1f} ms |")
    lines += ["", rep.get("summary", ""), ""]
    return "\n".join(lines)


def summarize(results) -> str:
    """Growth exponents from log-log fits: Schur time vs rows (fixed levels) and vs pairs of
    pairs; Cholesky time vs m."""
    out = []
    rows = [r for r in results if r["grid"] == "rows"]
    if len(rows) >= 2:
        b = np.polyfit(np.log([r["rows"] for r in rows]), np.log([r["schur_s"] for r in rows]), 1)[0]
        c = np.polyfit(np.log([r["rows"] for r in rows]),
                       np.log([r["pairs_of_pairs"] for r in rows]), 1)[0]
        out.append(f"With levels fixed, the Schur update grows as rows^{b:.2f} "
                   f"(pairs of pairs grow as rows^{c:.2f}).")
    items = [r for r in results if r["grid"] == "items"]
    if len(items) >= 2:
        b = np.polyfit(np.log([r["m"] for r in items]), np.log([r["cholesky_s"] for r in items]), 1)[0]
        s = np.polyfit(np.log([r["m"] for r in items]), np.log([r["schur_s"] for r in items]), 1)[0]
        out.append(f"With rows fixed, the dense Cholesky grows as m^{b:.2f} and the Schur "
                   f"update as m^{s:.2f} (the dense block is m x m).")
    return " ".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(HERE / "schur"))
    args = p.parse_args(argv)
    if args.quick:
        grid = [("rows", 2000, 500, n) for n in (20_000, 40_000)] + \
               [("items", 2000, k, 40_000) for k in (250, 500)]
    else:
        grid = [("rows", 20_000, 5_000, n) for n in (250_000, 500_000, 1_000_000)] + \
               [("items", 20_000, k, 1_000_000) for k in (1_000, 2_000, 5_000)]
    rep = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "command": " ".join([".venv/bin/python", "benchmarks/schur.py", *(argv or sys.argv[1:])]),
           "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} "
                      f"{jax.devices()[0].platform} device(s), {__import__('os').cpu_count()} cores",
           "results": []}
    for name, users, items, rows in grid:
        r = measure(users, items, rows)
        r["grid"] = name
        rep["results"].append(r)
        print(f"{name}: users {users} items {items} rows {rows}: npp {r['pairs_of_pairs']:,} "
              f"schur {r['schur_s']:.3f} s chol {r['cholesky_s']:.3f} s", flush=True)
    rep["summary"] = summarize(rep["results"])
    Path(args.out + ".json").write_text(json.dumps(rep, indent=1, default=str))
    Path(args.out + ".md").write_text(render(rep))
    print(rep["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
