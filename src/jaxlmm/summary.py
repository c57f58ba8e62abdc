"""Text summary of a fitted model, laid out like lme4's ``print(summary(m))``.

The numbers are formatted the way R's ``format()`` / ``printCoefmat()`` do it
(joint formatting of a column to a number of significant digits), so the
layout looks like lme4's; character-for-character equality is not a goal.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

__all__ = ["format_summary", "format_number_vector", "abbreviate", "format_perc"]

DIGITS = 4  # lme4: max(3, getOption("digits") - 3)
MAX_CORR_P = 12  # lme4 prints the fixed-effects correlation only for p <= 12


# ---------------------------------------------------------------------------- R-like formatting
def _isfinite(v) -> bool:
    try:
        return math.isfinite(v)
    except TypeError:
        return False


def _sig_info(v: float, digits: int):
    """(significant digits needed, decimal exponent) of ``v`` shown to ``digits`` digits."""
    if v == 0:
        return 1, 0
    mant, exp = f"{abs(v):.{digits - 1}e}".split("e")
    mant = mant.replace(".", "").rstrip("0")
    return max(1, len(mant)), int(exp)


def format_number_vector(values, digits: int = 7, nsmall: int = 0) -> list[str]:
    """Format numbers jointly like R's ``format(x, digits=, nsmall=)``.

    Every finite value gets at least ``digits`` significant digits' worth of
    decimals where needed (the maximum over the vector), all share the same
    number of decimals and are right-justified to a common width.  Falls back
    to scientific notation when the fixed layout would be wider (scipen = 0).
    """
    vals = [float(v) if v is not None else float("nan") for v in values]
    fin = [v for v in vals if math.isfinite(v)]
    if fin:
        infos = [_sig_info(v, digits) for v in fin]
        rgt = max(max(0, s - 1 - e) for s, e in infos)
        left = max(max(1, e + 1) for _, e in infos)
        neg = any(v < 0 for v in fin)
        rgt_f = max(rgt, nsmall)
        fixed_w = neg + left + (rgt_f + 1 if rgt_f > 0 else 0)
        mxsl = max(s for s, _ in infos)
        exps = [e for _, e in infos]
        ew = 2 if max(abs(e) for e in exps) < 100 else 3
        sci_w = neg + (mxsl + 1 if mxsl > 1 else mxsl) + 2 + ew
        sci = fixed_w > sci_w and nsmall == 0
    out = []
    for v in vals:
        if not math.isfinite(v):
            out.append("NaN" if math.isnan(v) else ("Inf" if v > 0 else "-Inf"))
        elif sci:
            s = f"{v:.{mxsl - 1}e}"
            m, e = s.split("e")
            out.append(f"{m}e{int(e):+03d}")
        else:
            s = f"{round(v, rgt_f) + 0.0:.{rgt_f}f}"
            out.append(s)
    w = max((len(s) for s in out), default=0)
    return [s.rjust(w) for s in out]


def format_perc(probs, digits: int = 3) -> list[str]:
    """Column names as R's format(100 * probs, digits = 3) and " %" (lme4's format.perc)."""
    vals = [100.0 * p for p in probs]

    def decimals(v):
        if v == 0:
            return 0
        d = max(0, digits - 1 - math.floor(math.log10(abs(v))))
        s = f"{v:.{d}f}"
        return len(s.split(".")[1].rstrip("0")) if "." in s else 0

    d = max(decimals(v) for v in vals)
    return [f"{v:.{d}f} %" for v in vals]


def _zapsmall(x: np.ndarray, digits: int) -> np.ndarray:
    x = np.asarray(x, float)
    fin = x[np.isfinite(x)]
    mx = float(np.max(np.abs(fin))) if fin.size else 0.0
    nd = max(0, digits - int(math.ceil(math.log10(mx)))) if mx > 0 else digits
    return np.round(x, nd)


def _named_vector(names, cells) -> list[str]:
    """R's print of a named vector: common width, right-justified, one space apart."""
    w = max(max(len(n) for n in names), max(len(c) for c in cells))
    return [" ".join(n.rjust(w) for n in names), " ".join(c.rjust(w) for c in cells)]


def _char_matrix(rownames, colnames, cells, right: bool) -> list[str]:
    """R's print(<character matrix>, quote = FALSE, right = right)."""
    rw = max((len(r) for r in rownames), default=0)
    ncol = len(colnames)
    widths = [max([len(colnames[j])] + [len(row[j]) for row in cells]) for j in range(ncol)]
    just = (lambda s, w: s.rjust(w)) if right else (lambda s, w: s.ljust(w))
    lines = [" ".join([" " * rw] + [just(colnames[j], widths[j]) for j in range(ncol)])]
    for r, row in zip(rownames, cells):
        lines.append(" ".join([r.ljust(rw)] + [just(row[j], widths[j]) for j in range(ncol)]))
    return [ln.rstrip() for ln in lines]


