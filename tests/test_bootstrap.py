"""simulate() and the vmapped parametric bootstrap (jaxlmm.simulate, jaxlmm.bootstrap).

Reference values: the model itself (exact identities and Monte Carlo moments), separate
``jaxlmm.fit`` fits of the same simulated responses, brute force for the intervals, R's
``quantile`` (values in the test), lme4's VarCorr (tests/fixtures/lme4) for the .sigNN
parameters, and lme4 ``bootMer`` (tests/fixtures/bootstrap, made by make_bootstrap.R) for the
bootstrap distribution within Monte Carlo error.
"""

import dataclasses
import warnings
import json
import math
import pathlib

import jax
import numpy as np
import pytest
from conftest import fixture_data, load_fixture

import jaxlmm
from jaxlmm.bootstrap import bootstrap, sdcor, shortest_interval
from jaxlmm.errors import DataError
from jaxlmm.simulate import draw_many, simulate

SLEEP = "Reaction ~ Days + (Days | Subject)"
BOOT_FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "bootstrap" / "sleepstudy_bootmer.json"


@pytest.fixture(scope="module")
def sleep_model(sleepstudy):
    return jaxlmm.fit(SLEEP, sleepstudy)


@pytest.fixture(scope="module")
def boot(sleep_model):
    """1,000 replicates in batches of 500 (shared by several tests)."""
    return bootstrap(sleep_model, 1000, seed=11, batch_size=500, warn=False)


def dense_cov(m, theta, sigma):
    """sigma^2 (Z Lambda Lambda' Z' + W^{-1}), built densely (test only)."""
    d = m.design
    n = d.n
    cols = []
    for (G, q), tmpl, Z, codes in zip(d.struct.factors, d.struct.templates, d.Z, d.codes):
        T = np.zeros((q, q))
        for i, r, c in tmpl:
            T[r, c] = theta[i]
        Zd = np.zeros((n, G * q))
        for j in range(q):
            Zd[np.arange(n), np.asarray(codes) * q + j] = np.asarray(Z)[:, j]
        cols.append(Zd @ np.kron(np.eye(G), T))  # Z_k Lambda_k
    ZL = np.concatenate(cols, axis=1)
    w = np.ones(n) if d.weights is None else np.asarray(d.weights)
    return sigma ** 2 * (ZL @ ZL.T + np.diag(1.0 / w))


def assert_same_fits(a, b):
    """Replicate tables agree to the optimizer's tolerance: the criterion to 1e-8, beta to
    1e-7, sigma to 1e-6, sds and theta to 1e-5 (relative), correlations to 1e-5. (Batches
    of different sizes may round differently, so BFGS can take a slightly different path to
    the same optimum; theta is determined to about 1e-6 by the stopping rule.)"""
    kinds = a.parameters["kind"]
    for col in a.replicates.columns:
        x, y = a.replicates[col].to_numpy(float), b.replicates[col].to_numpy(float)
        tol = {"objective": dict(rtol=0, atol=1e-8), "beta": dict(rtol=1e-7, atol=0),
               "sigma": dict(rtol=1e-6, atol=0), "cor": dict(rtol=0, atol=1e-5)}.get(
                   kinds[col], dict(rtol=1e-5, atol=1e-6))
        np.testing.assert_allclose(x, y, err_msg=col, **tol)


# ------------------------------------------------------------------ simulate


