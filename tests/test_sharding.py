"""The statistics pass sharded across devices (stats.sharded_suffstats: shard_map over rows,
psum of the blocks) equals the single-device pass, on 4 virtual CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4, set in a fresh process: JAX reads it at
start-up), for one factor with weights, crossed, nested, and padded rows with an offset; the
fits agree."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, numpy as np, jaxlmm
    from jaxlmm.stats import chunk_stats, sample_scale
    assert len(jax.devices()) == 4, jax.devices()
    ss = jaxlmm.datasets.load("sleepstudy")
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(ss))
    cases = [
        jaxlmm.design("Reaction ~ Days + (Days | Subject)", ss, weights=w),
        jaxlmm.design("diameter ~ 1 + (1 | plate) + (1 | sample)", jaxlmm.datasets.load("Penicillin")),
        jaxlmm.design("strength ~ 1 + (1 | batch/cask)", jaxlmm.datasets.load("Pastes")),
        # 178 rows: padded with 2 weight-0 rows to a multiple of 4; with an offset
        jaxlmm.design("Reaction ~ Days + (Days | Subject)", ss.iloc[:178],
                      offset=0.1 * np.arange(178)),
    ]
    for d in cases:
        s4 = jaxlmm.sharded_suffstats(d)
        s1 = chunk_stats(d, slice(0, d.X.shape[0]), sample_scale(d))
        leaves = lambda s: [np.asarray(x) for x in jax.tree_util.tree_leaves(
            (s.D, s.C, s.P, s.E, s.M, s.n, s.ldw))]
        for a, b in zip(leaves(s4), leaves(s1)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
        assert len(s4.M.sharding.device_set) == 4  # replicated on every device
        r4, r1 = jaxlmm.fit_stats(s4), jaxlmm.fit_stats(jaxlmm.suffstats(d))
        assert abs(float(r4.objective) - float(r1.objective)) < 1e-9
        np.testing.assert_allclose(np.asarray(r4.beta), np.asarray(r1.beta), rtol=1e-8)
    # two of the four devices
    d = cases[0]
    s2 = jaxlmm.sharded_suffstats(d, devices=jax.devices()[:2])
    assert abs(float(jaxlmm.fit_stats(s2).objective)
               - float(jaxlmm.fit_stats(jaxlmm.suffstats(d)).objective)) < 1e-9
    print("ok")
""")


def test_sharded_pass_on_four_cpu_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
