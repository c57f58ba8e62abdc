"""The statistics placed across devices: the first chain factor's levels split by groups.

Every deviance evaluation starts with per-level work on the first chain factor (pls.py):
for each of its G_0 levels u, with templates T (this factor) and T_l (a later chain factor
l, nested), in batched small-matrix kernels,

    L_u = chol(T'D_u T + I),   C_ul <- T_l'C_ul T L_u^{-T},   E_u <- E_u T L_u^{-T},

followed by sums over the levels: log|L|^2 = sum_u 2 log|diag L_u|, the [X y] block
sum_u E_u'E_u, and the updates of each later chain factor l, sum over u in a level of l of
C_ul C_ul' (a segment sum over the parent map). ``shard_stats`` places every array whose
leading axis runs over these levels (D[0], C[0, l], E[0], parent[0, l]) with a
``NamedSharding`` split along a one-axis device mesh ("groups"), and replicates everything
else (the later chain factors, the crossed pair and pair-of-pair lists, the dense block M,
n, the Scale). Under ``jax.jit`` (``fit_stats``, ``objective``, ``solve``) XLA's SPMD
partitioner then runs the per-level kernels on each device's own levels and all-reduces
the sums; there is no hand-written communication.

Uneven shards: JAX 0.10 refuses a ``NamedSharding`` whose axis length is not a multiple of
the device count (``device_put`` raises IndivisibleError), so the first factor is padded
with empty levels up to the next multiple. An empty level has Z_u'Z_u = 0 and
[X y]'Z_u = 0, so D_u = I, L_u = I, log|L_u|^2 = 0 and its scaled off-diagonal blocks are
zero: it adds nothing to any sum or Schur update, and criterion, theta, beta and sigma are
those of the unpadded statistics. Its parent in each later chain factor is level 0 (any
level would do: it adds zeros). The pair lists of crossed factors index real levels only
and are unchanged. ``Structure.padding`` records the number of empty levels: the moment
start (start.py) does not count them, and ``solution.solve`` (hence ``fit_stats``) drops
their conditional modes and variances, so results have the unpadded shapes.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

from .stats import Stats

AXIS = "groups"


def as_devices(devices) -> list:
    """``devices`` as a non-empty list of distinct JAX devices (default: all of them)."""
    if devices is None:
        return list(jax.devices())
    if isinstance(devices, jax.Device):
        devices = [devices]
    if isinstance(devices, (str, bytes)):
        raise TypeError(f"devices must be a list of JAX devices (e.g. jax.devices() or "
                        f"jax.devices('gpu')), not the string {devices!r}")
    try:
        devices = list(devices)
    except TypeError:
        raise TypeError(f"devices must be a list of JAX devices (e.g. jax.devices()), got "
                        f"{type(devices).__name__}") from None
    bad = [d for d in devices if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(f"devices must be a list of JAX devices (e.g. jax.devices()), got "
                        f"{bad[0]!r} of type {type(bad[0]).__name__}")
    if not devices:
        raise ValueError("devices is empty; pass at least one JAX device")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices has repeated entries: {devices}")
    return devices


def _pad_levels(a, extra: int):
    """a with ``extra`` zero rows appended along axis 0."""
    a = jnp.asarray(a)
    return jnp.concatenate([a, jnp.zeros((extra,) + a.shape[1:], a.dtype)])


def pad_first_factor(stats: Stats, multiple: int) -> Stats:
    """The statistics with the first chain factor padded with empty levels (zero blocks,
    parent level 0) to a multiple of ``multiple`` levels; padding already present is
    replaced. The criterion, theta, beta and sigma are unchanged (module docstring)."""
    st = stats.struct
    G0, q0 = st.chain[0]
    real = G0 - st.padding
    if stats.E[0].shape[0] != G0:
        raise ValueError(f"E[0] has shape {stats.E[0].shape}, not one block per level of the "
                         f"first factor ({G0}); statistics batched over responses (jax.vmap) "
                         "cannot be placed by groups")
    target = -(-real // multiple) * multiple
    extra = target - real

    def fix(a):
        a = jnp.asarray(a)[:real]
        return _pad_levels(a, extra) if extra else a

    C = {key: fix(c) if key[0] == 0 else c for key, c in stats.C.items()}
    parent = {key: fix(v) if key[0] == 0 else v for key, v in stats.parent.items()}
    struct = replace(st, chain=((target, q0),) + st.chain[1:], padding=extra)
    return replace(stats, D=(fix(stats.D[0]),) + tuple(stats.D[1:]), C=C, parent=parent,
                   E=(fix(stats.E[0]),) + tuple(stats.E[1:]), struct=struct)


def shard_stats(stats: Stats, devices=None) -> Stats:
    """``stats`` placed on ``devices`` (default: all of JAX's devices) with the first chain
    factor's levels split across them and everything else replicated (module docstring).

    The first factor is padded with empty levels to a multiple of the device count when
    needed (``Structure.padding``; results are unchanged and come back unpadded). Any
    statistics will do (``suffstats``, ``sharded_suffstats``, chunked); the result goes
    straight into ``fit_stats``, ``objective`` or ``solve``, whose compiled programs are then
    partitioned by groups.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as Spec

    if not isinstance(stats, Stats):
        raise TypeError(f"stats must be jaxlmm.Stats (from suffstats), got "
                        f"{type(stats).__name__}")
    devices = as_devices(devices)
    stats = pad_first_factor(stats, len(devices))
    mesh = Mesh(np.array(devices), (AXIS,))
    rep = NamedSharding(mesh, Spec())

    def split(a):  # leading axis over the mesh, the rest whole
        return NamedSharding(mesh, Spec(AXIS, *([None] * (jnp.ndim(a) - 1))))

    def first(blocks, shardings):  # entries keyed (0, l): the first factor's levels
        return {key: split(v) if key[0] == 0 else shardings[key] for key, v in blocks.items()}

    sh = jax.tree_util.tree_map(lambda _: rep, stats)  # a Stats of shardings: all replicated
    sh = replace(sh, D=(split(stats.D[0]),) + sh.D[1:], E=(split(stats.E[0]),) + sh.E[1:],
                 C=first(stats.C, sh.C), parent=first(stats.parent, sh.parent))
    return jax.device_put(stats, sh)