def test_simulate_shape_determinism_and_keys(sleep_model):
    m = sleep_model
    Y = simulate(m, 4, seed=3)
    assert Y.shape == (4, m.nobs) and Y.dtype == np.float64
    np.testing.assert_array_equal(Y, simulate(m, 4, seed=3))
    np.testing.assert_array_equal(Y[:2], simulate(m, 2, seed=3))  # row i depends on i only
    np.testing.assert_array_equal(Y, simulate(m, 4, seed=jax.random.key(3)))
    assert not np.allclose(Y, simulate(m, 4, seed=4))
    fr = simulate(m, 3, seed=3, as_frame=True)
    assert list(fr.columns) == ["sim_1", "sim_2", "sim_3"] and fr.shape == (m.nobs, 3)
    np.testing.assert_array_equal(fr.to_numpy().T, Y[:3])


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, "positive integer"),
    ({"n": 2, "seed": "a"}, "seed"),
    ({"n": 2, "theta": [1.0, 0.0]}, "theta must have shape"),
    ({"n": 2, "theta": [-1.0, 0.0, 1.0]}, "lower bound"),
    ({"n": 2, "sigma": -1.0}, "sigma must be >= 0"),
    ({"n": 2, "beta": [1.0, np.nan]}, "non-finite"),
])
def test_simulate_bad_input(sleep_model, kwargs, match):
    with pytest.raises(DataError, match=match):
        simulate(sleep_model, **kwargs)


def test_simulate_moments_match_the_model(sleep_model):
    """4,000 draws at theta = (1, 0.8, 0.3) (T T' far from T' T): the sample mean is
    X beta and the sample covariance is sigma^2 (Z Lambda Lambda' Z' + I), each entry within
    6 Monte Carlo standard errors (Var(S_ij) ~ (S_ii S_jj + S_ij^2) / N)."""
    m = sleep_model
    theta = np.array([1.0, 0.8, 0.3])
    N = 4000
    Y = simulate(m, N, seed=7, theta=theta)
    Sigma = dense_cov(m, theta, m.sigma)
    mu = m.frame.X @ m.fixef.values
    z_mean = (Y.mean(0) - mu) / np.sqrt(np.diag(Sigma) / N)
    assert np.max(np.abs(z_mean)) < 5.0
    S = np.cov(Y, rowvar=False)
    dg = np.diag(Sigma)
    se = np.sqrt((np.outer(dg, dg) + Sigma ** 2) / N)
    z = (S - Sigma) / se
    assert np.max(np.abs(z)) < 6.0
    # within each subject's block (where the random effects live) the covariance is ~2 %
    # from the model; between subjects its entries are pure noise of the size se
    codes = np.asarray(m.design.codes[0])
    for g in range(18):
        blk = np.ix_(codes == g, codes == g)
        assert np.linalg.norm(S[blk] - Sigma[blk]) / np.linalg.norm(Sigma[blk]) < 0.08
    # the test can fail: the transposed template (T'T instead of T T') is far outside
    T = np.array([[1.0, 0.0], [0.8, 0.3]])
    th_wrong = np.linalg.cholesky(T.T @ T)[[0, 1, 1], [0, 0, 1]]
    z_wrong = (S - dense_cov(m, th_wrong, m.sigma)) / se
    assert np.max(np.abs(z_wrong)) > 20


def test_simulate_use_ranef_mean_is_fitted(sleep_model):
    """use_ranef=True: y* = fitted() + eps; with sigma = 0 exactly fitted()."""
    m = sleep_model
    exact = simulate(m, 2, seed=1, use_ranef=True, sigma=0.0)
    np.testing.assert_allclose(exact, np.broadcast_to(m.fitted(), exact.shape), rtol=1e-12)
    N = 2000
    Y = simulate(m, N, seed=2, use_ranef=True)
    z = (Y.mean(0) - m.fitted()) / (m.sigma / np.sqrt(N))
    assert np.max(np.abs(z)) < 5.0
    r = (Y - m.fitted()).std(0, ddof=1) / m.sigma
    assert abs(r.mean() - 1.0) < 0.01


def _at_lme4_estimates(name):
    """Design and lme4's estimates of a fixture model; b from jaxlmm.solve at lme4's theta."""
    fx = load_fixture(name)
    d = jaxlmm.design(fx["formula"], fixture_data(fx), weights=fx.get("weights"))
    theta = np.asarray(fx["theta"])
    sol = jaxlmm.solve(theta, jaxlmm.suffstats(d), fx["reml"])
    return fx, d, theta, sol


