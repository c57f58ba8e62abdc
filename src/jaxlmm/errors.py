"""Exceptions raised by jaxlmm.

Every error is a :class:`JaxlmmError`; input errors are also ``ValueError``
so callers catching the builtin keep working.
"""

from __future__ import annotations

__all__ = ["JaxlmmError", "FormulaError", "DataError", "RowsNotKeptError"]


class JaxlmmError(Exception):
    """Base class of all jaxlmm errors."""


class FormulaError(JaxlmmError, ValueError):
    """A model formula that cannot be parsed or evaluated.

    The message quotes the formula and, when ``pos`` is known, draws a caret
    under the offending character (``^``), underlining ``span`` characters.
    """

    def __init__(
        self,
        message: str,
        formula: str | None = None,
        pos: int | None = None,
        span: int = 1,
        hint: str | None = None,
    ):
        self.reason = message
        self.formula = formula
        self.pos = pos
        self.hint = hint
        lines = [message]
        if formula is not None:
            shown = formula.replace("\n", " ").replace("\t", " ")
            lines.append("    " + shown)
            if pos is not None:
                pos = max(0, min(pos, len(shown)))
                lines.append("    " + " " * pos + "^" + "~" * max(0, span - 1))
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class DataError(JaxlmmError, ValueError):
    """Data that do not fit the model: a missing or ill-typed column, bad values."""


class RowsNotKeptError(DataError):
    """A per-row result of a model fitted from data read in batches, whose rows are not kept
    (arrowio.NotKept)."""
