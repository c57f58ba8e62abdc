"""Profile-likelihood confidence intervals: lme4's ``confint(m, method = "profile")``.

Parameters are lme4's "sdcor" scale: per random-effects term its standard deviations and
correlations (lme4's theta order, names ``.sig01``, ``.sig02``, ...), the residual standard
deviation ``.sigma``, then the fixed effects. As lme4 does, a REML fit is first refitted by
maximum likelihood and everything is profiled on the ML deviance

    d(phi, beta) = log|L_theta|^2 - sum log w + (r^2(theta) + |R_X (beta - beta_hat)|^2) / sigma^2
                   + n log(2 pi sigma^2),      theta = T(phi) / sigma,

with T the lower Cholesky factor of the term's covariance diag(sd) C diag(sd) (C the
correlations) and r^2(theta) the penalized residual sum of squares at beta_hat(theta). For a
variance parameter phi_w = x, beta = beta_hat(theta) and d is minimized over the other
sd/cor/sigma values; for a fixed effect beta_j = x the other fixed effects are profiled
analytically, which adds (x - beta_hat_j)^2 / W_jj to r^2 (W = sigma^-2 vcov(beta_hat) at
theta; the minimum of the quadratic form over the other coordinates), and d is minimized
over all of sd/cor/sigma (lme4 instead refits y - x_j beta_j on X without column j: the same
function). The signed root

    zeta(x) = sign(x - x_hat) sqrt(d_min(x) - d_hat)

is then solved for zeta = -+ qnorm((1 + level) / 2) by a safeguarded Newton iteration whose
slope is exact: by the envelope theorem d'_min(x) is the partial derivative of d in x at the
constrained optimum, so zeta'(x) = d'_min(x) / (2 zeta). lme4 instead steps along the profile
and interpolates a spline; the roots here are exact up to the inner optimization (deviance
to about 1e-10). An sd whose profile does not reach the cut-off before 0 gets the limit 0,
and a correlation that does not reach it before -1 or 1 gets that value (as lme4). The
profile of a correlation is also bounded by the deviance with one of its two sds at 0
(where the correlation has no effect): a second, flat branch that a local search from the
optimum does not find (``Profile._plateau``).

Each profile point is one compiled program (``_point``): a box-constrained projected Newton
method with exact autodiff gradient and Hessian in a ``lax.while_loop``. Which parameter is
held fixed is data (a mask), not structure, so all parameters of a model share one compile.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import lax
from scipy.stats import norm

from .autodiff import autodiff
from .engine import fit_stats
from .errors import JaxlmmError
from .pls import factorize, pieces
from .solution import fixed_part
from .stats import Stats, suffstats
from .summary import format_perc

__all__ = ["Profile", "profile_confint"]

# ---------------------------------------------------------------- sdcor <-> theta


def _safe_sqrt(x):
    """sqrt(x) for x >= 0 with finite derivatives at 0; NaN (infeasible) for x < -1e-12."""
    pos = x > 0.0
    r = jnp.sqrt(jnp.where(pos, x, 1.0))
    return jnp.where(pos, r, jnp.where(x > -1e-12, 0.0, jnp.nan))


def _chol_corr(cor: dict, q: int) -> dict:
    """Lower Cholesky factor of the correlation matrix with entries cor[(r, c)], r > c,
    unrolled for a small q. A correlation matrix that is not positive semidefinite gives NaN
    (an infeasible point for the optimizer's line search)."""
    L = {}
    for j in range(q):
        L[j, j] = _safe_sqrt(1.0 - sum((L[j, k] ** 2 for k in range(j)), 0.0))
        ok = L[j, j] > 1e-12
        den = jnp.where(ok, L[j, j], 1.0)
        for i in range(j + 1, q):
            num = cor[i, j] - sum((L[i, k] * L[j, k] for k in range(j)), 0.0)
            L[i, j] = jnp.where(ok, num / den, 0.0)
    return L


def theta_of_sdcor(phi, terms: tuple, n_theta: int):
    """theta from phi = (sd/cor per term in lme4's theta order, sigma): each term's template
    is diag(sd) chol(C) / sigma. ``terms``: per term (q, ((theta index, row, col), ...))."""
    sigma = phi[n_theta]
    out = [None] * n_theta
    for q, entries in terms:
        sd = {r: phi[i] for i, r, c in entries if r == c}
        cor = {(r, c): phi[i] for i, r, c in entries if r != c}
        L = _chol_corr(cor, q)
        for i, r, c in entries:
            out[i] = sd[r] * L[r, c] / sigma
    return jnp.stack(out)


def sdcor_of_theta(theta, sigma, terms: tuple) -> np.ndarray:
    """phi = (sd/cor per term, sigma) from theta and sigma (host side, numpy): lme4's
    Cv_to_Sv. An undefined correlation (a zero standard deviation) is reported as 0."""
    theta = np.asarray(theta, float)
    phi = np.zeros(theta.shape[0] + 1)
    for q, entries in terms:
        T = np.zeros((q, q))
        for i, r, c in entries:
            T[r, c] = theta[i]
        S = sigma ** 2 * T @ T.T
        sd = np.sqrt(np.diag(S))
        for i, r, c in entries:
            if r == c:
                phi[i] = sd[r]
            else:
                den = sd[r] * sd[c]
                phi[i] = S[r, c] / den if den > 0 else 0.0
    phi[-1] = sigma
    return phi


# ---------------------------------------------------------------- the deviance


class Problem(NamedTuple):
    """What one profile point needs besides the statistics (arrays; a pytree).

    ``scale``: phi = u * scale (the optimizer's variables u are O(1)); ``lo``, ``hi``: bounds
    of phi; ``fix``: the coordinate held at x (all False for a fixed effect); ``ej``: the
    fixed effect's unit vector and ``pen`` 1.0 when a fixed effect is profiled, else 0.0;
    ``base``: the deviance at the ML optimum.
    """

    scale: jax.Array
    lo: jax.Array
    hi: jax.Array
    fix: jax.Array
    ej: jax.Array
    pen: jax.Array
    base: jax.Array


def _ml_deviance(phi, stats: Stats, terms: tuple, extra):
    """d at phi = (sd/cor, sigma) with r^2 + extra(beta_hat, W) / s^2 as the residual sum of
    squares (extra: the fixed effects' quadratic form, in data units; None for 0)."""
    st = stats.struct
    theta = theta_of_sdcor(phi, terms, st.n_theta)
    f = factorize(theta, stats)
    pc = pieces(f, st)
    s = stats.scale.s
    r2 = pc.pwrss  # in the scaled units of the statistics (y / s)
    if st.p > 0 and extra is not None:
        r2 = r2 + extra(*fixed_part(f, stats)) / s ** 2
    sig2 = (phi[st.n_theta] / s) ** 2
    n = stats.n
    return (pc.logdet_l - stats.ldw + r2 / sig2 + n * jnp.log(2.0 * jnp.pi * sig2)
            + 2.0 * n * jnp.log(s))


def _deviance(u, b, prob: Problem, stats: Stats, terms: tuple):
    """d - d_hat at phi = u * scale, with beta_j = b when prob.pen is 1 (the other fixed
    effects profiled: (b - beta_hat_j)^2 / W_jj), else beta = beta_hat."""
    def extra(beta, W):
        return prob.pen * (b - prob.ej @ beta) ** 2 / (prob.ej @ W @ prob.ej)

    return _ml_deviance(u * prob.scale, stats, terms, extra) - prob.base


@partial(jax.jit, static_argnames=("terms",))
def _full_deviance(params, stats: Stats, terms: tuple):
    """The ML deviance d(phi, beta) at params = (sd/cor per term, sigma, beta), nothing
    profiled: r^2 gets (beta - beta_hat)' W^{-1} (beta - beta_hat)."""
    k = stats.struct.n_theta
    beta = params[k + 1:]

    def extra(bhat, W):
        e = beta - bhat
        return e @ jnp.linalg.solve(W, e)

    return _ml_deviance(params[:k + 1], stats, terms, extra)


# ---------------------------------------------------------------- inner optimizer


class Inner(NamedTuple):
    """State and result of ``_box_newton``."""

    u: jax.Array
    f: jax.Array
    g: jax.Array
    H: jax.Array
    it: jax.Array
    nfev: jax.Array
    status: jax.Array  # -1 running, 0 converged, 1 max_iter, 2 line search failed, 3 start


def _direction(u, f, g, H, lo, hi):
    """Projected Newton direction (Bertsekas) on the box lo <= u <= hi.

    Active: coordinates with lo == hi, or on a bound with the gradient pushing outward (or
    zero gradient and non-negative curvature). A bound coordinate that is stationary with
    negative curvature (a variance at 0 is always stationary) is probed inward. On the free
    set the step is -|H_F|^{-1} g_F with eigenvalues made positive and floored.
    """
    tiny = 1e-12 * (1.0 + jnp.abs(f))
    hd = jnp.diagonal(H)
    at_lo, at_hi = u <= lo, u >= hi
    active = ((lo >= hi)
              | (at_lo & ((g > tiny) | ((g >= -tiny) & (hd >= 0.0))))
              | (at_hi & ((g < -tiny) | ((g <= tiny) & (hd >= 0.0)))))
    probe_lo = at_lo & ~active & (g >= -tiny)
    probe_hi = at_hi & ~active & (g <= tiny)
    free = ~active
    both = free[:, None] & free[None, :]
    HF = jnp.where(both, 0.5 * (H + H.T), 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
    gF = jnp.where(free, g, 0.0)
    lam, V = jnp.linalg.eigh(HF)
    lam = jnp.maximum(jnp.abs(lam), 1e-10 * jnp.maximum(1.0, jnp.max(jnp.abs(lam))))
    d = jnp.where(free, -(V @ ((V.T @ gF) / lam)), 0.0)
    d = jnp.where(probe_lo, jnp.maximum(d, 0.1), jnp.where(probe_hi, jnp.minimum(d, -0.1), d))
    probe = probe_lo | probe_hi
    dec = -jnp.dot(gF, d)
    pg = jnp.max(jnp.where(active, 0.0, jnp.abs(g)), initial=0.0)
    return d, dec, pg, jnp.any(probe)


def _derivatives(fun, k: int, reverse: bool):
    """value and (value, gradient, Hessian) of fun(u, *args). With a dense random-effects
    block (crossed factors) the Hessian is forward over reverse mode, otherwise forward over
    forward (autodiff.py): on the crossed_slopes fixture (k = 7) 24 against 108 ms; on
    sleepstudy and Penicillin both take 0.2-0.3 ms."""
    if not reverse:
        der = autodiff(fun, k)
        return der.value, der.value_grad_hessian

    def vgh(u, *args):
        vg = jax.value_and_grad(lambda v: fun(v, *args))

        def grad_aux(v):
            f, g = vg(v)
            return g, (f, g)

        H, (f, g) = jax.jacfwd(grad_aux, has_aux=True)(u)
        return f, g, H

    return fun, vgh


def _box_newton(fun, u0, lo, hi, args, max_iter: int, reverse: bool = False, gtol=1e-9,
                ftol=1e-12) -> Inner:
    """Minimize fun(u, *args) over lo <= u <= hi by projected Newton with exact derivatives;
    converged when the Newton decrement or the projected gradient is below tolerance
    (absolute: ``fun`` is a deviance difference of order 1).

    Each iteration evaluates value, gradient and Hessian at the point the previous line
    search accepted (so that this evaluation appears once in the compiled program), then
    backtracks on values along the projected path u(a) = clip(u + a d, lo, hi).
    """
    k = u0.shape[0]
    value, value_grad_hessian = _derivatives(fun, k, reverse)
    u0 = jnp.clip(u0, lo, hi)
    z = jnp.zeros((), u0.dtype)
    s0 = Inner(u0, z, jnp.zeros(k, u0.dtype), jnp.eye(k, dtype=u0.dtype), jnp.int32(0),
               jnp.int32(0), jnp.int32(-1))

    def body(s: Inner) -> Inner:
        f, g, H = value_grad_hessian(s.u, *args)
        bad = (s.nfev == 0) & ~(jnp.isfinite(f) & jnp.all(jnp.isfinite(g)))
        d, dec, pg, probe = _direction(s.u, f, g, H, lo, hi)
        done = ((dec <= ftol) | (pg <= gtol)) & ~probe

        def search(c):
            alpha, _, n, _ = c
            t = jnp.clip(s.u + alpha * d, lo, hi)
            ft = value(t, *args)
            good = (jnp.isfinite(ft) & (ft <= f + 1e-4 * jnp.dot(g, t - s.u))
                    & ((ft < f) | ~probe))
            return alpha * jnp.where(good, 1.0, 0.5), t, n + 1, good

        _, t, nls, good = lax.while_loop(
            lambda c: ~c[3] & (c[2] < 50) & ~done & ~bad, search,
            (jnp.asarray(1.0, u0.dtype), s.u, jnp.int32(0), jnp.asarray(False)))
        it = s.it + jnp.where(good, 1, 0).astype(jnp.int32)
        # a failed search at a (numerically) stationary point is convergence: rounding noise
        status = jnp.where(bad, 3, jnp.where(done, 0, jnp.where(
            good, jnp.where(it >= max_iter, 1, -1), jnp.where(pg <= 1e-6, 0, 2))))
        return Inner(jnp.where(good, t, s.u), f, g, H, it, s.nfev + 1 + nls,
                     status.astype(jnp.int32))

    # on exit (f, g, H) belong to u, except after max_iter (u then moved once more)
    return lax.while_loop(lambda s: s.status == -1, body, s0)


# ---------------------------------------------------------------- one profile point


class Point(NamedTuple):
    """The constrained optimum at one value x of the profiled parameter."""

    dev: jax.Array  # d_min(x) - d_hat
    slope: jax.Array  # d'_min(x) (envelope theorem)
    phi: jax.Array  # sd/cor/sigma at the optimum (data units)
    beta: jax.Array  # fixed effects at the optimum
    u: jax.Array  # the optimizer's variables (a warm start for the next point)
    hessian: jax.Array  # of the deviance in u at the optimum
    status: jax.Array
    iterations: jax.Array


@partial(jax.jit, static_argnames=("terms", "max_iter"))
def _point(x, u0, prob: Problem, stats: Stats, terms: tuple, max_iter: int = 100) -> Point:
    """Minimize the deviance with the parameter selected by ``prob`` held at x (with no
    parameter selected, ``prob.fix`` all False and ``prob.pen`` 0: the ML optimum), from
    u0 (u units)."""
    any_fix = jnp.any(prob.fix)
    sc = jnp.sum(jnp.where(prob.fix, prob.scale, 0.0))
    xs = jnp.where(any_fix, x / jnp.where(any_fix, sc, 1.0), 0.0)  # x in the u units
    lo = jnp.where(prob.fix, xs, prob.lo / prob.scale)
    hi = jnp.where(prob.fix, xs, prob.hi / prob.scale)
    b = jnp.where(prob.pen > 0, x, 0.0)
    fun = partial(_deviance, prob=prob, stats=stats, terms=terms)
    st = stats.struct
    res = _box_newton(lambda u, bb: fun(u, bb), jnp.where(prob.fix, xs, u0), lo, hi, (b,),
                      max_iter, reverse=st.m_rand > 0)
    phi = res.u * prob.scale
    slope = jnp.sum(jnp.where(prob.fix, res.g / prob.scale, 0.0))
    if st.p > 0:
        theta = theta_of_sdcor(phi, terms, st.n_theta)
        beta, W = fixed_part(factorize(theta, stats), stats)
        # the other fixed effects at beta_j = b: beta_hat + W e_j (b - beta_hat_j) / W_jj,
        # and the slope d/db of the added (b - beta_hat_j)^2 / (W_jj sigma^2)
        wj = W @ prob.ej
        wjj = prob.ej @ wj
        resid = b - prob.ej @ beta
        slope = jnp.where(prob.pen > 0, 2.0 * resid / (wjj * phi[st.n_theta] ** 2), slope)
        beta = beta + prob.pen * wj * resid / wjj
    else:
        beta = jnp.zeros((0,), phi.dtype)
    return Point(res.f, slope, phi, beta, res.u, res.H, res.status, res.it)


# ---------------------------------------------------------------- names, levels


def _check_level(level) -> float:
    try:
        lev = float(level)
    except (TypeError, ValueError):
        raise JaxlmmError(f"level must be a number in (0, 1), got {level!r}") from None
    if not (0.0 < lev < 1.0):
        raise JaxlmmError(f"level must be in (0, 1) (e.g. 0.95 for 95% intervals), got {level!r}")
    return lev


# ---------------------------------------------------------------- the profile


class Profile:
    """The profiled ML deviance of a fitted model, ready to evaluate and invert.

    ``Profile(m)`` refits a REML model by ML (as lme4's profile does), polishes the optimum
    in the sd/cor/sigma parametrization and compiles the per-point program. Then
    ``confint(level, which)`` gives lme4's ``confint(m, method = "profile")`` and
    ``zeta(name, values)`` the profile itself (lme4's ``as.data.frame(profile(m))`` rows).
    """

    def __init__(self, m, *, max_iter: int = 100):
        d = m.design
        self.model = m
        self.stats = stats = m.stats if hasattr(m, "stats") else suffstats(d)
        st = d.struct
        self.max_iter = max_iter
        self.n_theta = k = st.n_theta
        self.p = st.p
        info = d.info
        terms_frame = info.frame.terms
        order = [t for t, *_ in info.theta_terms]
        self.terms = tuple((len(cols), cells) for _, _, cols, cells in info.theta_terms)

        # names: lme4's ".sig01", ... ".sigma", fixef names; and its "sd_x|g" style labels
        kinds, labels = [None] * k, [None] * k
        for t, (q, entries) in zip(order, self.terms):
            cols, grp = terms_frame[t].columns, terms_frame[t].group
            for i, r, c in entries:
                kinds[i] = "sd" if r == c else "cor"
                labels[i] = (f"sd_{cols[r]}|{grp}" if r == c
                             else f"cor_{cols[r]}.{cols[c]}|{grp}")
        self.fixef_names = list(info.frame.fixef_names)
        self.var_names = [f".sig{i + 1:02d}" for i in range(k)] + [".sigma"]
        self.var_labels = labels + ["sigma"]
        self.kinds = kinds + ["sigma"] + ["beta"] * self.p
        # for each correlation, the theta indices of its two standard deviations
        self._cor_sds, self._plateaus = {}, {}
        for _, entries in self.terms:
            diag = {r: i for i, r, c in entries if r == c}
            for i, r, c in entries:
                if r != c:
                    self._cor_sds[i] = (diag[r], diag[c])
        self.names = self.var_names + self.fixef_names

        # the ML optimum (lme4 profiles a REML fit after refitML()): Newton in the sdcor
        # parametrization from the fit's estimates (for REML, sigma rescaled to ML's n)
        theta, sigma = m.theta, m.sigma
        if m.reml:
            sigma *= math.sqrt((m.nobs - self.p) / m.nobs)
        nv = k + 1
        lo = np.array([0.0 if kd in ("sd", "sigma") else -1.0 for kd in self.kinds[:nv]])
        hi = np.array([np.inf if kd in ("sd", "sigma") else 1.0 for kd in self.kinds[:nv]])
        phi = sdcor_of_theta(theta, sigma, self.terms)
        scale = np.where(np.asarray(self.kinds[:nv]) == "cor", 1.0,
                         np.maximum(phi, 0.1 * sigma))
        self._lo, self._hi = lo, hi
        self.u_hat = None
        self._prob = Problem(scale=scale, lo=lo, hi=hi, fix=np.zeros(nv, bool),
                             ej=np.eye(1, self.p)[0], pen=np.float64(0.0),
                             base=np.float64(0.0))
        pt = self._eval(self._prob, 0.0, phi / scale)
        if int(pt.status) != 0:  # fall back on the library's optimizer over theta
            res = fit_stats(stats, reml=False, theta0=jnp.asarray(m.theta))
            phi = sdcor_of_theta(np.asarray(res.theta), float(res.sigma), self.terms)
            pt = self._eval(self._prob, 0.0, phi / scale)
            if int(pt.status) != 0:
                warnings.warn("the ML optimum for profiling was not certified (status "
                              f"{int(pt.status)}); intervals may be inaccurate", stacklevel=2)
        self.base = float(pt.dev)  # d_hat: the ML deviance at the optimum
        self._prob = self._prob._replace(base=np.float64(self.base))
        self.u_hat = np.asarray(pt.u)
        self.phi_hat = np.asarray(pt.phi)
        self.beta_hat = np.asarray(pt.beta)
        self.estimates = np.concatenate([self.phi_hat, self.beta_hat])
        # starting steps: z times the Wald standard error; for phi_w from the profile's
        # curvature at the optimum, 1 / (H^-1)_ww (H in the u units)
        try:
            Hi = np.linalg.inv(np.asarray(pt.hessian))
            sd_u = np.sqrt(2.0 * np.maximum(np.diag(Hi), 0.0))
        except np.linalg.LinAlgError:
            sd_u = np.zeros(nv)
        step = np.where(np.isfinite(sd_u) & (sd_u > 0), sd_u, 0.5) * scale
        self._step = np.concatenate([step, np.asarray(m.stderr, float)])

    # ------------------------------------------------------------ evaluation
    def _problem(self, w: int) -> Problem:
        """The problem with parameter w (in ``self.names``) held fixed."""
        nv = self.n_theta + 1
        if w < nv:
            return self._prob._replace(fix=np.arange(nv) == w)
        return self._prob._replace(ej=np.eye(1, self.p, w - nv)[0], pen=np.float64(1.0))

    def _eval(self, prob: Problem, x: float, u0) -> Point:
        """One profile point, started from u0 (u units)."""
        return _point(np.float64(x), np.asarray(u0, float), prob, self.stats, self.terms,
                      self.max_iter)

    def _index(self, name: str) -> int:
        if name in self.names:
            return self.names.index(name)
        if name in self.var_labels:
            return self.var_labels.index(name)
        raise JaxlmmError(f"unknown parameter {name!r}; profiled parameters are "
                          f"{', '.join(self.names)} (or {', '.join(self.var_labels)})")

    def _which(self, which) -> list[int]:
        if which is None:
            return list(range(len(self.names)))
        if isinstance(which, str):
            which = [which]
        out = []
        for nm in which:
            if not isinstance(nm, str):
                raise JaxlmmError(f"which must hold parameter names, got {nm!r}")
            if nm == "theta_":
                idx = list(range(self.n_theta + 1))
            elif nm == "beta_":
                idx = list(range(self.n_theta + 1, len(self.names)))
            else:
                idx = [self._index(nm)]
            out.extend(i for i in idx if i not in out)
        if not out:
            raise JaxlmmError("which selects no parameter; give names such as "
                              f"{', '.join(self.names)}, or 'theta_' / 'beta_'")
        return sorted(out)

    def _plateau(self, w: int):
        """For a correlation: the deviance with one of its two standard deviations at 0
        (the lower of the two sd profiles at 0), where the correlation has no effect. The
        profile of the correlation is min(this, the optimum with both sds free), so it is
        flat at this level wherever the latter is higher; a local search from the ML
        optimum does not find that branch by itself (the constrained problem has two
        local minima there)."""
        if w not in self._plateaus:
            best = None
            for i in self._cor_sds[w]:
                pt = self._eval(self._problem(i), 0.0, self.u_hat)
                if int(pt.status) in (0, 1) and (best is None or float(pt.dev) < float(best.dev)):
                    best = pt
            self._plateaus[w] = best
        return self._plateaus[w]

    def _off_the_corner(self, w: int, prob: Problem, x: float, pt: Point) -> Point:
        """A free correlation that ends at -1 or 1 may be stuck there: d sqrt(1 - r^2) / dr is
        infinite at the bound, so the gradient there cannot say whether moving inward pays
        (a boundary fit with a correlation of -1 gave profile limits well inside lme4's).
        Two more solves, keeping the lowest deviance: with those correlations held at the
        bound (the other parameters then optimized properly), and from the same point with
        them pulled in to 0.9 r (where moving inward pays, the search goes there)."""
        u = np.asarray(pt.u, float)
        corner = [i for i, kd in enumerate(self.kinds[:self.n_theta])
                  if kd == "cor" and i != w and abs(u[i]) >= 1.0 - 1e-9]
        if not corner:
            return pt
        lo, hi = np.array(prob.lo, float), np.array(prob.hi, float)
        lo[corner] = hi[corner] = np.sign(u[corner])
        inward = u.copy()
        inward[corner] *= 0.9
        best = pt
        for cand in (self._eval(prob._replace(lo=lo, hi=hi), x, u),
                     self._eval(prob, x, inward)):
            if int(cand.status) in (0, 1) and (float(cand.dev) < float(best.dev) - 1e-9
                                               or int(best.status) not in (0, 1)):
                best = cand
        return best

    def _zeta_at(self, w: int, prob: Problem, x: float, u0, restart: bool = False):
        """zeta(x), the deviance difference and the Point, started from u0 (and, with
        ``restart``, also from the ML optimum, keeping the lower of the two)."""
        pt = self._eval(prob, x, u0)
        if restart:
            pt2 = self._eval(prob, x, self.u_hat)
            if int(pt2.status) in (0, 1) and (float(pt2.dev) < float(pt.dev) - 1e-9
                                              or int(pt.status) not in (0, 1)):
                pt = pt2
        pt = self._off_the_corner(w, prob, x, pt)
        if int(pt.status) not in (0, 1):
            warnings.warn(f"profile point {self.names[w]} = {x:.6g}: inner optimization "
                          f"status {int(pt.status)}", stacklevel=3)
        if self.kinds[w] == "cor":
            flat = self._plateau(w)
            if flat is not None and float(flat.dev) < float(pt.dev):
                # the flat branch (an sd at 0); keep the free-sd branch's u to walk on
                pt = pt._replace(dev=flat.dev, slope=jnp.zeros(()), beta=flat.beta,
                                 phi=flat.phi.at[w].set(x))
        dev = float(pt.dev)
        if dev < -1e-6:
            warnings.warn(f"profiling {self.names[w]} found a deviance {-dev:.3g} below the "
                          "ML optimum: the fit had not converged", stacklevel=3)
        sgn = np.sign(x - self.estimates[w])
        return sgn * math.sqrt(max(dev, 0.0)), dev, pt

    def deviance(self, params) -> float:
        """The ML deviance at a full parameter vector (``self.names`` order: sd/cor values,
        sigma, fixed effects), nothing profiled; ``self.base`` at the ML estimates."""
        params = np.asarray(params, float)
        if params.shape != (len(self.names),):
            raise JaxlmmError(f"params must have {len(self.names)} values "
                              f"({', '.join(self.names)}), got shape {params.shape}")
        return float(_full_deviance(jnp.asarray(params), self.stats, self.terms))

    def zeta(self, name: str, values) -> pd.DataFrame:
        """The profile of one parameter at ``values``: columns ``.zeta`` and every parameter
        at the constrained optimum (lme4's ``as.data.frame(profile(m))`` layout)."""
        w = self._index(name)
        prob = self._problem(w)
        xs = np.atleast_1d(np.asarray(values, float))
        rows = [None] * len(xs)
        x_hat = self.estimates[w]
        # walk outward from the optimum on each side, starting from the previous point (and
        # from the ML optimum)
        for side in (np.flatnonzero(xs >= x_hat), np.flatnonzero(xs < x_hat)):
            u = self.u_hat
            for i in sorted(side, key=lambda i: abs(xs[i] - x_hat)):
                z, _, pt = self._zeta_at(w, prob, xs[i], u, restart=True)
                u = np.asarray(pt.u)
                rows[i] = [z, *np.asarray(pt.phi), *np.asarray(pt.beta)]
        out = pd.DataFrame(rows, columns=[".zeta"] + self.names)
        out[".par"] = self.names[w]
        return out

    # ------------------------------------------------------------ confidence limits
    def _limit(self, w: int, prob: Problem, target: float, tol: float = 1e-10,
               max_eval: int = 60) -> float:
        """The x on one side of the optimum where zeta(x) = target (safeguarded Newton)."""
        x_hat = self.estimates[w]
        side = 1.0 if target > 0 else -1.0
        kind = self.kinds[w]
        if kind == "beta":
            lo, hi, closed = -np.inf, np.inf, False
        else:
            lo, hi = self._lo[w], self._hi[w]
            closed = kind != "sigma"  # sigma -> 0 is never reached (zeta -> infinity)
        bound = lo if side < 0 else hi
        if x_hat == bound:
            return float(bound)
        if kind == "cor":  # flat branch below the cut-off: the profile never reaches it
            flat = self._plateau(w)
            if flat is not None and math.sqrt(max(float(flat.dev), 0.0)) < abs(target):
                return float(bound)
        # bracket [x_in, x_out] with |zeta(x_in)| < |target| <= |zeta(x_out)|; each point
        # starts from the optimum at x_in (continuation from the ML optimum, as lme4's
        # "prev" start); the root found is checked by a restart from the ML optimum, and if
        # that finds a lower deviance (another local minimum) the search goes on from there
        x_in, z_in, x_out, z_out = x_hat, 0.0, None, None
        u_in = self.u_hat
        x = x_hat + side * abs(target) * self._step[w]
        for _ in range(max_eval):
            if side * (x - bound) >= 0:  # at or beyond the parameter's bound
                x = bound if closed else x_in + 0.5 * (bound - x_in)
            z, dev, pt = self._zeta_at(w, prob, x, u_in)
            if abs(z - target) <= tol:
                z, dev2, pt = self._zeta_at(w, prob, x, u_in, restart=True)
                if dev2 >= dev - 1e-9:
                    return float(x)
            if side * z < abs(target):
                x_in, z_in, u_in = x, z, np.asarray(pt.u)
                if x == bound:
                    return float(bound)  # the profile does not reach the cut-off
            else:
                x_out, z_out = x, z
            # Newton on zeta, slope from the envelope theorem: zeta' = d'/(2 zeta)
            dz = float(pt.slope) / (2.0 * z) if z != 0 else 0.0
            x_new = x + (target - z) / dz if dz > 0 and np.isfinite(dz) else np.nan
            if x_out is None:
                if not np.isfinite(x_new) or side * (x_new - x) <= 0:
                    x_new = x_hat + 2.0 * (x - x_hat)  # expand
                else:  # at most quadruple the distance from the optimum per step
                    x_new = x_hat + side * min(abs(x_new - x_hat), 4.0 * abs(x - x_hat))
                if abs(x_new - x_hat) > 1e8 * self._step[w]:  # lme4: NA -> the bound
                    warnings.warn(f"the profile of {self.names[w]} does not reach "
                                  f"|zeta| = {abs(target):.4g}; limit set to {bound}",
                                  stacklevel=3)
                    return float(bound)
            else:
                a, b = sorted((x_in, x_out))
                if not (np.isfinite(x_new) and a < x_new < b):
                    # regula falsi on the bracket, then bisection
                    x_new = x_in + (target - z_in) * (x_out - x_in) / (z_out - z_in)
                    if not a < x_new < b:
                        x_new = 0.5 * (a + b)
                if abs(x_out - x_in) <= 1e-12 * (1.0 + abs(x)):
                    return float(x_new)
            x = x_new
        warnings.warn(f"profile limit for {self.names[w]} at zeta = {target:.4g} not found "
                      f"in {max_eval} evaluations", stacklevel=2)
        return float("nan")

    def confint(self, level: float = 0.95, which=None) -> pd.DataFrame:
        """Profile-likelihood confidence intervals, as lme4's confint(m, method="profile"):
        rows ``.sig01``, ..., ``.sigma``, fixed effects; columns named as R names them."""
        level = _check_level(level)
        idx = self._which(which)
        a = (1.0 - level) / 2.0
        z = float(norm.ppf(1.0 - a))
        rows = []
        for w in idx:
            prob = self._problem(w)
            rows.append((self._limit(w, prob, -z), self._limit(w, prob, z)))
        return pd.DataFrame(rows, index=[self.names[w] for w in idx],
                            columns=format_perc([a, 1.0 - a]))


def profile_confint(m, level: float = 0.95, which=None) -> pd.DataFrame:
    """Profile-likelihood confidence intervals of a fitted model (lme4's
    ``confint(m, method = "profile")``): standard deviations and correlations of the random
    effects (``.sig01``, ...), the residual standard deviation (``.sigma``) and the fixed
    effects, all from the ML deviance (REML fits are refitted by ML first, as in lme4).

    ``which``: parameter names (lme4's ``.sig01`` style or its ``sd_x|g`` / ``cor_x.y|g`` /
    ``sigma`` labels, fixed-effect names), or ``"theta_"`` / ``"beta_"`` for all variance
    parameters / all fixed effects; default all. Returns a DataFrame with columns such as
    ``"2.5 %"`` and ``"97.5 %"``.

    >>> m = jaxlmm.fit("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
    >>> profile_confint(m)  # doctest: +SKIP
    """
    level = _check_level(level)
    return Profile(m).confint(level, which)
