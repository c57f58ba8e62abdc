"""R's coding of factors in model matrices, as a formulaic materializer.

formulaic (like Patsy) picks, for each term, a set of full- and reduced-rank pieces that keeps
the matrix structurally full rank; R does something simpler and lme4 users see its names. R's
rule (``TermCode`` in R's model.c; Chambers & Hastie, *Statistical Models in S*, p. 38):

* a factor F of term T is coded by contrasts (reduced rank, ``fb``, ``fc``) when T without F
  is contained in an earlier term, or is empty (the intercept's margin); otherwise by
  indicators (full rank, ``fa``, ``fb``, ``fc``);
* without an intercept, the first factor of the first term that has one is coded by indicators;
* the variables of a term are in the order they first appear in the formula, and the first
  one varies fastest: ``y ~ x + f:x`` has columns ``x:fb``, ``x:fc``; ``y ~ g + f:g`` has
  ``gu:fb``, ``gv:fb``, ...

This may give a rank-deficient matrix (``y ~ f:g`` with an intercept); the model frame then
drops columns by R's keep-first rule (frame._drop_redundant), exactly as lme4 does.
"""

from __future__ import annotations

import functools
import operator
import re

from formulaic.materializers.pandas import PandasMaterializer
from formulaic.materializers.types import ScopedFactor, ScopedTerm
from formulaic.parser.types import Factor, Term
from interface_meta import override

from .errors import DataError

__all__ = ["RMaterializer", "first_positions"]


def _squash(text: str) -> str:
    return re.sub(r"[\s`]", "", text)


def first_positions(text: str, exprs) -> dict:
    """Position of each variable expression's first appearance in the formula ``text``
    (whitespace and backquotes ignored; whole words only). Unfound expressions come last."""
    flat = _squash(text)
    out = {}
    for e in exprs:
        pat = r"(?<![\w.])" + re.escape(_squash(e)) + r"(?![\w.])"
        m = re.search(pat, flat)
        out[e] = m.start() if m else len(flat) + len(out)
    return out


def _check_levels(e) -> None:
    """R refuses a factor with one level (``contrasts can be applied only to factors with 2 or
    more levels``); formulaic would silently give it no columns."""
    import pandas as pd

    v = e.values.__wrapped__
    if isinstance(getattr(v, "dtype", None), pd.CategoricalDtype):
        levels = list(pd.Categorical(v).categories)
    else:
        levels = list(pd.unique(pd.Series(v).dropna()))
    if len(levels) < 2:
        which = f"its only level is {levels[0]!r}" if levels else "it has no levels"
        raise DataError(
            f"factor {e.expr!r} has fewer than 2 levels in the rows used ({which}); a factor "
            "needs 2 or more levels to be coded (R: 'contrasts can be applied only to factors "
            "with 2 or more levels'). Remove it from the formula, or check which rows were "
            "dropped for missing values")


class RMaterializer(PandasMaterializer):
    """formulaic's pandas materializer with R's choice of contrasts and variable order.

    Parameter ``text``: the right-hand side as written (for the variables' order).
    """

    REGISTER_NAME = "jaxlmm_r"

    @override
    def _get_scoped_terms(self, terms, ensure_full_rank: bool = True):
        terms = list(terms)
        evaled = {}
        for term in terms:
            evaled[term] = [self.factor_cache[f.expr] for f in term.factors
                            if self.factor_cache[f.expr].values.__wrapped__ is not None]
        pos = first_positions(self.params.get("text", ""),
                              {e.expr for fs in evaled.values() for e in fs})
        intercept = any(fs and all(e.metadata.kind is Factor.Kind.CONSTANT for e in fs)
                        for fs in evaled.values())
        seen: list[frozenset] = []  # variables of earlier terms
        first_factor_pending = not intercept
        for term in terms:
            factors = sorted(evaled[term], key=lambda e: pos[e.expr])
            if not factors:
                yield term, []
                continue
            const = [e for e in factors if e.metadata.kind is Factor.Kind.CONSTANT]
            scale = functools.reduce(operator.mul, [e.values for e in const], 1)
            varying = [e for e in factors if e.metadata.kind is not Factor.Kind.CONSTANT]
            names = frozenset(e.expr for e in varying)
            scoped = []
            for e in varying:
                if not e.metadata.spans_intercept:  # numeric: its values
                    scoped.append(ScopedFactor(e))
                    continue
                _check_levels(e)
                rest = names - {e.expr}
                if first_factor_pending:
                    reduced, first_factor_pending = False, False
                elif not rest:
                    reduced = True
                else:
                    reduced = any(rest <= s for s in seen)
                scoped.append(ScopedFactor(e, reduced=reduced))
            seen.append(names)
            ordered = Term([f for e in factors for f in term.factors if f.expr == e.expr],
                           origin=term)
            yield ordered, [ScopedTerm(factors=scoped, scale=scale)]
