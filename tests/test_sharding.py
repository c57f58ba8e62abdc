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


def _on_four_cpu_devices(script: str) -> None:
    """Run ``script`` in a fresh process with 4 virtual CPU devices; it must print "ok"."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_sharded_pass_on_four_cpu_devices():
    _on_four_cpu_devices(SCRIPT)


GROUPS_SCRIPT = textwrap.dedent("""
    import re, jax, numpy as np, pandas as pd, jaxlmm
    from jaxlmm import start
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    G = 1001  # a 3-dimensional vector term; 1001 levels: padded with 3 empty ones
    g = np.concatenate([np.arange(G), rng.integers(0, G, 7 * G)])
    x1, x2 = rng.normal(size=g.size), rng.normal(size=g.size)
    b = rng.normal(size=(G, 3)) * [1.0, 0.5, 0.3]
    y = 1 + x1 - x2 + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2 + rng.normal(size=g.size)
    sim = pd.DataFrame(dict(y=y, x1=x1, x2=x2, g=np.char.add("g", g.astype(str))))
    ss = jaxlmm.datasets.load("sleepstudy")
    cases = [  # (formula, data, hessian, padded levels)
        ("Reaction ~ Days + (Days | Subject)", ss, "auto", 2),
        ("strength ~ 1 + (1 | batch/cask)", jaxlmm.datasets.load("Pastes"), "auto", 2),
        ("diameter ~ 1 + (1 | plate) + (1 | sample)", jaxlmm.datasets.load("Penicillin"),
         "auto", 0),
        # Newton: the quasi-Newton default stops within its tolerance (~1e-7 in theta),
        # which rounding differences between the two programs would show
        ("y ~ x1 + x2 + (x1 + x2 | g)", sim, "exact", 3),
    ]
    rel = lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))
                              / np.maximum(np.abs(np.asarray(b)), 1e-8))
    for f, data, hessian, pad in cases:
        s1 = jaxlmm.suffstats(jaxlmm.design(f, data))
        s4 = jaxlmm.shard_stats(s1)
        G0, q0 = s1.struct.chain[0]
        assert s4.struct.padding == pad and s4.struct.chain[0] == (G0 + pad, q0), f
        # the first factor's levels split across the 4 devices, the rest replicated
        for a in [s4.D[0], s4.E[0]] + [v for k, v in {**s4.C, **s4.parent}.items()
                                       if k[0] == 0]:
            assert len(a.sharding.device_set) == 4
            assert a.sharding.shard_shape(a.shape)[0] == (G0 + pad) // 4, (f, a.shape)
        assert s4.M.sharding.is_fully_replicated and len(s4.M.sharding.device_set) == 4
        assert all(p.sharding.is_fully_replicated for p in s4.P.values())
        r1, r4 = jaxlmm.fit_stats(s1, hessian=hessian), jaxlmm.fit_stats(s4, hessian=hessian)
        assert int(r4.status) == 0, f
        assert abs(float(r4.objective) - float(r1.objective)) < 1e-9 * max(
            1.0, abs(float(r1.objective)) / 1e4), f
        assert rel(r4.theta, r1.theta) < 1e-7 and rel(r4.beta, r1.beta) < 1e-7, f
        assert abs(float(r4.sigma) / float(r1.sigma) - 1) < 1e-7, f
        # conditional modes and variances come back without the padded levels
        for b1, b4, v1, v4 in zip(r1.solution.b, r4.solution.b, r1.solution.cond_var,
                                  r4.solution.cond_var):
            assert b4.shape == b1.shape and v4.shape == v1.shape, f
            np.testing.assert_allclose(np.asarray(b4), np.asarray(b1), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(np.asarray(v4), np.asarray(v1), rtol=1e-6, atol=1e-12)
        # at one theta: criterion and gradient agree to rounding
        th = r1.theta
        v1, g1 = jax.value_and_grad(jaxlmm.objective)(th, s1)
        v4, g4 = jax.value_and_grad(jaxlmm.objective)(th, s4)
        assert abs(float(v4) - float(v1)) < 1e-10 * abs(float(v1)), f
        np.testing.assert_allclose(np.asarray(g4), np.asarray(g1), rtol=1e-6, atol=1e-7)
        if f.startswith("Reaction"):
            # placed again on 3 devices: the old padding is replaced (18 levels, none now)
            s3 = jaxlmm.shard_stats(s4, devices=jax.devices()[:3])
            assert s3.struct == s1.struct and len(s3.D[0].sharding.device_set) == 3
            assert abs(float(jaxlmm.objective(th, s3)) - float(v1)) < 1e-9
            # the compiled programs are partitioned: per-device blocks of 20 / 4 = 5 levels
            # in, the sums over levels all-reduced, nothing of G_0 gathered per evaluation
            hlo = jaxlmm.objective.lower(th, s4).compile().as_text()
            entry = next(l for l in hlo.splitlines() if l.startswith("ENTRY"))
            assert "f64[5,2,2]" in entry and "f64[20,2,2]" not in entry, entry
            assert "all-reduce" in hlo and "all-gather" not in hlo
            hlo = jaxlmm.fit_stats.lower(s4).compile().as_text()
            entry = next(l for l in hlo.splitlines() if l.startswith("ENTRY"))
            assert "f64[5,2,2]" in entry and "f64[20,2,2]" not in entry, entry
            assert re.search(r"while|call", hlo) and "all-reduce" in hlo
    # moment start of a large crossed block (start.py) does not count the padded levels
    u, i = rng.integers(0, 301, 3000), rng.integers(0, 290, 3000)
    cr = pd.DataFrame(dict(y=rng.normal(size=3000), u=u.astype(str), i=i.astype(str)))
    s1 = jaxlmm.suffstats(jaxlmm.design("y ~ 1 + (1 | u) + (1 | i)", cr))
    s4 = jaxlmm.shard_stats(s1)
    assert start.use_moments(s1.struct) and s4.struct.padding == 3
    np.testing.assert_allclose(np.asarray(start.default(s4)), np.asarray(start.default(s1)),
                               rtol=1e-12)
    # the pandas level: fit(devices=...) and its refit
    m1 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", ss)
    m4 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", ss, devices=jax.devices())
    assert abs(m4.objective - m1.objective) < 1e-9
    r4, r1 = m4.ranef(), m1.ranef()
    assert r4[["grpvar", "term", "grp"]].equals(r1[["grpvar", "term", "grp"]])
    np.testing.assert_allclose(r4[["condval", "condsd"]].to_numpy(float),
                               r1[["condval", "condsd"]].to_numpy(float), rtol=1e-6)
    assert abs(m4.refit_ml().objective - m1.refit_ml().objective) < 1e-9
    m3 = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", ss, devices=jax.devices()[:3])
    assert abs(m3.objective - m1.objective) < 1e-9
    for bad, err in [(["cpu"], TypeError), ("cpu", TypeError), ([], ValueError),
                     (jax.devices()[:1] * 2, ValueError)]:
        try:
            jaxlmm.shard_stats(s1, devices=bad)
        except err as e:
            assert "devices" in str(e)
        else:
            raise AssertionError(bad)
    print("ok")
""")


def test_groups_split_on_four_cpu_devices():
    """shard_stats: the first factor's levels split across 4 virtual devices (padded when
    not divisible), everything else replicated; the compiled criterion is partitioned
    (per-device blocks, all-reduced sums) and the fits equal the single-device ones."""
    _on_four_cpu_devices(GROUPS_SCRIPT)
