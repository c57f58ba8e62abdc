"""Likelihood-ratio tests between nested models (lme4's ``anova(m0, m1, ...)``).

Models are sorted by their number of parameters (npar = p + length(theta) + 1). Between
consecutive models the statistic is the drop in ML deviance,

    Chisq_i = max(0, dev_{i-1} - dev_i),   Df_i = npar_i - npar_{i-1},
    Pr(>Chisq) = P(chi^2_{Df_i} > Chisq_i)   (missing when Df_i = 0).

REML criteria of models with different fixed effects are not comparable, so REML fits are
refitted by ML first (lme4's ``refit = TRUE``), and the result says so. The chi-square
reference distribution is conservative when the smaller model sets a variance component to
zero (on the boundary of the parameter space; Self and Liang 1987).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as _dist

from .errors import JaxlmmError

COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
REFIT_MESSAGE = "refitting model(s) with ML (instead of REML)"


def anova(*models, names=None, refit: bool = True, **named) -> pd.DataFrame:
    """Likelihood-ratio test table of nested models, like lme4's ``anova(m0, m1, ...)``.

    ``anova(m0, m1)`` names the rows "model1", "model2", ...; ``anova(null=m0, full=m1)`` or
    ``names=[...]`` names them. With one model, its type III F tests (m.anova()). ``refit=True`` (default) refits REML fits by ML first
    (reported in ``table.attrs["messages"]``); ``refit=False`` compares the criteria as
    fitted and is refused when REML fits have different fixed effects. Models must be fitted
    to the same observations (same response, weights and rows).
    """
    if len(models) == 1 and not named and names is None and _is_model(models[0]):
        return models[0].anova()  # one model: F tests of its terms, as R's anova(m)
    models, labels = _collect(models, names, named)
    _check_same_data(models, labels)
    messages = []
    if any(m.reml for m in models):
        if refit:
            messages.append(REFIT_MESSAGE)
            models = [m.refit_ml() if m.reml else m for m in models]
        else:
            _check_reml_comparable(models, labels)
    order = sorted(range(len(models)), key=lambda i: models[i].npar)  # stable, as R's order
    models = [models[i] for i in order]
    labels = [labels[i] for i in order]
    npar = np.array([m.npar for m in models], float)
    loglik = np.array([m.loglik for m in models])
    n = models[0].nobs
    chisq = np.full(len(models), np.nan)
    df = np.full(len(models), np.nan)
    p = np.full(len(models), np.nan)
    for i in range(1, len(models)):
        chisq[i] = 2.0 * max(0.0, loglik[i] - loglik[i - 1])
        df[i] = npar[i] - npar[i - 1]
        if df[i] != 0:
            p[i] = _dist.chi2.sf(chisq[i], abs(df[i]))
    table = pd.DataFrame({
        "npar": npar.astype(int),
        "AIC": -2.0 * loglik + 2.0 * npar,
        "BIC": -2.0 * loglik + np.log(n) * npar,
        "logLik": loglik,
        "deviance": -2.0 * loglik,
        "Chisq": chisq,
        "Df": df,
        "Pr(>Chisq)": p,
    }, index=labels)[COLUMNS]
    table.attrs["messages"] = messages
    table.attrs["models"] = {lab: m.formula for lab, m in zip(labels, models)}
    return table


def format_anova(table: pd.DataFrame) -> str:
    """The table as text, with lme4's "Models:" header and refit message."""
    lines = list(table.attrs.get("messages", []))
    models = table.attrs.get("models", {})
    if models:
        lines.append("Models:")
        lines += [f"{k}: {v}" for k, v in models.items()]
    lines.append(table.to_string(float_format=lambda v: f"{v:.6g}", na_rep=""))
    return "\n".join(lines)


def _is_model(m) -> bool:
    from .model import LinearMixedModel

    return isinstance(m, LinearMixedModel)


def _collect(models, names, named):
    from .model import LinearMixedModel

    models = list(models)
    if models and named:
        raise JaxlmmError("anova(): give the models either all by position or all by name "
                          "(anova(m0, m1) or anova(null=m0, full=m1)), not both")
    if named:
        labels, models = list(named), list(named.values())
    elif names is not None:
        labels = [str(s) for s in names]
        if len(labels) != len(models):
            raise JaxlmmError(f"anova(): {len(labels)} names given for {len(models)} models")
    else:
        labels = [f"model{i + 1}" for i in range(len(models))]
    if len(models) < 2:
        raise JaxlmmError("anova() compares two or more fitted models, e.g. anova(m0, m1); "
                          "for tests of the fixed effects of one model use m.anova()")
    for lab, m in zip(labels, models):
        if not isinstance(m, LinearMixedModel):
            raise JaxlmmError(f"anova(): {lab} is a {type(m).__name__}, not a fitted "
                              "LinearMixedModel (from jaxlmm.fit)")
    if len(set(labels)) != len(labels):
        raise JaxlmmError(f"anova(): model names must be distinct, got {labels}")
    return models, labels


def _check_same_data(models, labels):
    ref, lab0 = models[0], labels[0]
    y0, w0 = np.asarray(ref.frame.y), ref.frame.weights
    for m, lab in zip(models[1:], labels[1:]):
        if m.nobs != ref.nobs:
            raise JaxlmmError(
                f"anova(): models were not fitted to the same observations: {lab0} uses "
                f"{ref.nobs} rows, {lab} uses {m.nobs} (rows with missing values are dropped "
                "per model: drop them from the data first so that every model uses the same "
                "rows)")
        y = np.asarray(m.frame.y)
        if ref.frame.response != m.frame.response and not np.array_equal(y, y0):
            raise JaxlmmError(
                f"anova(): the models have different responses ({lab0}: "
                f"{ref.frame.response!r}, {lab}: {m.frame.response!r}); a likelihood-ratio "
                "test needs the same response")
        if not np.array_equal(y, y0):
            raise JaxlmmError(
                f"anova(): {lab0} and {lab} were fitted to different data (the responses "
                "differ); fit both models to the same data frame")
        w = m.frame.weights
        if (w is None) != (w0 is None) or (w is not None and not np.array_equal(w, w0)):
            raise JaxlmmError(f"anova(): {lab0} and {lab} have different prior weights; "
                              "fit both with the same weights")


def _check_reml_comparable(models, labels):
    X0 = models[0].frame.X
    for m, lab in zip(models[1:], labels[1:]):
        X = m.frame.X
        same = X.shape == X0.shape and np.allclose(X, X0)
        if not same:
            raise JaxlmmError(
                f"anova(refit=False): REML criteria of models with different fixed effects "
                f"({labels[0]} and {lab}) are not comparable; use refit=True (the default) to "
                "refit by ML, or fit with reml=False")
