"""The blocked-Cholesky kernel against a dense GLS computation on small random designs.

Covers every structure the elimination handles: one factor, crossed factors with vector
terms (dense Schur block), nested chains (block-diagonal Schur updates), a nested chain with
crossed factors, amalgamated uncorrelated terms, prior weights; at random theta (no
optimizer). Also the solve: beta, conditional modes and conditional covariances.
"""

from types import SimpleNamespace as NS

import dense_gls
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlmm
from jaxlmm import pls

objective_jit = jaxlmm.objective
_solve = jaxlmm.solve
_factorize = jax.jit(pls.factorize)

RNG = np.random.default_rng(20261123)
N = 240


def _term(group, Z, codes, G):
    return NS(group=group, columns=tuple(f"c{i}" for i in range(Z.shape[1])), Z=Z,
              codes=codes.astype(np.int32), levels=tuple(range(G)))


def _designs():
    rng = np.random.default_rng(7)
    x = rng.normal(size=N)
    one = np.ones((N, 1))
    Z2 = np.column_stack([np.ones(N), x])
    Z3 = np.column_stack([np.ones(N), x, rng.normal(size=N)])
    g1, g2, g3 = rng.integers(0, 30, N), rng.integers(0, 12, N), rng.integers(0, 5, N)
    cls = rng.integers(0, 40, N)
    school = cls // 4
    region = school // 5
    X = np.column_stack([np.ones(N), x, rng.normal(size=N)])
    y = 100 + 3 * x + rng.normal(size=N) * 3 + np.repeat(rng.normal(size=N // 10), 10)
    w = rng.uniform(0.5, 2.0, N)
    return {
        "single_scalar": ([_term("a", one, g1, 30)], X, y, None),
        "single_vector3": ([_term("a", Z3, g1, 30)], X, y, None),
        "crossed_vector": ([_term("a", Z2, g1, 30), _term("b", Z2, g2, 12)], X, y, None),
        "crossed_three": ([_term("a", one, g1, 30), _term("b", Z2, g2, 12),
                           _term("c", one, g3, 5)], X, y, None),
        "crossed_scalar": ([_term("a", Z2, g1, 30), _term("b", one, g2, 12),
                            _term("c", one, g3, 5)], X, y, w),
        "nested_scalar_crossed": ([_term("s", one, school, 10), _term("s:c", Z2, cls, 40),
                                   _term("i", one, g2, 12)], X, y, None),
        "nested_weighted": ([_term("s", one, school, 10), _term("s:c", one, cls, 40)], X, y, w),
        "nested_three": ([_term("r", one, region, 2), _term("s", Z2, school, 10),
                          _term("c", one, cls, 40)], X, y, None),
        "nested_plus_crossed": ([_term("s", one, school, 10), _term("s:c", Z2, cls, 40),
                                 _term("i", one, g2, 12), _term("i", x[:, None], g2, 12),
                                 _term("z", Z2, g3, 5)], X, y, None),
        "no_intercept": ([_term("a", Z2, g1, 30)], X[:, 1:], y, None),
    }


DESIGNS = _designs()


def _prepare(terms, X, y, w):
    """(factors in elimination order, theta entries, structure, statistics) of a design."""
    d = jaxlmm.design_from_arrays(y, X, [(t.group, t.codes, t.Z) for t in terms], weights=w)
    return d.info.factors, d.info.entries, d.struct, jaxlmm.suffstats(d)


def _random_theta(struct):
    th = RNG.uniform(0.2, 1.5, struct.n_theta)
    offdiag = ~np.isfinite(np.asarray(struct.lower))
    th[offdiag] *= RNG.choice([-1.0, 1.0], offdiag.sum())
    return th


def _term_entries(facs, entries):
    out = []
    for e in entries:
        f = facs[e.factor]
        start = f.term_slices[f.terms.index(e.term)][0]
        out.append((e.term, e.row - start, e.col - start))
    return out


@pytest.mark.parametrize("name", sorted(DESIGNS))
@pytest.mark.parametrize("reml", [True, False])
def test_criterion_equals_dense_gls(name, reml):
    terms, X, y, w = DESIGNS[name]
    facs, entries, struct, stats = _prepare(terms, X, y, w)
    for _ in range(3):
        th = _random_theta(struct)
        got = float(objective_jit(jnp.asarray(th), stats, reml))
        ZL = dense_gls.dense_z_lambda(terms, _term_entries(facs, entries), th)
        ref = dense_gls.criterion(ZL, X, y, reml, w)
        assert got == pytest.approx(ref, rel=1e-11, abs=1e-9)


def test_nesting_detected():
    _, _, struct, _ = _prepare(*DESIGNS["nested_plus_crossed"])
    assert len(struct.chain) == 2 and len(struct.rest) == 2
    _, _, struct, _ = _prepare(*DESIGNS["nested_three"])
    assert len(struct.chain) == 3 and len(struct.rest) == 0
    _, _, struct, _ = _prepare(*DESIGNS["crossed_vector"])
    assert len(struct.chain) == 1 and len(struct.rest) == 1


@pytest.mark.parametrize("name", sorted(DESIGNS))
def test_solve_equals_dense(name):
    terms, X, y, w = DESIGNS[name]
    facs, entries, struct, stats = _prepare(terms, X, y, w)
    th = jnp.asarray(_random_theta(struct))
    sol = _solve(th, stats, reml=True)
    T = _factorize(th, stats).T
    n = len(y)
    wv = np.ones(n) if w is None else w
    blocks = []
    for pos, f in enumerate(facs):
        Zt = np.zeros((n, f.nlevels * f.q))
        for a in range(f.q):
            Zt[np.arange(n), f.codes * f.q + a] = f.Z[:, a]
        blocks.append(Zt @ np.kron(np.eye(f.nlevels), np.asarray(T[pos])))
    ZL = np.hstack(blocks)
    A = np.block([[ZL.T * wv @ ZL + np.eye(ZL.shape[1]), ZL.T * wv @ X],
                  [X.T * wv @ ZL, X.T * wv @ X]])
    full = np.linalg.solve(A, np.concatenate([ZL.T * wv @ y, X.T * wv @ y]))
    qt = ZL.shape[1]
    np.testing.assert_allclose(np.asarray(sol.beta), full[qt:], rtol=1e-9, atol=1e-9)
    u = np.concatenate([np.asarray(v).ravel() for v in sol.u])
    np.testing.assert_allclose(u, full[:qt], rtol=1e-9, atol=1e-9)
    # vcov / sigma^2 = the X block of A^{-1}
    np.testing.assert_allclose(np.asarray(sol.xtx_inv), np.linalg.inv(A)[qt:, qt:],
                               rtol=1e-8, atol=1e-12)
    Sig = np.linalg.inv(ZL.T * wv @ ZL + np.eye(qt))
    off = 0
    for pos, f in enumerate(facs):
        Tk = np.asarray(T[pos])
        for j in range(f.nlevels):
            sl = slice(off + j * f.q, off + (j + 1) * f.q)
            np.testing.assert_allclose(np.asarray(sol.cond_var[pos][j]), Tk @ Sig[sl, sl] @ Tk.T,
                                       rtol=1e-9, atol=1e-12)
        off += f.nlevels * f.q


@pytest.mark.parametrize("name", ["crossed_vector", "crossed_three", "nested_plus_crossed"])
def test_large_dense_path_matches(name, monkeypatch):
    """The custom-JVP route for large dense blocks (forced here on small designs) gives the
    same criterion, gradient and Hessian as differentiating through the Cholesky."""
    from jaxlmm import deviance

    terms, X, y, w = DESIGNS[name]
    _, _, struct, stats = _prepare(terms, X, y, w)
    th = jnp.asarray(_random_theta(struct))
    def derivatives(t, s):
        f = lambda u: deviance.objective(u, s, True)  # noqa: E731
        return f(t), jax.grad(f)(t), jax.jacfwd(jax.jacfwd(f))(t)

    ref = jax.jit(derivatives)(th, stats)
    monkeypatch.setattr(deviance, "LARGE_DENSE", -1)
    got = jax.jit(lambda t, s: derivatives(t, s))(th, stats)  # a new trace, custom route
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-12)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(ref[1]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(got[2]), np.asarray(ref[2]), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name,reml,zero", [
    ("crossed_scalar", True, False), ("crossed_scalar", False, False),
    ("crossed_scalar", True, True), ("crossed_vector", True, False),
    ("crossed_three", False, False), ("nested_plus_crossed", True, False),
    ("nested_scalar_crossed", True, False), ("nested_scalar_crossed", False, True)])
