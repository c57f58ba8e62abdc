"""Fits from Parquet/Arrow data read in batches (arrowio.py): the same model as the whole
table fitted in memory, for one factor, crossed, nested, and a design with categorical
variables, a rank-deficient X, missing values, weights and an offset; the statistics of
batches add up; pass 1 reads only the level columns and no pass holds the numeric columns;
clear errors."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import arrowio
from jaxlmm.errors import DataError, FormulaError, RowsNotKeptError
from jaxlmm.stats import chunk_stats

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ds = pytest.importorskip("pyarrow.dataset")


def _write(df, path, row_group_size, files=1):
    """``df`` as Parquet: one file, or a directory of ``files`` files, in row groups."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if files == 1:
        pq.write_table(table, path, row_group_size=row_group_size)
        return path
    path.mkdir()
    cuts = np.linspace(0, len(df), files + 1).astype(int)
    for i in range(files):
        pq.write_table(table.slice(cuts[i], cuts[i + 1] - cuts[i]), path / f"part{i}.parquet",
                       row_group_size=row_group_size)
    return path


def _same_fit(m, r):
    """m (read in batches) and r (in memory) are the same fit: the same statistics up to an
    exact reparametrization (criterion, beta and sigma at common theta to 1e-10), the same
    optimum (criterion to 1e-10; m's beta and sigma are r's at m's theta to 1e-9), and the
    same estimates to the optimizer's tolerance (theta 1e-6: the stopping point in theta is
    determined only to about the square root of the criterion's rounding)."""
    assert m.nobs == r.nobs
    assert list(m.fixef.index) == list(r.fixef.index)
    assert m.frame.messages == r.frame.messages
    for th in (r.theta, 0.5 * r.theta + 0.1 * (np.asarray(r.lower) == 0)):
        for reml in (True, False):
            assert float(jaxlmm.objective(th, m.stats, reml)) == pytest.approx(
                float(jaxlmm.objective(th, r.stats, reml)), rel=1e-10)
        a, b = jaxlmm.solve(th, m.stats), jaxlmm.solve(th, r.stats)
        np.testing.assert_allclose(np.asarray(a.beta), np.asarray(b.beta), rtol=1e-9)
        assert float(a.sigma) == pytest.approx(float(b.sigma), rel=1e-10)
    assert m.objective == pytest.approx(r.objective, rel=1e-10)
    at_m = jaxlmm.solve(m.theta, r.stats, r.reml)
    np.testing.assert_allclose(m.fixef.values, np.asarray(at_m.beta), rtol=1e-9)
    assert m.sigma == pytest.approx(float(at_m.sigma), rel=1e-9)
    np.testing.assert_allclose(m.theta, r.theta, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m.fixef.values, r.fixef.values, rtol=1e-6)
    assert m.sigma == pytest.approx(r.sigma, rel=1e-6)


def _batches(path, formula, batch_rows, **kw):
    """The row counts of the batches pass 2 reads."""
    s = arrowio.ArrowStream(formula, path, batch_rows=batch_rows, **kw)
    return [t.num_rows for t in s._tables(s.numeric_cols)]


def test_single_factor(tmp_path, sleepstudy):
    f = "Reaction ~ Days + (Days | Subject)"
    path = _write(sleepstudy, tmp_path / "ss", 40, files=2)
    assert _batches(path, f, 50) == [50, 50, 50, 30]  # across row groups and files
    m = jaxlmm.fit(f, path, batch_rows=50)
    _same_fit(m, jaxlmm.fit(f, pd.read_parquet(path)))
    assert m.data_name == "ss"


def test_crossed(tmp_path):
    f = "diameter ~ 1 + (1 | plate) + (1 | sample)"
    path = _write(jaxlmm.datasets.load("Penicillin"), tmp_path / "pen.parquet", 25)
    assert _batches(path, f, 40) == [40, 40, 40, 24]
    m = jaxlmm.fit(f, path, batch_rows=40)
    assert m.design.struct.rest  # crossed: a dense block
    _same_fit(m, jaxlmm.fit(f, pd.read_parquet(path)))