_VOWELS = set("aeiou")


def _abbrev1(s: str, minlength: int) -> str:
    """R's abbreviate() for one string (method 'left.kept', use.classes = TRUE)."""
    b = list(s.strip())
    if len(b) <= minlength:
        return "".join(b)

    def nchar():
        return len(b) - sum(1 for i, c in enumerate(b) if c == " " and i > 0)

    def first_of_word(i):
        return i == 0 or b[i - 1] == " "

    for pred in (lambda c: c in _VOWELS, lambda c: c.islower(), lambda c: c != " "):
        i = len(b) - 1
        while i > 0:
            if i < len(b) and pred(b[i]) and not first_of_word(i):
                del b[i]
                if nchar() <= minlength:
                    return "".join(b).replace(" ", "")
            i -= 1
    return "".join(b).replace(" ", "")


def abbreviate(names, minlength: int) -> list[str]:
    """R's abbreviate(names, minlength): abbreviations made unique by lengthening."""
    names = list(names)
    out = [_abbrev1(n, minlength) for n in names]
    ml = minlength
    longest = max((len(n) for n in names), default=0)
    while ml < longest:
        seen = {}
        for a in out:
            seen[a] = seen.get(a, 0) + 1
        dups = [i for i, a in enumerate(out) if seen[a] > 1]
        if not dups:
            break
        ml += 1
        for i in dups:
            out[i] = _abbrev1(names[i], ml)
    return out


# ---------------------------------------------------------------------------- sections
def _header(m, satterthwaite: bool = False) -> list[str]:
    if satterthwaite:  # lmerTest's summary
        how = "REML" if m.reml else "maximum likelihood "
        lines = [f"Linear mixed model fit by {how}. t-tests use Satterthwaite's method "
                 "['lmerModLmerTest']"]
    elif m.reml:
        lines = ["Linear mixed model fit by REML ['lmerMod']"]
    else:
        lines = ["Linear mixed model fit by maximum likelihood  ['lmerMod']"]
    lines.append("Formula: " + " ".join(str(m.formula).split()))
    if m.data_name:
        lines.append("   Data: " + str(m.data_name))
    d = m.frame
    if getattr(d, "weights", None) is not None:
        name = m.weights_name
        lines.append("Weights: " + (str(name) if name else "(prior weights supplied)"))
    if getattr(d, "offset", None) is not None:
        name = m.offset_name
        if name:
            lines.append(" Offset: " + str(name))
        elif "offset(" not in str(m.formula):
            lines.append(" Offset: (offset supplied)")
    return lines


def _criterion(m) -> list[str]:
    if m.reml:
        return [f"REML criterion at convergence: {m.objective:.1f}"]
    names = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
    cells = [f"{round(v, 1) + 0.0:.1f}" for v in (m.aic, m.bic, m.loglik, m.objective)]
    cells.append(str(int(m.nobs - m.npar)))
    return _named_vector(names, cells)


def _residuals(m) -> list[str]:
    from .errors import RowsNotKeptError

    try:
        r = np.asarray(m.residuals(scaled=True), float)
    except RowsNotKeptError:  # rows read in batches (arrowio.py): no residuals kept
        return ["Scaled residuals: not kept (rows read in batches)"]
    r = r[np.isfinite(r)]
    if r.size == 0:
        return []
    q = _zapsmall(np.quantile(r, [0.0, 0.25, 0.5, 0.75, 1.0]), DIGITS + 1)
    cells = format_number_vector(q, DIGITS)
    return ["Scaled residuals:"] + _named_vector(["Min", "1Q", "Median", "3Q", "Max"], cells)


def _is_null(v) -> bool:
    return v is None or (not isinstance(v, str) and bool(pd.isna(v)))


def _varcorr_blocks(m):
    """[(group label, names, sds, corr matrix)] in lme4's term order, and the residual sd."""
    vc = m.varcorr
    blocks, index, resid_sd = [], {}, None
    for row in vc.itertuples(index=False):
        grp, v1, v2, sdcor = row.grp, row.var1, row.var2, float(row.sdcor)
        if grp == "Residual" and _is_null(v1):
            resid_sd = sdcor
            continue
        if grp not in index:
            index[grp] = len(blocks)
            blocks.append([grp, [], [], {}])
        b = blocks[index[grp]]
        if _is_null(v2):
            b[1].append(str(v1))
            b[2].append(sdcor)
        else:
            b[3][(str(v1), str(v2))] = sdcor
    out = []
    for grp, names, sds, cors in blocks:
        q = len(names)
        C = np.eye(q)
        for (a, b2), c in cors.items():
            if a in names and b2 in names:
                i, j = names.index(a), names.index(b2)
                C[i, j] = C[j, i] = c
        out.append((grp, names, sds, C))
    return out, resid_sd