@pytest.mark.parametrize("name", ["penicillin_reml", "pastes_reml", "sleepstudy_offset",
                                  "sleepstudy_weighted"])
def test_draw_given_ranef_is_lme4_fitted(name):
    """The kernel with b = the conditional modes and sigma = 0 reproduces lme4's fitted()
    (crossed and nested factors, offset, weights): Z b gathered by level codes is Z b."""
    fx, d, theta, sol = _at_lme4_estimates(name)
    key = jax.random.key(0)
    Y = np.asarray(draw_many(key, d, sol.beta, theta, 0.0, sol.b, 0, size=2))
    np.testing.assert_allclose(Y, np.broadcast_to(fx["fitted"], Y.shape), rtol=1e-7)


def test_draw_residuals_have_variance_sigma2_over_w():
    """Prior weights: eps ~ N(0, sigma^2 / w) (lme4 1.1-31's simulate ignores them)."""
    fx, d, theta, sol = _at_lme4_estimates("sleepstudy_weighted")
    N, sigma = 3000, fx["sigma"]
    Y = np.asarray(draw_many(jax.random.key(5), d, sol.beta, theta, sigma, sol.b, 0, size=N))
    E = Y - np.asarray(fx["fitted"])
    w = np.asarray(d.weights)
    assert len(np.unique(w)) == 3
    for wv in np.unique(w):
        v = E[:, w == wv].var() * wv / sigma ** 2  # ~ 1 +- 0.006 (60 rows x 3000 draws)
        assert abs(v - 1.0) < 0.03, (wv, v)


# ------------------------------------------------------------------ sd / cor parameters


@pytest.mark.parametrize("name", ["sleepstudy_reml", "sleepstudy_uncorr", "pastes_reml",
                                  "penicillin_reml", "crossed_slopes_reml"])
def test_sdcor_in_lme4_sig_order(name):
    """sdcor at lme4's theta and sigma reproduces as.data.frame(VarCorr(m))'s sdcor values
    (matched by group and variables), numbered .sig01, ... term by term in lme4's order
    (within a term: column-major lower triangle; checked on sleepstudy against lme4's
    bootstrap names in test_bootstrap_table_layout)."""
    fx = load_fixture(name)
    d = jaxlmm.design(fx["formula"], fixture_data(fx), weights=fx.get("weights"))
    vals, desc = sdcor(d.info, np.asarray(fx["theta"]), np.asarray(fx["sigma"]))
    ref = {(r["grp"], r["var1"], r["var2"]): r["sdcor"] for r in fx["varcorr"]
           if r["grp"] != "Residual"}
    assert [x[0] for x in desc] == [f".sig{i + 1:02d}" for i in range(len(ref))]
    got = {(g, v1, v2): vals[0, j] for j, (_, kind, g, v1, v2) in enumerate(desc)}
    assert got.keys() == ref.keys()
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-14), k
    # terms appear in lme4's order (VarCorr's group order)
    groups = list(dict.fromkeys(r["grp"] for r in fx["varcorr"] if r["grp"] != "Residual"))
    assert list(dict.fromkeys(x[2] for x in desc)) == groups


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_table_layout(boot, sleep_model):
    m = sleep_model
    cols = ["objective", "(Intercept)", "Days", "sigma", ".sig01", ".sig02", ".sig03",
            "theta:Subject.(Intercept)", "theta:Subject.Days.(Intercept)", "theta:Subject.Days"]
    assert list(boot.replicates.columns) == cols and len(boot.replicates) == 1000
    assert list(boot.parameters["kind"]) == ["objective", "beta", "beta", "sigma", "sd", "cor",
                                             "sd", "theta", "theta", "theta"]
    assert boot.default_parm() == [".sig01", ".sig02", ".sig03", "sigma", "(Intercept)", "Days"]
    est = boot.estimates
    assert est["objective"] == m.objective and est["Days"] == m.fixef["Days"]
    np.testing.assert_allclose(est[["theta:Subject.(Intercept)", "theta:Subject.Days.(Intercept)",
                                    "theta:Subject.Days"]], m.theta)
    lme4 = json.loads(BOOT_FIXTURE.read_text())["estimates"]
    for k in (".sig01", ".sig02", ".sig03"):  # the fit's sd/cor against lme4's
        assert est[k] == pytest.approx(lme4[k], rel=2e-4)
    t = boot.timings
    assert t["batches"] == 2 and t["batch_size"] == 500 and t["run_s"] > 0
    assert boot.stderr.shape == (1000, 2)
    assert "Parametric bootstrap: 1000 replicates (REML)" in boot.summary()


