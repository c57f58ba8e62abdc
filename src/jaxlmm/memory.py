"""How much memory a fit will need, from the design alone, and a clear error when the device
does not have it (instead of an out-of-memory crash half-way through).

Counted, in bytes of the statistics' floating type (float64: 8):

* statistics (stats.py): per chain factor k with G_k levels and q_k effects G_k q_k^2 (D) and
  G_k (p + 1) q_k (E), the nesting blocks G_k q_l q_k (C), the crossed pair blocks
  npairs q_r q_k (P) and the dense block M, m x m with m = m_rand + p + 1;
* the pass's temporaries: the per-row outer products that the segment sums reduce and the
  pass's own copies of y, X and Z, rows x (sum of q_k^2 + (p + 1) q_k + crossed q_r q_r2 +
  1 + p + sum of q_k), with rows = n or the chunk size;
* an evaluation: the factor has the statistics' shape; the optimizer keeps value, gradient and
  (at its start and certification) a Hessian, so up to (2 + n_theta) copies of the
  factor's per-level blocks are live under autodiff, and DENSE_COPIES (1 + n_theta) copies of
  the dense block (its Cholesky differentiated forward over reverse; measured: peak memory of
  crossed fits grows by 17-21 dense blocks per dense block with n_theta = 2, m = 2,003 to
  6,003, docs/numerics.md);
* on an accelerator, also the design's arrays (copied to the device for the pass).

Not counted: the Python/JAX runtime itself (about 0.3-0.5 GiB) and compilation.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from .errors import JaxlmmError

__all__ = ["MemoryEstimate", "estimate", "available", "check", "InsufficientMemoryError"]


DENSE_COPIES = 6  # dense-block copies per (1 + n_theta) during an evaluation with derivatives


class InsufficientMemoryError(JaxlmmError, MemoryError):
    """The fit would need more memory than the device has free."""


class MemoryEstimate(NamedTuple):
    """Bytes each part of a fit needs (``total`` = what must fit on the device)."""

    inputs: int  # the design's arrays (y, X, Z, codes, weights, offset)
    pattern: int  # the block pattern's index lists (already built with the design)
    statistics: int
    dense_block: int  # the crossed factors' dense block (included in statistics)
    pass_temporaries: int
    evaluation: int
    total: int

    def __str__(self) -> str:
        g = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        return (f"{g(self.total)} in all: statistics {g(self.statistics)} (dense crossed block "
                f"{g(self.dense_block)}), pass temporaries {g(self.pass_temporaries)}, "
                f"evaluations {g(self.evaluation)}; plus the design's arrays {g(self.inputs)} "
                f"and index lists {g(self.pattern)}")


def _nbytes(tree) -> int:
    import jax

    return int(sum(a.nbytes for a in jax.tree_util.tree_leaves(tree)))  # numpy or jax arrays


def program_bytes(compiled) -> int | None:
    """Bytes a compiled JAX program holds while it runs, by XLA's own accounting
    (``compiled.memory_analysis()``): arguments + outputs + temporaries, less the outputs
    that alias arguments; None where the backend does not report it."""
    a = compiled.memory_analysis()
    if a is None:
        return None
    return int(a.argument_size_in_bytes + a.output_size_in_bytes + a.temp_size_in_bytes
               - a.alias_size_in_bytes)


def estimate(design, *, dtype=np.float64, chunk_rows: int | None = None,
             on_accelerator: bool = False) -> MemoryEstimate:
    """Memory a fit of ``design`` (modeldesign.Design) needs; see the module docstring."""
    st = design.struct
    b = np.dtype(dtype).itemsize
    n, p = design.X.shape
    chain, rest = st.chain, st.rest
    stats = 0
    per_row = 0
    for k, (G, q) in enumerate(chain):
        stats += G * q * q + G * (p + 1) * q
        per_row += q * q + (p + 1) * q
        for G_l, q_l in chain[k + 1:]:
            stats += G * q_l * q
            per_row += q_l * q
    pat = design.pattern
    for (k, r), pi in pat.pi.items():
        stats += int(np.shape(pi)[0]) * rest[r - len(chain)][1] * chain[k][1]
        per_row += rest[r - len(chain)][1] * chain[k][1]
    for i, (_, q) in enumerate(rest):
        per_row += q * q + (p + 1) * q + sum(q2 * q for _, q2 in rest[:i])
    per_row += 1 + p + sum(q for _, q in chain + rest)  # y, X and Z cast inside the pass
    dense = st.m * st.m
    stats = (stats + dense) * b
    rows = n if chunk_rows is None else min(n, int(chunk_rows))
    temps = rows * per_row * b
    evaluation = (2 + st.n_theta) * (stats - dense * b) + DENSE_COPIES * (1 + st.n_theta) * dense * b
    inputs = _nbytes((design.y, design.X, design.Z, design.codes, design.weights,
                      design.offset))
    pattern = _nbytes(pat)
    total = stats + max(temps, evaluation) + (inputs + pattern if on_accelerator else 0)
    return MemoryEstimate(inputs, pattern, stats, dense * b, temps, evaluation, total)


def available(device=None) -> int | None:
    """Free bytes on ``device`` (default: JAX's default device): an accelerator's own
    report, or the host's MemAvailable for the CPU; None when unknown."""
    import jax

    device = jax.devices()[0] if device is None else device
    if device.platform != "cpu":
        try:
            s = device.memory_stats() or {}
            return int(s["bytes_limit"]) - int(s.get("bytes_in_use", 0))
        except Exception:  # pragma: no cover - backend without memory statistics
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def check(design, *, dtype=np.float64, chunk_rows: int | None = None, device=None,
          free: int | None = None) -> MemoryEstimate:
    """The estimate, or an InsufficientMemoryError (before any work) when it exceeds the
    free memory of ``device`` (``free`` overrides the measured value)."""
    import jax

    device = jax.devices()[0] if device is None else device
    est = estimate(design, dtype=dtype, chunk_rows=chunk_rows,
                   on_accelerator=device.platform != "cpu")
    free = available(device) if free is None else int(free)
    if free is not None and est.total > free:
        hints = []
        if chunk_rows is None and est.pass_temporaries >= est.evaluation:
            hints.append("compute the statistics in chunks (fit(..., chunk_rows=1_000_000))")
        dense_part = est.dense_block * (1 + DENSE_COPIES * (1 + design.struct.n_theta))
        if dense_part > 0.5 * est.total:
            m = design.struct.m
            hints.append(f"the dense block of the crossed factors is {m} x {m} and is needed "
                         "whole: fewer levels in the crossed factors")
        hints.append("a device with more memory")
        raise InsufficientMemoryError(
            f"this fit needs about {est.total / 2**30:.2f} GiB but {device.platform} device "
            f"{device.id} has {free / 2**30:.2f} GiB free ({est}). Try: " + "; ".join(hints))
    return est
