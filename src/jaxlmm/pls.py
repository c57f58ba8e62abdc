"""Blocked Cholesky of the augmented mixed-model matrix, as a pure function of theta.

For Omega = [L'Z'ZL + I, L'Z'X, L'Z'y; ., X'X, X'y; ., ., y'y] (L = Lambda_theta) the
factor is built block by block in elimination order (layout.py):

1. scale every block by the templates, add I to the random-effects diagonal;
2. for each chain factor k: batched small Cholesky of its diagonal blocks, scale its
   off-diagonal blocks by L_kk^{-T}, and subtract their outer products from the later blocks
   (later chain factors stay block diagonal because they are nested; the dense block gets
   the update through precomputed pair-of-pair index lists);
3. dense Cholesky of the remaining Schur complement (crossed factors, X, y).

Its diagonal gives log|L_theta|^2, log|R_X|^2 and r^2 = pwrss (the last diagonal element
squared). See docs/numerics.md for the derivation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import smallblock as sb
from .dense import chol_sym
from .stats import Stats


class Factorization(NamedTuple):
    """The blocked factor. Off-diagonal blocks are final rows of L (already times L_kk^{-T})."""

    T: tuple  # templates (q, q) per factor, elimination order
    L: tuple  # chain diagonal factors (G_k, q_k, q_k)
    C: dict  # (k, l) -> (G_k, q_l, q_k)
    P: dict  # (k, r) -> (npairs, q_r, q_k)
    E: tuple  # k -> (G_k, p+1, q_k)
    LM: jax.Array  # (m, m) dense lower factor of the Schur complement


def template_cells(entries):
    """(theta index, row, column) arrays of a factor's template entries (Structure.templates)."""
    return tuple(jnp.array([e[i] for e in entries], dtype=jnp.int32) for i in range(3))


def templates(theta, struct):
    """Lower-triangular template T_k for each factor from the theta vector."""
    out = []
    for (G, q), entries in zip(struct.factors, struct.templates):
        idx, rows, cols = template_cells(entries)
        out.append(jnp.zeros((q, q), theta.dtype).at[rows, cols].set(theta[idx]))
    return tuple(out)


def eye_rand(struct, dtype):
    """diag(I_r, 0): the identity on the dense block's random-effect rows, as a dense array
    (a scatter of the diagonal would make every forward tangent a materialized copy)."""
    return jnp.diag((jnp.arange(struct.m) < struct.m_rand).astype(dtype))


def _scale_dense(M, T, struct):
    """Lambda' M Lambda on the dense block, then I added on its random-effects diagonal.

    Scalar factors (q = 1) scale rows and columns elementwise; vector factors contract their
    template with each level's q rows (and columns).
    """
    nchain = len(struct.chain)
    m = M.shape[0]
    lam = [jnp.ones(struct.p + 1, M.dtype)]
    parts = []
    for ri, (G, q) in enumerate(struct.rest):
        parts.append(jnp.full(G, T[nchain + ri][0, 0]) if q == 1 else jnp.ones(G * q, M.dtype))
    lam = jnp.concatenate(parts + lam)
    M = M * lam[:, None] * lam[None, :]
    for ri, (G, q) in enumerate(struct.rest):
        if q == 1:
            continue
        t = T[nchain + ri]
        off = struct.rest_offsets[ri]
        sl = slice(off, off + G * q)
        blk = M[sl, :].reshape(G, q, m)
        M = M.at[sl, :].set(jnp.einsum("ca,gcm->gam", t, blk).reshape(G * q, m))
        blk = M[:, sl].reshape(m, G, q)
        M = M.at[:, sl].set(jnp.einsum("mgc,ca->mga", blk, t).reshape(m, G * q))
    return M + eye_rand(struct, M.dtype)  # + I on the random-effects diagonal


