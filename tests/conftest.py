import json
import pathlib
import sys

import pandas as pd
import pytest

import jaxlmm  # noqa: F401  (switches on float64 before any test builds arrays)

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
FIXTURES = HERE / "fixtures" / "lme4"
ROOT = HERE.parent


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def fixture_data(fx: dict) -> pd.DataFrame:
    ds = fx["dataset"]
    if ds.endswith(".csv"):
        return pd.read_csv(ROOT / ds)
    return jaxlmm.datasets.load(ds)


@pytest.fixture(scope="session")
def sleepstudy():
    return jaxlmm.datasets.load("sleepstudy")


@pytest.fixture(scope="session")
def sleepstudy_fit(sleepstudy):
    """lme4's sleepstudy model, ``Reaction ~ Days + (Days | Subject)``, REML."""
    return jaxlmm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's in-memory compiled programs after each test module: one process compiling
    several hundred programs crashed inside XLA's compiler late in the suite (jaxlib 0.10.2);
    later modules recompile from the persistent cache."""
    yield
    import jax

    jax.clear_caches()