def test_nested(tmp_path):
    f = "strength ~ 1 + (1 | batch/cask)"
    path = _write(jaxlmm.datasets.load("Pastes"), tmp_path / "pastes.parquet", 7)
    assert _batches(path, f, 25) == [25, 25, 10]
    m = jaxlmm.fit(f, path, batch_rows=25, reml=False)
    assert m.design.info.nchain == 2  # cask:batch nested in batch
    _same_fit(m, jaxlmm.fit(f, pd.read_parquet(path), reml=False))


def _mixed(sleepstudy):
    """sleepstudy with a categorical, a string variable with missing values, a column that
    makes X rank deficient, missing responses, weights and an offset."""
    rng = np.random.default_rng(7)
    d = sleepstudy.copy()
    d["grp"] = pd.Categorical(rng.choice(["lo", "mid", "hi"], len(d)),
                              categories=["lo", "mid", "hi"])
    d["tag"] = rng.choice(["b", "a", "c"], len(d)).astype(object)
    d["Days2"] = 2.0 * d["Days"]
    d["w"] = rng.uniform(0.5, 2.0, len(d))
    d["o"] = rng.normal(size=len(d))
    d.loc[[3, 50, 77, 178], "Reaction"] = np.nan
    d.loc[[10, 120], "tag"] = None
    d.loc[[99], "Days"] = np.nan
    return d


def test_categorical_rank_deficient_missing_weights(tmp_path, sleepstudy):
    f = "Reaction ~ Days + Days2 + grp + tag + (Days | Subject)"
    path = _write(_mixed(sleepstudy), tmp_path / "mixed.parquet", 33)
    m = jaxlmm.fit(f, path, batch_rows=45, weights="w", offset="o")
    r = jaxlmm.fit(f, pd.read_parquet(path), weights="w", offset="o")
    _same_fit(m, r)
    assert m.frame.messages == (
        "7 rows with missing values dropped",
        "fixed-effect model matrix is rank deficient so dropping 1 column / coefficient: Days2")
    assert list(m.fixef.index) == ["(Intercept)", "Days", "grpmid", "grphi", "tagb", "tagc"]
    assert "Weights: w" in m.summary() and " Offset: o" in m.summary()


def test_missing_values_that_remove_a_level(tmp_path, sleepstudy):
    """Subject 308's responses are all missing: seen only in pass 2, which then runs again
    without that level (as lme4 drops it)."""
    d = sleepstudy.copy()
    d.loc[d["Subject"] == "308", "Reaction"] = np.nan
    f = "Reaction ~ Days + (Days | Subject)"
    path = _write(d, tmp_path / "na.parquet", 40)
    m = jaxlmm.fit(f, path, batch_rows=50)
    r = jaxlmm.fit(f, pd.read_parquet(path))
    _same_fit(m, r)
    assert m.design.info.factors[0].nlevels == 17
    pd.testing.assert_frame_equal(m.ranef(), r.ranef(), rtol=1e-6)