def factorize(theta, stats: Stats) -> Factorization:
    """Blocked Cholesky factor of Omega(theta). Pure and jittable; cost independent of n."""
    T, Ls, C, P, E, M = eliminate_chain(theta, stats)
    return Factorization(T, Ls, C, P, E, chol_sym(M))


def eliminate_chain(theta, stats: Stats):
    """Steps 1-2: chain factors eliminated; returns their blocks and the dense Schur block."""
    T, Ls, C, P, E, Msc, parts = schur_parts(theta, stats)
    return T, Ls, C, P, E, assemble(Msc, parts)


def assemble(Msc, parts, lower_only: bool = False):
    """M = Msc - (U + U' - diag U), U the lower triangle of the scattered Schur updates.

    ``parts`` maps a tag to (flat index row * m + col, values, sorted); updates that land above
    the diagonal (inside a vector factor's diagonal block) are dropped by the tril. With
    ``lower_only`` only the lower triangle is valid (what the Cholesky reads), which saves the
    symmetrizing passes over the block; not for differentiating through.
    """
    m = Msc.shape[0]
    U = jnp.zeros((m * m,), Msc.dtype)
    for idx, vals, is_sorted in parts.values():
        if is_sorted:
            U = U + jax.ops.segment_sum(vals, idx, m * m, indices_are_sorted=True)
        else:
            U = U.at[idx].add(vals)
    U = U.reshape(m, m)
    if lower_only:
        return Msc - U
    U = jnp.tril(U)
    return Msc - (U + U.T - jnp.diag(jnp.diag(U)))


def weights(Gamma):
    """Flat weights w with <Gamma, U + U' - diag U> = sum w[idx] * values over the parts."""
    return (2.0 * jnp.tril(Gamma, -1) + jnp.diag(jnp.diag(Gamma))).ravel()


def contract(Gamma, Msc, parts, w=None):
    """<Gamma, assemble(Msc, parts)> for symmetric Gamma, without scattering anything.

    By linearity, <Gamma, U + U' - diag U> = sum over the updates of w[idx] * values with
    w = 2 tril(Gamma, -1) + diag(Gamma) (zero above the diagonal, as the tril drops those).
    This is what the derivatives of the criterion need (dense.py): a gather, not a scatter.
    ``Msc=None`` leaves out <Gamma, Msc> (for callers that contract it in closed form).
    """
    w = weights(Gamma) if w is None else w
    out = 0.0 if Msc is None else jnp.sum(Gamma * Msc)
    for idx, vals, _ in parts.values():
        out = out - jnp.dot(w[idx], vals)
    return out


