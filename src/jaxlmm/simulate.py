"""Responses simulated from a fitted model (lme4's ``simulate(m, nsim, seed, use.u=)``).

For factor k (elimination order) with template T_k built from theta and per-row model
matrix Z_k, one draw is

    y* = X beta + offset + sum_k rowsum(Z_k * b*_k[codes_k]) + sigma z / sqrt(w),

with z ~ N(0, I_n), w the prior weights, and either b*_k = sigma u_k T_k', u_k ~ N(0, I)
(G_k, q_k) -- so Var(b*_k per level) = sigma^2 T_k T_k' -- or, conditional on the fitted
random effects (``use_ranef=True``), b*_k = the conditional modes. Z is never formed: Z b is
each row's model matrix times its level's b, gathered by the level codes.

``draw`` is the pure kernel (jit, vmap, grad in beta/theta/sigma). Replicate i of a
collection always uses the key ``fold_in(key, i)``, so it does not depend on how the
collection is batched (``draw_many``, bootstrap.py).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .errors import DataError


def template(theta, entries, q: int):
    """The lower-triangular q x q template of one factor from theta.

    ``entries``: the factor's static ((theta_index, row, col), ...) (layout.Structure)."""
    T = jnp.zeros((q, q), theta.dtype)
    for i, r, c in entries:
        T = T.at[r, c].set(theta[i])
    return T


def draw(key, design, beta, theta, sigma, b=None):
    """One simulated response (n,) from the model (module docstring); pure and jittable.

    ``beta`` (p,), ``theta`` (lme4's order), ``sigma`` (scalar): the parameters.
    ``b``: None to draw the random effects, or a tuple (one (G_k, q_k) array per factor in
    elimination order, as ``Solution.b``) to condition on them.
    """
    st = design.struct
    beta = jnp.asarray(beta)
    dtype = beta.dtype if jnp.issubdtype(beta.dtype, jnp.floating) else jnp.float64
    beta = beta.astype(dtype)
    theta = jnp.asarray(theta, dtype)
    sigma = jnp.asarray(sigma, dtype)
    K = len(st.factors)
    keys = jax.random.split(key, K + 1)
    y = jnp.asarray(design.X, dtype) @ beta
    if design.offset is not None:
        y = y + jnp.asarray(design.offset, dtype)
    for k, ((G, q), entries) in enumerate(zip(st.factors, st.templates)):
        if b is None:
            u = jax.random.normal(keys[k], (G, q), dtype)
            bk = sigma * u @ template(theta, entries, q).T
        else:
            bk = jnp.asarray(b[k], dtype)
        y = y + jnp.sum(jnp.asarray(design.Z[k], dtype) * bk[design.codes[k]], axis=1)
    eps = jax.random.normal(keys[K], y.shape, dtype)
    if design.weights is not None:
        eps = eps / jnp.sqrt(jnp.asarray(design.weights, dtype))
    return y + sigma * eps


@partial(jax.jit, static_argnames=("size",))
def draw_many(key, design, beta, theta, sigma, b=None, start=0, *, size: int):
    """Replicates start, ..., start + size - 1: a (size, n) array whose row i is
    ``draw(fold_in(key, start + i), ...)`` (vmapped)."""
    idx = start + jnp.arange(size)
    return jax.vmap(lambda i: draw(jax.random.fold_in(key, i), design, beta, theta, sigma,
                                   b))(idx)


def as_key(seed):
    """A JAX PRNG key from an int seed (or a key, returned as is)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key(int(seed))
    if isinstance(seed, jax.Array) and (jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
                                        or seed.shape == (2,) and seed.dtype == jnp.uint32):
        return seed
    raise DataError(f"seed must be an int or a JAX PRNG key, got {seed!r}")


def parameters(m, beta=None, theta=None, sigma=None):
    """(beta, theta, sigma) of model ``m``, each replaceable; checked shapes (host side)."""
    d = m.design
    out = []
    for name, val, default, shape in (("beta", beta, m.fixef.values, (d.p,)),
                                      ("theta", theta, m.theta, (d.struct.n_theta,)),
                                      ("sigma", sigma, m.sigma, ())):
        v = np.asarray(default if val is None else val, dtype=np.float64)
        if v.shape != shape:
            hint = {"beta": f"fixed effects {list(m.fixef.index)}",
                    "theta": f"lme4's theta order: {', '.join(m.theta_names)}",
                    "sigma": "a scalar"}[name]
            raise DataError(f"{name} must have shape {shape} ({hint}), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise DataError(f"{name} has non-finite values: {v.tolist()}")
        out.append(v)
    if out[2] < 0:
        raise DataError(f"sigma must be >= 0, got {float(out[2])}")
    lo = np.asarray(d.struct.lower, float)
    if np.any(out[1] < lo):
        bad = [nm for nm, t, l in zip(m.theta_names, out[1], lo) if t < l]
        raise DataError(f"theta elements {bad} are below their lower bound 0 (template "
                        "diagonals must be >= 0)")
    return tuple(out)


def simulate(m, n: int = 1, seed=0, use_ranef: bool = False, *, beta=None, theta=None,
             sigma=None, as_frame: bool = False):
    """``n`` responses simulated from the fitted model ``m`` (lme4's ``simulate(m, nsim, seed,
    use.u)``; MixedModels.jl's ``simulate!``), as an (n, nobs) numpy array.

    y* = X beta + offset + Z b* + eps, eps ~ N(0, sigma^2 / w) (w: prior weights), with
    b* ~ N(0, sigma^2 Lambda Lambda') (``use_ranef=False``) or b* = the conditional modes
    (``use_ranef=True``, lme4's ``use.u = TRUE``). Rows are the model's rows (``m.frame``:
    rows dropped for missing values are not simulated). ``beta``, ``theta`` (lme4's order),
    ``sigma`` replace the fitted values. Deterministic for a seed (an int or a JAX key);
    row i is the response that replicate i of ``bootstrap(m, ..., seed=seed)`` refits.
    ``as_frame=True`` returns lme4's layout instead: a DataFrame with one column per
    simulation (``sim_1``, ...) and one row per observation.

    Unlike lme4 1.1-31, whose ``simulate`` ignores prior weights for linear mixed models
    (eps ~ N(0, sigma^2)), the residuals are drawn with variance sigma^2 / w, the model's.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise DataError(f"n must be a positive integer (number of simulations), got {n!r}")
    key = as_key(seed)
    beta, theta, sigma = parameters(m, beta, theta, sigma)
    b = ranef_modes(m) if use_ranef else None
    Y = np.asarray(draw_many(key, m.design, beta, theta, sigma, b, 0, size=int(n)))
    if not as_frame:
        return Y
    import pandas as pd

    return pd.DataFrame(Y.T, columns=[f"sim_{i + 1}" for i in range(int(n))])


def ranef_modes(m):
    """The fitted conditional modes b per factor (elimination order), as ``draw`` takes them."""
    return tuple(np.asarray(x, np.float64) for x in m.result.solution.b)