def test_bootstrap_replicates_equal_separate_fits(sleep_model, sleepstudy):
    """Replicate i refits simulate(m, n, seed)[i]; it equals a separate jaxlmm.fit of that
    response (batches of 5, the last one padded)."""
    m = sleep_model
    b5 = bootstrap(m, 12, seed=11, batch_size=5, warn=False)
    assert b5.timings["batches"] == 3 and b5.timings["padded"] == 3
    Y = simulate(m, 12, seed=11)
    df = sleepstudy.copy()
    for i in (0, 3, 7, 11):
        df["Reaction"] = Y[i]
        f = jaxlmm.fit(SLEEP, df)
        r = b5.replicates.iloc[i]
        assert r["objective"] == pytest.approx(f.objective, abs=1e-8)
        np.testing.assert_allclose(r[["(Intercept)", "Days"]].to_numpy(float), f.fixef.values,
                                   rtol=1e-8)
        assert r["sigma"] == pytest.approx(f.sigma, rel=1e-7)
        vals, _ = sdcor(m.design.info, f.theta, f.sigma)
        np.testing.assert_allclose(r[[".sig01", ".sig03"]].to_numpy(float), vals[0, [0, 2]],
                                   rtol=1e-5)
        assert bool(b5.status["converged"].iloc[i]) == f.converged


def test_bootstrap_batch_size_invariance_large(boot, sleep_model):
    """The first replicates of a 1,000-replicate run (batches of 500) equal a 12-replicate
    run in batches of 5: keys come from fold_in(key, i), not from the batching."""
    b5 = bootstrap(sleep_model, 12, seed=11, batch_size=5, warn=False)
    first = dataclasses.replace(boot, replicates=boot.replicates.iloc[:12].reset_index(drop=True))
    assert_same_fits(first, b5)