def _random_effects(m) -> list[str]:
    blocks, resid_sd = _varcorr_blocks(m)
    groups, names, sds = [], [], []
    for grp, nm, sd, _ in blocks:
        for k, n in enumerate(nm):
            groups.append(grp if k == 0 else "")
            names.append(n)
            sds.append(sd[k])
    if resid_sd is not None:
        groups.append("Residual")
        names.append("")
        sds.append(resid_sd)
    sds = np.asarray(sds, float)
    var_s = format_number_vector(sds ** 2, DIGITS)
    sd_s = format_number_vector(sds, DIGITS)
    cols = ["Groups", "Name", "Variance", "Std.Dev."]
    cells = [[g, n, v, s] for g, n, v, s in zip(groups, names, var_s, sd_s)]

    maxlen = max((len(b[1]) for b in blocks), default=1)
    if maxlen > 1:
        ncorr = maxlen - 1
        corr_rows = []
        for _, nm, _, C in blocks:
            q = len(nm)
            dig = max(2, DIGITS - 2)
            flat = format_number_vector(np.round(C.ravel(), dig), 7, nsmall=dig)
            cc = np.array(flat, dtype=object).reshape(q, q) if q else np.zeros((0, 0), object)
            for i in range(q):
                corr_rows.append([cc[i, j] if j < i else "" for j in range(ncorr)])
        while len(corr_rows) < len(cells):
            corr_rows.append([""] * ncorr)
        cols += ["Corr"] + [""] * (ncorr - 1)
        cells = [row + cr for row, cr in zip(cells, corr_rows)]
    lines = ["Random effects:"]
    lines += _char_matrix([""] * len(cells), cols, cells, right=False)
    lines.append(_groups_line(m))
    return lines


def _group_order(m) -> list[str]:
    try:
        gv = m.ranef(condvar=False)["grpvar"]
        order = list(dict.fromkeys(str(g) for g in gv))
        if order:
            return order
    except Exception:  # pragma: no cover - fall back on the variance components
        pass
    vc = m.varcorr
    grps = [re.sub(r"\.\d+$", "", str(g)) for g in vc["grp"] if g != "Residual"]
    return list(dict.fromkeys(grps))


def _groups_line(m) -> str:
    nlev = {}
    for t in m.frame.terms:
        nlev.setdefault(str(t.group), len(t.levels))
    parts = [f"{g}, {nlev[g]}" for g in _group_order(m) if g in nlev]
    return f"Number of obs: {m.nobs}, groups:  " + "; ".join(parts)


SIGNIF_LEGEND = "Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1"


def _stars(p: float) -> str:
    """R's symnum significance codes."""
    if not _isfinite(p):
        return ""
    for cut, sym in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p <= cut:
            return sym
    return ""


def format_pvalues(pv, digits: int) -> list[str]:
    """R's format.pval(pv, digits, eps = .Machine$double.eps): values at or above 1e-3
    formatted jointly in fixed notation, smaller ones jointly, below eps as "< 2e-16"."""
    pv = np.asarray(pv, float)
    eps = np.finfo(float).eps
    out = [""] * len(pv)
    tiny = [i for i, p in enumerate(pv) if _isfinite(p) and p < eps]
    rest = [i for i in range(len(pv)) if i not in tiny]
    with np.errstate(divide="ignore"):
        expo = np.floor(np.log10(np.where(pv > 0, pv, 1e-50)))
    for group in ([i for i in rest if expo[i] >= -3 or pv[i] == 0],
                  [i for i in rest if not (expo[i] >= -3 or pv[i] == 0)]):
        if group:
            for i, c in zip(group, format_number_vector(pv[group], digits)):
                out[i] = c.strip()
    for i in tiny:
        out[i] = "< " + format_number_vector([eps], max(1, digits - 2))[0].strip()
    return out


