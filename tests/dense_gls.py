"""Dense generalized-least-squares reference for the profiled criteria (tests only).

An independent route to the same numbers: with V0 = Z Lambda Lambda' Z' + W^{-1},
  ML:   log|V0| + n (1 + log(2 pi r2 / n))
  REML: log|V0| + log|X' V0^{-1} X| + (n - p) (1 + log(2 pi r2 / (n - p)))
where r2 = min_beta (y - X beta)' V0^{-1} (y - X beta). Only for small n.
"""

import numpy as np


def dense_z_lambda(terms, theta_entries, theta):
    """Dense Z Lambda (n x sum G q) from lme4-style terms and the theta layout."""
    n = terms[0].Z.shape[0]
    blocks = []
    for t, term in enumerate(terms):
        q = term.Z.shape[1]
        T = np.zeros((q, q))
        for i, (tt, r, c) in enumerate(theta_entries):
            if tt == t:
                T[r, c] = theta[i]
        G = len(term.levels)
        Zt = np.zeros((n, G * q))
        for a in range(q):
            Zt[np.arange(n), term.codes * q + a] = term.Z[:, a]
        Lam = np.kron(np.eye(G), T)
        blocks.append(Zt @ Lam)
    return np.hstack(blocks)


def criterion(ZL, X, y, reml, weights=None):
    n, p = X.shape
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    V0 = ZL @ ZL.T + np.diag(1.0 / w)
    Vi = np.linalg.inv(V0)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    r2 = r @ Vi @ r
    ld = np.linalg.slogdet(V0)[1]
    if reml:
        nu = n - p
        return ld + np.linalg.slogdet(XtViX)[1] + nu * (1 + np.log(2 * np.pi * r2 / nu))
    return ld + n * (1 + np.log(2 * np.pi * r2 / n))


def term_theta_entries(terms):
    """lme4 theta order: terms by decreasing levels, lower triangle column-major."""
    order = sorted(range(len(terms)), key=lambda t: -len(terms[t].levels))
    out = []
    for t in order:
        q = terms[t].Z.shape[1]
        for c in range(q):
            for r in range(c, q):
                out.append((t, r, c))
    return out