def test_statistics_of_batches_add_up(tmp_path, sleepstudy):
    f = "Reaction ~ Days + (Days | Subject)"
    path = _write(sleepstudy, tmp_path / "ss.parquet", 40)
    parts = list(arrowio.ArrowStream(f, path, batch_rows=50).batches())
    assert [float(p.n) for p in parts] == [50, 50, 50, 30]
    scale = parts[0].scale
    union = list(arrowio.ArrowStream(f, path, batch_rows=100).batches(scale))
    flat = lambda s: [np.asarray(a) for a in (*s.D, *s.E, s.M, s.n, s.ldw)]  # noqa: E731
    for a, b in zip(flat(parts[0] + parts[1]), flat(union[0])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
    # all batches: the blocks of the in-memory design with that Scale
    total = parts[0] + parts[1] + parts[2] + parts[3]
    whole = chunk_stats(jaxlmm.design(f, sleepstudy), slice(0, len(sleepstudy)), scale)
    for a, b in zip(flat(total), flat(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)


def test_sources(tmp_path, sleepstudy):
    """A pyarrow Table, a Dataset and a list of files give the fit of the path."""
    f = "Reaction ~ Days + (1 | Subject)"
    path = _write(sleepstudy, tmp_path / "dir", 60, files=3)
    ref = jaxlmm.fit(f, path, batch_rows=70)
    table = pq.read_table(path)
    for src in (table, ds.dataset(path), sorted(path.iterdir())):
        m = jaxlmm.fit(f, src, batch_rows=70)
        assert m.objective == pytest.approx(ref.objective, rel=1e-12)
    assert jaxlmm.fit(f, table).data_name == "pyarrow Table"  # default batch size


def test_per_row_results_are_not_kept(tmp_path, sleepstudy):
    f = "Reaction ~ Days + (Days | Subject)"
    path = _write(sleepstudy, tmp_path / "ss.parquet", 40)
    m = jaxlmm.fit(f, path, batch_rows=50)
    r = jaxlmm.fit(f, sleepstudy)
    for per_row in (m.fitted, m.residuals, m.predict, lambda: m.simulate(1)):
        with pytest.raises(RowsNotKeptError, match="read in batches from ss.parquet"):
            per_row()
    assert "Scaled residuals: not kept" in m.summary()
    new = sleepstudy.iloc[:7]
    np.testing.assert_allclose(m.predict(new), r.predict(new), rtol=1e-8)
    pd.testing.assert_frame_equal(m.anova(), r.anova(), rtol=1e-6)
    assert m.design.n == 180 and m.design.X.shape == (180, 2)


def test_pass_one_reads_only_level_columns(tmp_path, sleepstudy, monkeypatch):
    """Pass 1 asks for the grouping and categorical columns only, pass 2 for the numeric
    ones only, and no scanned batch is longer than batch_rows."""
    scans = []
    scan = arrowio.ArrowStream._scan

    def spy(self, columns):
        rows = []
        scans.append((list(columns), rows))
        for b in scan(self, columns):
            rows.append(b.num_rows)
            yield b

    monkeypatch.setattr(arrowio.ArrowStream, "_scan", spy)
    path = _write(_mixed(sleepstudy), tmp_path / "mixed.parquet", 33)
    jaxlmm.fit("Reaction ~ Days + grp + tag + (Days | Subject)", path, batch_rows=45,
               weights="w")
    assert [sorted(c) for c, _ in scans] == [["Subject", "grp", "tag"],
                                            ["Days", "Reaction", "w"]]
    assert all(0 < k <= 45 for _, rows in scans for k in rows)


_POOLS = []  # proxy pools live as long as the process: buffers they handed out may outlive a test


def test_peak_memory_is_a_batch_not_the_data(tmp_path):
    """Arrow's peak allocation while fitting is a fraction of the numeric columns' size
    (reading them whole allocates all of it)."""
    rng = np.random.default_rng(0)
    n = 100_000
    df = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(4)})
    df["g"] = rng.integers(0, 200, n)
    df["y"] = df["x0"] + rng.normal(size=200)[df["g"]] + rng.normal(size=n)
    path = _write(df, tmp_path / "big.parquet", 5_000)
    numeric = 5 * 8 * n
    f = "y ~ x0 + x1 + x2 + x3 + (1 | g)"

    def peak(fn):
        old = pa.default_memory_pool()
        proxy = pa.proxy_memory_pool(old)
        _POOLS.append(proxy)
        pa.set_memory_pool(proxy)
        try:
            fn()
        finally:
            pa.set_memory_pool(old)
        return proxy.max_memory()

    assert peak(lambda: pq.read_table(path, columns=["y", "x0", "x1", "x2", "x3"])) >= numeric
    assert peak(lambda: jaxlmm.fit(f, path, batch_rows=5_000)) < 0.5 * numeric