def _fixed_effects(m, satterthwaite: bool = False) -> list[str]:
    beta = m.fixef
    p = len(beta)
    if p == 0:
        return ["No fixed effect coefficients"]
    names = [str(n) for n in beta.index]
    if satterthwaite:
        tab = m.coef_table(ddf="Satterthwaite")
        est, se = tab["Estimate"].to_numpy(float), tab["Std. Error"].to_numpy(float)
        df, tval, pval = (tab[c].to_numpy(float) for c in ("df", "t value", "Pr(>|t|)"))
        cols = [est, se, df]  # printCoefmat's cs.ind = 1:3: df formatted with the estimates
        heads = ["Estimate", "Std. Error", "df"]
    else:
        est = beta.to_numpy(float)
        se = m.stderr.reindex(beta.index).to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            tval = est / se
        cols = [est, se]
        heads = ["Estimate", "Std. Error"]
    coef_se = np.concatenate(cols)
    acs = np.abs(coef_se[np.isfinite(coef_se) & (coef_se != 0)])
    if acs.size:
        digmin = 1 + np.floor(np.log10([acs.min(), acs.max()]))
        dec = int(max(1, *(DIGITS - digmin)))
    else:
        dec = 1
    cs = format_number_vector(np.round(coef_se, dec), DIGITS)
    for k, (x, c) in enumerate(zip(coef_se, cs)):  # printCoefmat: non-zero shown as 0
        if np.isfinite(x) and x != 0 and float(c) == 0:
            cs[k] = format_number_vector([x], max(1, DIGITS - 1))[0]
    w = max(len(c) for c in cs)
    cs = [c.rjust(w) for c in cs]
    dig_tst = max(1, min(5, DIGITS - 1))
    ts = format_number_vector(np.round(tval, dig_tst), DIGITS)  # lme4: no zap.ind
    ncs = len(cols)
    cells = [[cs[j * p + i] for j in range(ncs)] + [ts[i]] for i in range(p)]
    heads = heads + ["t value"]
    if not satterthwaite:
        return ["Fixed effects:"] + _char_matrix(names, heads, cells, right=True)
    ps = format_pvalues(pval, dig_tst)
    stars = [_stars(v) for v in pval]
    body = _char_matrix(names, heads + ["Pr(>|t|)"],
                        [row + [pc] for row, pc in zip(cells, ps)], right=True)
    out = ["Fixed effects:", body[0]] + [(b + " " + st).rstrip()
                                         for b, st in zip(body[1:], stars)]
    if any(stars):
        out += ["---", SIGNIF_LEGEND]
    return out


def _fixef_correlation(m) -> list[str]:
    V = m.vcov
    p = V.shape[0]
    if p <= 1:
        return []
    if p > MAX_CORR_P:
        return [f"Correlation matrix not shown by default, as p = {p} > {MAX_CORR_P}.",
                "Use m.vcov if you need it"]
    v = V.to_numpy(float)
    d = np.sqrt(np.diag(v))
    with np.errstate(divide="ignore", invalid="ignore"):
        C = v / np.outer(d, d)
    names = [str(n) for n in V.index]
    rn = abbreviate(names, 11)
    cn = abbreviate(names, 6)
    flat = format_number_vector(np.round(C.ravel(), 3), 7, nsmall=3)
    cc = np.array(flat, dtype=object).reshape(p, p)
    cells = [[cc[i, j] if j < i else "" for j in range(p - 1)] for i in range(1, p)]
    return ["Correlation of Fixed Effects:"] + _char_matrix(rn[1:], cn[:-1], cells, right=False)


def _notes(m) -> list[str]:
    lines = [str(s) for s in m.messages]
    if m.is_singular and not any(s.startswith("boundary (singular)") for s in lines):
        lines.append("boundary (singular) fit: variance component(s) at zero: "
                     + ", ".join(m.singular_components))
    info = m.optinfo
    if not m.converged and not any(s.startswith("convergence") for s in lines):
        lines.append("convergence: " + str(info.get("message", "not converged")))
    it, ev = info.get("iterations"), info.get("evaluations")
    pg = info.get("proj_grad")
    pg_s = f"{pg:.2g}" if isinstance(pg, (int, float)) and _isfinite(pg) else str(pg)
    name = "projected BFGS" if "BFGS" in info["optimizer"] else "projected Newton"
    lines.append(f"optimizer: {name}, {it} iteration{'s' if it != 1 else ''}, "
                 f"{ev} evaluation{'s' if ev != 1 else ''}, "
                 f"max |projected gradient| = {pg_s}")
    return lines


def format_summary(m, ddf: str | None = "Satterthwaite") -> str:
    """Summary of a fitted :class:`~jaxlmm.model.LinearMixedModel` laid out like lmerTest's
    (``ddf="Satterthwaite"``: df and p-values in the fixed-effects table) or lme4's
    (``ddf="lme4"`` or None)."""
    satt = ddf is not None and str(ddf).lower() != "lme4"
    if satt and str(ddf).lower() != "satterthwaite":
        from .errors import JaxlmmError

        raise JaxlmmError(f"ddf must be 'Satterthwaite' or 'lme4' (None), got {ddf!r}")
    sections = [
        _header(m, satt),
        _criterion(m),
        _residuals(m),
        _random_effects(m),
        _fixed_effects(m, satt),
        _fixef_correlation(m),
        _notes(m),
    ]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"