def test_statuses_are_counted_not_hidden():
    """Non-converged refits (max_iter=2) are kept, counted and warned about; singular fits
    (Dyestuff2: simulated with theta = 0) are flagged per replicate."""
    m = jaxlmm.fit("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("Dyestuff"))
    with pytest.warns(UserWarning, match="did not converge"):
        b = bootstrap(m, 40, seed=2, max_iter=2)
    counts = b.status_counts
    assert sum(counts.values()) == 40 and b.n_converged < 40
    assert counts[jaxlmm.STATUS[1]] == 40 - b.n_converged
    assert (b.status["code"] != 0).sum() == 40 - b.n_converged
    assert b.confint(parm="sigma", converged_only=True).loc["sigma", "n"] == b.n_converged
    assert "maximum number of iterations reached" in b.summary()

    m2 = jaxlmm.fit("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("Dyestuff2"))
    assert m2.is_singular
    b2 = bootstrap(m2, 40, seed=2, warn=False)
    th = b2.replicates["theta:Batch.(Intercept)"].to_numpy()
    np.testing.assert_array_equal(b2.status["singular"].to_numpy(), th <= 1e-4)
    assert b2.n_singular == int((th <= 1e-4).sum()) and b2.n_singular > 10
    assert b2.n_converged == 40


def _brute_shortest(v, level):
    x = np.sort(v)
    n = len(x)
    k = math.ceil(n * level)
    best = None
    for i in range(n):
        for j in range(i + k - 1, n):
            if best is None or x[j] - x[i] < best[1] - best[0]:
                best = (x[i], x[j])
    return best


@pytest.mark.parametrize("seed", range(6))
def test_shortest_interval_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    v = rng.gamma(2.0, size=n) if seed % 2 else rng.integers(0, 8, size=n).astype(float)  # ties
    for level in (0.5, 0.8, 0.95):
        lo, hi = shortest_interval(v, level)
        blo, bhi = _brute_shortest(v, level)
        assert hi - lo == pytest.approx(bhi - blo, abs=1e-15)
        assert np.sum((v >= lo) & (v <= hi)) >= math.ceil(n * level)
    # non-finite values are skipped; all-NaN gives NaN
    lo, hi = shortest_interval(np.r_[v, np.nan, np.inf], 0.8)
    assert (lo, hi) == shortest_interval(v, 0.8)
    assert np.isnan(shortest_interval([np.nan], 0.9)[0])


def test_confint_percentile_and_shortest(boot):
    """percentile = R's quantile(type = 7); shortest = shortest_interval, per parameter."""
    x = np.array([3.1, 1.2, 9.9, 4.4, 7.0, 2.2, 5.5, 8.25, 0.5, 6.75, 2.0])
    from jaxlmm.bootstrap import percentile_interval
    # R 4.2.2: quantile(x, c(0.025, 0.975)) and c(0.05, 0.95)
    np.testing.assert_allclose(percentile_interval(x, 0.95), [0.675, 9.4875], rtol=1e-15)
    np.testing.assert_allclose(percentile_interval(x, 0.90), [0.85, 9.075], rtol=1e-15)
    ci = boot.confint()
    assert list(ci.index) == boot.default_parm()
    for p in ci.index:
        v = boot.replicates[p].to_numpy()
        v = v[np.isfinite(v)]
        np.testing.assert_allclose(ci.loc[p, ["lower", "upper"]].to_numpy(float),
                                   np.quantile(v, [0.025, 0.975]), rtol=1e-15)
        assert ci.loc[p, "n"] == v.size
    sh = boot.confint(level=0.9, method="shortest", parm=["Days", "theta:Subject.Days"])
    for p in sh.index:
        np.testing.assert_allclose(sh.loc[p, ["lower", "upper"]].to_numpy(float),
                                   shortest_interval(boot.replicates[p], 0.9))
    for bad, match in (({"method": "bca"}, "method"), ({"level": 1.5}, "level"),
                       ({"parm": ["nope"]}, "unknown parameter")):
        with pytest.raises(DataError, match=match):
            boot.confint(**bad)


def test_bootstrap_distribution_matches_lme4_bootmer(boot):
    """1,000 jaxlmm replicates vs 2,000 lme4 bootMer replicates (R's RNG: different draws):
    bootstrap SDs within 5 Monte Carlo SEs of log(SD) (~ sqrt(1/(2 n1) + 1/(2 n2)) = 2.7 %),
    means within 5 SEs, and the singular-fit fraction within 5 binomial SEs."""
    fx = json.loads(BOOT_FIXTURE.read_text())
    n1, n2 = len(boot.replicates), fx["n_ok"]
    rep = boot.replicates.rename(columns={"sigma": ".sigma"})
    se_log = math.sqrt(1 / (2 * (n1 - 1)) + 1 / (2 * (n2 - 1)))
    for p in (".sig01", ".sig03", ".sigma", "(Intercept)", "Days"):
        ref = fx["summaries"][p]
        sd = rep[p].std(ddof=1)
        assert abs(math.log(sd / ref["sd"])) < 5 * se_log, (p, sd, ref["sd"])
        se_mean = math.sqrt(sd ** 2 / n1 + ref["sd"] ** 2 / n2)
        assert abs(rep[p].mean() - ref["mean"]) < 5 * se_mean, (p, rep[p].mean(), ref["mean"])
    p1, p2 = boot.n_singular / n1, fx["n_singular"] / n2
    pp = (boot.n_singular + fx["n_singular"]) / (n1 + n2)
    assert abs(p1 - p2) < 5 * math.sqrt(pp * (1 - pp) * (1 / n1 + 1 / n2))
    assert boot.n_converged == n1  # every jaxlmm refit converged


def test_bootstrap_bad_input(sleep_model):
    for kw, match in (({"n": 0}, "positive integer"), ({"n": 3, "batch_size": 0}, "batch_size"),
                      ({"n": 3, "theta": [1.0]}, "theta must have shape")):
        with pytest.raises(DataError, match=match):
            bootstrap(sleep_model, **kw)


def test_crossed_cpu_warning():
    """Crossed factors on a multi-core CPU: a warning names the jaxlib 0.10 deadlock risk
    and the one-core workaround. (A stand-in model with lme4's estimates: bootstrap stops
    at input checking, after the warning, so nothing is compiled or run.)"""
    import types

    import pandas as pd

    from jaxlmm.bootstrap import _cores

    fx = load_fixture("penicillin_reml")
    d = jaxlmm.design(fx["formula"], fixture_data(fx))
    assert d.struct.rest
    if jax.default_backend() != "cpu" or _cores() < 2:
        pytest.skip("warning applies to multi-core CPU runs only")
    stub = types.SimpleNamespace(design=d, hessian="auto", reml=True,
                                 fixef=pd.Series(fx["fixef"]), theta=np.asarray(fx["theta"]),
                                 sigma=fx["sigma"], theta_names=fx["theta_names"])
    with pytest.warns(RuntimeWarning, match="one core"):
        with pytest.raises(DataError, match="theta must have shape"):
            bootstrap(stub, 2, theta=[1.0], vectorize="vmap")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (lax.map on the CPU) does not warn
        with pytest.raises(DataError, match="theta must have shape"):
            bootstrap(stub, 2, theta=[1.0])


def test_crossed_bootstrap_runs_sequentially_on_cpu():
    """Crossed model on a multi-core CPU: the default runs the refits with lax.map inside
    one compiled program (no batched LAPACK, no deadlock); replicates equal separate fits."""
    from jaxlmm.bootstrap import _cores

    fx = load_fixture("penicillin_reml")
    data = fixture_data(fx)
    m = jaxlmm.fit(fx["formula"], data)
    b = bootstrap(m, 6, seed=3, batch_size=3)
    if jax.default_backend() == "cpu" and _cores() > 1:
        assert b.timings["vectorize"] == "map"
    Y = simulate(m, 6, seed=3)
    for i in (0, 5):
        f = jaxlmm.fit(fx["formula"], data.assign(diameter=Y[i]))
        r = b.replicates.iloc[i]
        assert r["objective"] == pytest.approx(f.objective, abs=1e-8)
        assert r["sigma"] == pytest.approx(f.sigma, rel=1e-6)


def test_vmap_and_map_agree(sleep_model):
    """The same replicates batched by jax.vmap and run one after another by lax.map (the CPU
    default): the same responses, fits equal to the optimizer's tolerance."""
    bv = bootstrap(sleep_model, 12, seed=5, batch_size=6, vectorize="vmap", warn=False)
    bm = bootstrap(sleep_model, 12, seed=5, batch_size=6, vectorize="map", warn=False)
    assert bv.timings["vectorize"] == "vmap" and bm.timings["vectorize"] == "map"
    assert_same_fits(bv, bm)
    with pytest.raises(DataError, match="vectorize"):
        bootstrap(sleep_model, 2, vectorize="pmap")