def test_errors(tmp_path, sleepstudy):
    path = _write(sleepstudy, tmp_path / "ss.parquet", 90)
    with pytest.raises(DataError, match="column 'Dayz' .* not found in data; did you mean 'Days'"):
        jaxlmm.fit("Reaction ~ Dayz + (1 | Subject)", path, batch_rows=50)
    with pytest.raises(FormulaError, match="no random-effects terms"):
        jaxlmm.fit("Reaction ~ Days", path, batch_rows=50)
    with pytest.raises(TypeError, match="devices must be a list of JAX devices"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", path, devices="cpu")
    with pytest.raises(DataError, match="column 'Subjct' .*grouping factor"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subjct)", path, batch_rows=50)
    with pytest.raises(DataError, match="column 'ww' .*weights="):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", path, weights="ww")
    with pytest.raises(DataError, match="weights= must be a column name"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", path, weights=np.ones(180))
    with pytest.raises(FormulaError, match="center.Days. learns from the data"):
        jaxlmm.fit("Reaction ~ center(Days) + (1 | Subject)", path, batch_rows=50)
    with pytest.raises(DataError, match="response 'Subject' must be numeric"):
        jaxlmm.fit("Subject ~ Days + (1 | Days)", path)
    with pytest.raises(DataError, match="for a DataFrame use chunk_rows="):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", sleepstudy, batch_rows=50)
    with pytest.raises(DataError, match="use batch_rows="):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", path, chunk_rows=50)
    with pytest.raises(ValueError, match="batch_rows must be a positive"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", path, batch_rows=0)
    with pytest.raises(DataError, match="data file not found"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", str(tmp_path / "no.parquet"))
    sleepstudy.to_csv(tmp_path / "ss.csv", index=False)
    with pytest.raises(DataError, match=r"cannot read \.csv files in batches"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", tmp_path / "ss.csv")
    constant = sleepstudy.assign(Reaction=3.0)
    with pytest.raises(DataError, match="'Reaction' is constant"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", _write(constant, tmp_path / "c.parquet",
                                                             90), batch_rows=50)
    exact = sleepstudy.assign(Reaction=3.0 + 2.0 * sleepstudy["Days"])
    with pytest.raises(DataError, match="fitted exactly by the fixed effects"):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", _write(exact, tmp_path / "e.parquet", 90),
                   batch_rows=50)


def test_without_pyarrow(tmp_path, monkeypatch):
    for mod in ("pyarrow", "pyarrow.dataset"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    with pytest.raises(ImportError, match=r'pip install "jaxlmm\[parquet\]"'):
        jaxlmm.fit("Reaction ~ Days + (1 | Subject)", str(tmp_path / "ss.parquet"))


def test_jaxlmm_imports_without_pyarrow():
    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "import jaxlmm\n"
            "try:\n"
            "    jaxlmm.fit('y ~ 1 + (1 | g)', 'data.parquet')\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "jaxlmm[parquet]"' in out.stdout


def test_cli_batch_rows(tmp_path, sleepstudy, capsys):
    from jaxlmm.cli import main

    path = _write(sleepstudy, tmp_path / "ss.parquet", 40)
    f = "Reaction ~ Days + (Days | Subject)"
    assert main(["fit", f, "--data", str(path), "--batch-rows", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nobs"] == 180
    assert out["objective"] == pytest.approx(jaxlmm.fit(f, sleepstudy).objective, rel=1e-10)
    assert main(["fit", f, "--data", str(tmp_path / "no.parquet"), "--batch-rows", "50"]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_objective_is_jittable_on_streamed_stats(tmp_path, sleepstudy):
    """The statistics are an ordinary Stats pytree: the functional layer applies."""
    f = "Reaction ~ Days + (Days | Subject)"
    d, stats = arrowio.dataset_stats(f, _write(sleepstudy, tmp_path / "s.parquet", 40),
                                     batch_rows=64)
    res = jaxlmm.fit_stats(stats)
    ref = jaxlmm.fit(f, sleepstudy)
    assert float(res.objective) == pytest.approx(ref.objective, rel=1e-10)
    assert float(jaxlmm.objective(jnp.asarray(ref.theta), stats)) == pytest.approx(
        ref.objective, rel=1e-10)
    assert d.n == 180 and d.info.theta_names == ref.theta_names