def test_large_dense_derivatives_match_autodiff(name, reml, zero, monkeypatch):
    """The optimizer's derivatives for large dense blocks (Gamma contraction, per-level
    tensors and closed-form tangents for scalar crossed factors, curvature from G_r M_i
    products otherwise; deviance.py, crossed.py) equal plain autodiff through the Cholesky,
    forced here on small designs. ``zero``: a crossed theta at its bound, where the closed
    form divides by zero and the generic trace takes over."""
    from jaxlmm import crossed, deviance, linearized

    terms, X, y, w = DESIGNS[name]
    _, _, struct, stats = _prepare(terms, X, y, w)
    # scalar crossed factors take the per-level tensor route, vector ones the plain one
    scalar = name in ("crossed_scalar", "nested_scalar_crossed")
    assert linearized.first_factor_reduced(struct) == scalar
    assert crossed.applies(struct) == scalar
    k = struct.n_theta
    th = _random_theta(struct)
    if zero:
        th[crossed.split(struct)[1][-1]] = 0.0
    th = jnp.asarray(th)
    ref = jax.jit(lambda t, s: deviance.derivatives(s.struct, k).value_grad_hessian(t, s, reml)
                  )(th, stats)
    monkeypatch.setattr(deviance, "LARGE_DENSE", -1)
    d = deviance.derivatives(struct, k)
    assert d.value_grad is deviance._dense_value_grad
    value = jax.jit(lambda t, s: d.value(t, s, reml))(th, stats)
    assert float(value) == pytest.approx(float(ref[0]), rel=1e-12)
    vg = jax.jit(lambda t, s: d.value_grad(t, s, reml))(th, stats)
    vgh = jax.jit(lambda t, s: d.value_grad_hessian(t, s, reml))(th, stats)
    for got in (vg, vgh):
        assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-12)
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(ref[1]), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(np.asarray(vgh[2]), np.asarray(ref[2]), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("n", [7, 300, 601])
def test_recursive_inverse_pieces(n):
    """dense.tri_inv / dense.gram (recursive 2 x 2 blocking above dense.BASE) and the
    inverse pieces G_r, W against numpy."""
    from jaxlmm import dense

    rng = np.random.default_rng(n)
    A = rng.normal(size=(n, n))
    M = A @ A.T / n + np.eye(n)
    L = np.linalg.cholesky(M)
    Li = np.asarray(jax.jit(dense.tri_inv)(jnp.asarray(L)))
    np.testing.assert_allclose(Li, np.linalg.inv(L), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.jit(dense.gram)(jnp.asarray(Li))),
                               np.linalg.inv(M), rtol=1e-10, atol=1e-12)
    mr = n - 3
    G, W = jax.jit(dense.inverse_pieces, static_argnums=1)(jnp.asarray(L), mr)
    np.testing.assert_allclose(np.asarray(G), np.linalg.inv(M[:mr, :mr]), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(W), np.linalg.inv(L)[mr:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bound", [10**6, 2**62])
def test_target_order_both_branches(bound):
    """pattern._target_order: the packed int64 sort (small bounds) and the argsort fallback
    (targets too wide to pack with their positions) both sort the targets, with equal
    targets adjacent and the permutation consistent with them."""
    from jaxlmm.pattern import _target_order

    t = RNG.integers(0, min(bound, 5000), 20000).astype(np.int64)
    srt, order = _target_order(t, bound)
    np.testing.assert_array_equal(srt, np.sort(t))
    np.testing.assert_array_equal(t[order], srt)
    assert np.array_equal(np.sort(order), np.arange(t.size))
