"""Bounded projected Newton over theta with exact autodiff gradient and Hessian (or BFGS).

The whole loop is one ``lax.while_loop`` (no host round trip per iteration), so a fit is one
compiled program that can be vmapped. Each iteration (Bertsekas' projected Newton):

* active set: theta_i at its lower bound with g_i > 0, or g_i = 0 and H_ii >= 0. A scalar
  variance at 0 is always a stationary point (theta enters squared), so a bound coordinate
  with zero gradient but negative curvature is freed and probed inward;
* step on the free set: d = -|H_F|^{-1} g_F using the eigenvalue-modified reduced Hessian
  (absolute eigenvalues, floored), which is a descent direction also away from convexity;
* backtracking (Armijo) along the projected path theta(a) = max(theta + a d, lower).

With ``exact_hessian=False`` the Hessian is replaced by a BFGS approximation (see
``minimize``). Convergence is certified on the projected gradient and the Newton decrement,
not on a flag. ``status`` codes are in STATUS.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

STATUS = {
    0: "converged",
    1: "maximum number of iterations reached; increase max_iter or check the model",
    2: "line search failed to decrease the criterion; the optimum may be poorly determined "
       "(try rescaling predictors or simplifying the random-effects structure)",
    3: "non-finite criterion at the starting value; check the data for extreme values",
}


class OptResult(NamedTuple):
    theta: jax.Array
    fun: jax.Array
    grad: jax.Array
    proj_grad: jax.Array  # max |projected gradient| at the end
    iterations: jax.Array
    evaluations: jax.Array  # criterion evaluations (value, or value+gradient+Hessian)
    status: jax.Array


class _State(NamedTuple):
    theta: jax.Array
    f: jax.Array
    g: jax.Array
    H: jax.Array
    it: jax.Array
    nfev: jax.Array
    status: jax.Array  # -1 while running
    dec: jax.Array  # last Newton decrement
    theta_prev: jax.Array  # for the BFGS pair (s, y)
    moved: jax.Array  # whether the last iteration moved theta
    probed: jax.Array  # bound coordinates already probed inward (quasi-Newton)
    nupd: jax.Array  # BFGS updates so far


def _proj_grad(theta, g, lower):
    at = theta <= lower
    return jnp.where(at, jnp.minimum(g, 0.0), g)


MAX_STEP = 0.5  # largest change of any theta in one quasi-Newton step
FORWARD_MAX = 12  # up to this many parameters, derivatives are forward-over-forward


def _value_grad(f, k):
    """theta -> (f, g): forward mode for few parameters, reverse mode otherwise."""
    if k > FORWARD_MAX:
        return jax.value_and_grad(f)

    def value_grad(t):
        g, v = jax.jacfwd(lambda s: (lambda fs: (fs, fs))(f(s)), has_aux=True)(t)
        return v, g

    return value_grad


def _value_grad_hessian(f, k):
    """theta -> (H, (f, g)) with exact derivatives.

    For few parameters forward-over-forward mode is both faster to run (7.7 ms against
    32 ms for reverse-then-forward on a 10k-group model, k = 3) and faster to compile;
    the reverse pass through the scatter/gather of the blocked factor is what costs.
    """
    vg = _value_grad(f, k)

    def grad_aux(t):
        v, g = vg(t)
        return g, (v, g)

    return jax.jacfwd(grad_aux, has_aux=True)


def _bfgs_update(B, sv, yv, first):
    """BFGS update of the Hessian approximation B with step sv and gradient change yv.

    Before the first update B is reset to (y'y / s'y) I (Shanno-Phua scaling). Pairs with
    too little curvature (s'y <= 1e-10 |s||y|) leave B unchanged, which keeps it PD.
    """
    sy = jnp.dot(sv, yv)
    ok = sy > 1e-10 * jnp.linalg.norm(sv) * jnp.linalg.norm(yv)
    k = B.shape[0]
    B = jnp.where(first & ok, jnp.eye(k, dtype=B.dtype) * jnp.dot(yv, yv) / sy, B)
    Bs = B @ sv
    Bn = B - jnp.outer(Bs, Bs) / jnp.dot(sv, Bs) + jnp.outer(yv, yv) / sy
    return jnp.where(ok, Bn, B)


def _fd_hessian(value_grad, theta, g, lower):
    """Starting Hessian for BFGS: forward differences of the exact gradient (k gradients).

    Steps go inward from a bound; the result is symmetrized and its eigenvalues floored so
    that BFGS starts from a positive definite matrix with the right scales. Starting BFGS
    from this instead of a scaled identity halved the iterations on InstEval.
    """
    k = theta.shape[0]
    h = 1e-4 * jnp.maximum(1.0, jnp.abs(theta))

    def column(i):
        e = jnp.zeros(k, theta.dtype).at[i].set(h[i])
        return (value_grad(theta + e)[1] - g) / h[i]

    H = jnp.stack([column(i) for i in range(k)], axis=1)
    H = 0.5 * (H + H.T)
    lam, V = jnp.linalg.eigh(H)
    lam = jnp.maximum(jnp.abs(lam), 1e-6 * jnp.maximum(1.0, jnp.max(jnp.abs(lam))))
    return (V * lam) @ V.T


def minimize(fun, theta0, lower, args=(), *, max_iter=200, gtol=1e-10, ftol=1e-12,
             exact_hessian=True):
    """Minimize ``fun(theta, *args)`` subject to ``theta >= lower``; jittable, vmappable.

    Each iteration evaluates value, gradient (and with ``exact_hessian`` the Hessian) once
    (one site in the compiled program, which keeps compile time down), tests convergence,
    then takes a projected (quasi-)Newton step with a backtracking line search on values.
    Without ``exact_hessian`` the Hessian is a BFGS approximation, for problems where exact
    second derivatives cost much more than gradients (large dense Schur blocks); there a
    variance stuck at 0 with zero gradient is probed inward once before it is accepted.
    """
    lower = jnp.asarray(lower, theta0.dtype)
    k = theta0.shape[0]
    f_only = lambda t: fun(t, *args)  # noqa: E731
    hess_aux = _value_grad_hessian(f_only, k)
    exact_value_grad = _value_grad(f_only, k)  # Newton route: cheapest exact mode
    value_grad = jax.value_and_grad(f_only)  # BFGS route (large dense blocks): reverse mode

    def body(s: _State) -> _State:
        if exact_hessian:
            # when the last step's Newton decrement already certifies convergence, the
            # Hessian at the final point is not needed: value and gradient suffice
            final = s.dec <= ftol * (1.0 + jnp.abs(s.f))

            def with_hessian():
                return hess_aux(s.theta)

            def without_hessian():
                return s.H, exact_value_grad(s.theta)

            H, (f, g) = lax.cond(final, without_hessian, with_hessian)
        else:
            f, g = value_grad(s.theta)
            B0 = lax.cond(s.it == 0, lambda: _fd_hessian(value_grad, s.theta, g, lower),
                          lambda: s.H)
            H = jnp.where(s.moved, _bfgs_update(B0, s.theta - s.theta_prev, g - s.g, s.nupd == 0),
                          B0)
        scale = 1.0 + jnp.abs(f)
        at = s.theta <= lower
        tiny = 1e-12 * scale
        if exact_hessian:
            hdiag = jnp.diagonal(H)
            active = at & ((g > tiny) | ((g >= -tiny) & (hdiag >= 0.0)))
            probe = at & ~active & (g >= -tiny)  # stationary on the bound, negative curvature
        else:
            stationary_at = at & (jnp.abs(g) <= tiny)
            probe = stationary_at & ~s.probed
            active = at & ~probe & (g >= -tiny)
        pg = jnp.max(jnp.abs(_proj_grad(s.theta, g, lower)), initial=0.0)
        done = ((s.dec <= ftol * scale) | (pg <= gtol * scale)) & ~jnp.any(probe)
        bad = ~jnp.isfinite(f)

        free = ~active
        both = free[:, None] & free[None, :]
        HF = jnp.where(both, H, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
        gF = jnp.where(free, g, 0.0)
        lam, V = jnp.linalg.eigh(HF)
        floor = 1e-8 * jnp.maximum(1.0, jnp.max(jnp.abs(lam)))
        lam = jnp.maximum(jnp.abs(lam), floor)
        d = -(V @ ((V.T @ gF) / lam))
        d = jnp.where(free, d, 0.0)
        d = jnp.where(probe, jnp.maximum(d, 0.1), d)
        if not exact_hessian:  # quasi-Newton steps can overshoot wildly: cap them
            d = d * jnp.minimum(1.0, MAX_STEP / jnp.maximum(jnp.max(jnp.abs(d)), 1e-300))
        # a probe step has no Newton decrement to speak of: never converge on it
        dec = jnp.where(jnp.any(probe), jnp.inf, -jnp.dot(gF, d))

        def ls_cond(c):
            return (~c[4]) & (c[3] < 40) & ~done & ~bad & (s.it < max_iter)

        def ls_body(c):
            alpha, _, _, n, _ = c
            t = jnp.maximum(s.theta + alpha * d, lower)
            fn = fun(t, *args)
            ok = jnp.isfinite(fn) & (fn <= f + 1e-4 * jnp.dot(g, t - s.theta))
            ok = ok & ((fn < f) | ~jnp.any(probe))  # an inward probe must really decrease f
            return alpha * jnp.where(ok, 1.0, 0.5), fn, t, n + 1, ok

        init = (jnp.asarray(1.0, f.dtype), f, s.theta, jnp.int32(0), jnp.asarray(False))
        _, f_new, t_new, nls, ok = lax.while_loop(ls_cond, ls_body, init)
        # a failed line search at an already stationary point counts as converged
        stationary = (pg <= 1e-4 * scale) & ~jnp.any(probe)
        # a failed inward probe (quasi-Newton) just marks the bound as checked
        reprobe = (~ok) & jnp.any(probe) & (not exact_hessian)
        out_of_budget = s.it >= max_iter
        status = jnp.where(bad, 3, jnp.where(done, 0, jnp.where(out_of_budget, 1, jnp.where(
            ok | reprobe, -1, jnp.where(stationary, 0, 2))))).astype(jnp.int32)
        move = ok & ~done & ~bad & ~out_of_budget
        return _State(
            theta=jnp.where(move, t_new, s.theta),
            f=jnp.where(move, f_new, f),
            g=g, H=H,
            it=s.it + jnp.where(move | reprobe, 1, 0).astype(jnp.int32),
            # (+ k gradients for the finite-difference start of BFGS)
            nfev=(s.nfev + 1 + nls + jnp.where((s.it == 0) & (not exact_hessian), k, 0)
                  ).astype(jnp.int32),
            status=status,
            dec=jnp.where(move, dec, s.dec),
            theta_prev=s.theta,
            moved=move,
            probed=s.probed | probe,  # each bound is probed at most once
            nupd=s.nupd + jnp.where(s.moved, 1, 0).astype(jnp.int32),
        )

    z = jnp.zeros((), theta0.dtype)
    s0 = _State(theta0, z, jnp.zeros(k, theta0.dtype), jnp.eye(k, dtype=theta0.dtype),
                jnp.int32(0), jnp.int32(0), jnp.int32(-1), jnp.asarray(jnp.inf, theta0.dtype),
                theta0, jnp.asarray(False), jnp.zeros(k, bool), jnp.int32(0))
    s = lax.while_loop(lambda s: s.status < 0, body, s0)
    pg = jnp.max(jnp.abs(_proj_grad(s.theta, s.g, lower)), initial=0.0)
    return OptResult(s.theta, s.f, s.g, pg, s.it, s.nfev, s.status)