def schur_parts(theta, stats: Stats):
    """Steps 1-2 with the dense block's Schur update left as a list of scatter parts.

    Returns (T, Ls, C, P, E, Msc, parts): Msc = Lambda' M Lambda + I on the dense block and
    ``parts`` the updates (see ``assemble``), so that the dense block can either be formed
    (``assemble``) or contracted with a fixed matrix (``contract``).
    """
    st = stats.struct
    nchain = len(st.chain)
    K = len(st.factors)
    rest = range(nchain, K)
    T = templates(theta, st)
    eye = [jnp.eye(q, dtype=theta.dtype) for _, q in st.factors]

    D = [sb.congruence(stats.D[k], T[k]) + eye[k] for k in range(nchain)]
    C = {(k, l): sb.matmul_tn(T[l], sb.matmul(c, T[k])) for (k, l), c in stats.C.items()}
    P = {(k, r): sb.matmul_tn(T[r], sb.matmul(p, T[k])) for (k, r), p in stats.P.items()}
    E = [sb.matmul(e, T[k]) for k, e in enumerate(stats.E)]
    Msc = _scale_dense(stats.M, T, st)
    m = st.m
    xy0 = st.m_rand
    parts = {}
    Ls = []
    for k in range(nchain):
        Lk = sb.cholesky(D[k])
        Ls.append(Lk)
        for l in range(k + 1, nchain):
            C[k, l] = sb.solve_rt(C[k, l], Lk)
        for r in rest:
            P[k, r] = sb.solve_rt(P[k, r], Lk[stats.pj[k, r]])
        E[k] = sb.solve_rt(E[k], Lk)
        # later chain factors: block-diagonal updates through the parent maps
        for l in range(k + 1, nchain):
            par = stats.parent[k, l]
            Gl = st.factors[l][0]
            D[l] = D[l] - jax.ops.segment_sum(sb.matmul_nt(C[k, l], C[k, l]), par, Gl)
            for l2 in range(l + 1, nchain):
                C[l, l2] = C[l, l2] - jax.ops.segment_sum(
                    sb.matmul_nt(C[k, l2], C[k, l]), par, Gl)
            for r in rest:
                upd = sb.matmul_nt(P[k, r], C[k, l][stats.pj[k, r]])
                P[l, r] = P[l, r] - jax.ops.segment_sum(
                    upd, stats.pmap[k, l, r], P[l, r].shape[0])
            E[l] = E[l] - jax.ops.segment_sum(sb.matmul_nt(E[k], C[k, l]), par, Gl)
        # dense block: rest x rest through pair-of-pair lists, rest x xy, xy x xy
        for r in rest:
            Gr, qr = st.factors[r]
            offr = st.rest_offsets[r - nchain]
            for r2 in range(nchain, r + 1):
                _, qr2 = st.factors[r2]
                a, b = stats.ppa[k, r, r2], stats.ppb[k, r, r2]
                # asks XLA not to fuse P's producers into the gathers below (they would be
                # recomputed per pair of pairs); XLA:CPU (jaxlib 0.10) strips barriers before
                # fusion, so on CPU this is a no-op, kept for backends that honour it
                pa, pb = lax.optimization_barrier((P[k, r], P[k, r2]))
                vals = sb.matmul_nt(pa[a], pb[b])  # (npp, qr, qr2)
                tgt = stats.ppt[k, r, r2]
                for ia in range(qr):
                    for ib in range(qr2):
                        parts["pp", k, r, r2, ia, ib] = (tgt + (ia * m + ib), vals[:, ia, ib],
                                                         True)
            zxy = sb.matmul_nt(E[k][stats.pj[k, r]], P[k, r])  # (npairs, p+1, qr)
            zxy = jax.ops.segment_sum(zxy, stats.pi[k, r], Gr)  # (Gr, p+1, qr)
            row = xy0 + jnp.arange(st.p + 1)[None, :, None]
            col = offr + jnp.arange(Gr)[:, None, None] * qr + jnp.arange(qr)[None, None, :]
            parts["zxy", k, r] = ((row * m + col).ravel(), zxy.ravel(), False)
        ek = E[k].transpose(0, 2, 1).reshape(-1, st.p + 1)
        exy = ek.T @ ek
        xy = xy0 + jnp.arange(st.p + 1)
        parts["exy", k] = ((xy[:, None] * m + xy[None, :]).ravel(), exy.ravel(), False)
    return T, tuple(Ls), C, P, tuple(E), Msc, parts


class Pieces(NamedTuple):
    """Scalar pieces of the profiled criterion read off the factor."""

    logdet_l: jax.Array  # log|L_theta|^2
    logdet_x: jax.Array  # log|R_X|^2
    pwrss: jax.Array  # r^2, penalized weighted residual sum of squares


def pieces(f: Factorization, struct) -> Pieces:
    d = jnp.log(jnp.diagonal(f.LM))
    mr, p = struct.m_rand, struct.p
    logdet_l = 2.0 * (sum(sb.log_diag_sum(L) for L in f.L) + jnp.sum(d[:mr]))
    logdet_x = 2.0 * jnp.sum(d[mr:mr + p])
    return Pieces(logdet_l, logdet_x, f.LM[-1, -1] ** 2)


LARGE_DENSE = 256  # dense blocks with more random-effect rows use dense.py's derivative rules
