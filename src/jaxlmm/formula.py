"""lme4 model-formula syntax: ``y ~ fixed + (expr | group) + offset(o)``.

:func:`parse_formula` splits a formula into its response, the fixed-effects
right-hand side (handed to formulaic later), the random-effects bar terms and
the ``offset()`` expressions.  Bar terms are expanded as lme4 does:

* ``(x | g)`` is ``(1 + x | g)``; ``0 +`` or ``- 1`` removes the intercept;
* ``(x || g)`` is ``(1 | g) + (0 + x | g)``: one uncorrelated term per
  additive term of the left side (``a*b`` expands to ``a``, ``b``, ``a:b``);
* ``(1 | a/b)`` is ``(1 | b:a) + (1 | a)`` and ``(1 | a/b/c)`` is
  ``(1 | c:b:a) + (1 | b:a) + (1 | a)`` -- lme4's ``findbars`` names and
  orders the nested terms this way (``Pastes``: ``cask:batch`` then ``batch``);
* ``(1 | a + b)`` is ``(1 | a) + (1 | b)``;
* ``(1 | a:b)`` keeps the interaction ``a:b`` as one grouping factor.

The parser is a small tokenizer that tracks bracket nesting; it never
evaluates anything, so unknown functions surface when the design is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .errors import FormulaError

__all__ = [
    "RandomTermSpec",
    "ParsedFormula",
    "parse_formula",
    "group_variables",
    "quote_name",
]


@dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term ``(expr | group)`` after expansion."""

    expr: str  # left of the bar, normalised: "1", "1 + Days", "0 + Days"
    group: str  # grouping expression: "Subject", "cask:batch"
    source: str  # the bar term as written, for messages


@dataclass(frozen=True)
class ParsedFormula:
    """A parsed lme4 formula."""

    formula: str
    response: str  # column name, unquoted
    fixed: str  # fixed-effects right-hand side for formulaic, e.g. "1 + Days"
    random: tuple[RandomTermSpec, ...]
    offsets: tuple[str, ...]  # expressions inside offset(...)


# --------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_MULTI_OPS = ("||", "**", "==", "!=", "<=", ">=", "//")
_BARS = ("|", "||")


@dataclass(frozen=True)
class Token:
    """A lexeme: ``kind`` is name, bq (backquoted name), num, str or op."""

    kind: str
    text: str
    start: int
    end: int

    @property
    def value(self) -> str:
        """Name without backquotes / string without quotes."""
        if self.kind in ("bq", "str"):
            return self.text[1:-1]
        return self.text


def _is_name_start(c: str) -> bool:
    return c.isalpha() or c in "_."


def _is_name_char(c: str) -> bool:
    return c.isalnum() or c in "_."


def tokenize(text: str, formula: str | None = None, offset: int = 0) -> list[Token]:
    """Split ``text`` into tokens (positions are offset by ``offset``)."""
    shown = formula if formula is not None else text
    toks: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if c in "'\"`":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if (text[j] == "\\" and c != "`") else 1
            if j >= n:
                what = "backquoted name" if c == "`" else "string"
                raise FormulaError(
                    f"unterminated {what}", shown, offset + start, hint=f"add the closing {c}"
                )
            i = j + 1
            toks.append(Token("bq" if c == "`" else "str", text[start:i], offset + start, offset + i))
        elif c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            j = i
            while j < n and (text[j].isdigit() or text[j] == "."):
                j += 1
            if j < n and text[j] in "eE" and j + 1 < n and (text[j + 1].isdigit() or text[j + 1] in "+-"):
                j += 2
                while j < n and text[j].isdigit():
                    j += 1
            if j < n and text[j] in "L":  # R integer literal, e.g. 1L
                j += 1
            i = j
            toks.append(Token("num", text[start:i], offset + start, offset + i))
        elif _is_name_start(c):
            j = i + 1
            while j < n and _is_name_char(text[j]):
                j += 1
            i = j
            toks.append(Token("name", text[start:i], offset + start, offset + i))
        elif c == "%":
            j = text.find("%", i + 1)
            i = n if j < 0 else j + 1
            toks.append(Token("op", text[start:i], offset + start, offset + i))
        else:
            op = next((m for m in _MULTI_OPS if text.startswith(m, i)), c)
            i += len(op)
            toks.append(Token("op", op, offset + start, offset + i))
    return toks


class _Tokens:
    """Tokens plus bracket structure: matching partner and enclosing opener."""

    def __init__(self, formula: str):
        self.formula = formula
        self.toks = tokenize(formula)
        n = len(self.toks)
        self.match = [-1] * n
        self.parent = [-1] * n
        stack: list[int] = []
        for i, t in enumerate(self.toks):
            self.parent[i] = stack[-1] if stack else -1
            if t.kind != "op":
                continue
            if t.text in _OPEN:
                stack.append(i)
            elif t.text in _CLOSE:
                if not stack:
                    self.error(f"unmatched '{t.text}'", i, hint="remove it or add the opening bracket")
                j = stack.pop()
                if self.toks[j].text != _CLOSE[t.text]:
                    self.error(
                        f"'{t.text}' does not match '{self.toks[j].text}' opened at position "
                        f"{self.toks[j].start}",
                        i,
                    )
                self.match[i], self.match[j] = j, i
                self.parent[i] = stack[-1] if stack else -1
        if stack:
            j = stack[-1]
            self.error(f"'{self.toks[j].text}' is never closed", j, hint="add the closing bracket")

    def __getitem__(self, i: int) -> Token:
        return self.toks[i]

    def __len__(self) -> int:
        return len(self.toks)

    def is_op(self, i: int, *texts: str) -> bool:
        return 0 <= i < len(self.toks) and self.toks[i].kind == "op" and self.toks[i].text in texts

    def error(self, message: str, i: int, hint: str | None = None, end: int | None = None):
        t = self.toks[i]
        stop = self.toks[end - 1].end if end is not None else t.end
        raise FormulaError(message, self.formula, t.start, span=max(1, stop - t.start), hint=hint)

    def text(self, lo: int, hi: int) -> str:
        """Source text of tokens ``lo:hi`` (as written)."""
        return self.formula[self.toks[lo].start : self.toks[hi - 1].end]

    def norm(self, lo: int, hi: int) -> str:
        """Source text of tokens ``lo:hi`` with whitespace collapsed."""
        return " ".join(self.text(lo, hi).split())

    def split(self, lo: int, hi: int, seps: tuple[str, ...]):
        """Split ``lo:hi`` at top-level operators in ``seps``.

        Yields ``(sep_index or -1, start, stop)`` for each piece.
        """
        out, sep, start, i = [], -1, lo, lo
        while i < hi:
            t = self.toks[i]
            if t.kind == "op" and t.text in _OPEN:
                i = self.match[i] + 1
                continue
            if t.kind == "op" and t.text in seps:
                out.append((sep, start, i))
                sep, start = i, i + 1
            i += 1
        out.append((sep, start, hi))
        return out

    def is_call_paren(self, i: int) -> bool:
        """True when the opener at ``i`` is a call ``f(`` or an index/brace."""
        t = self.toks[i]
        if t.text != "(":
            return True
        return i > 0 and self.toks[i - 1].kind in ("name", "bq")


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------


def quote_name(name: str) -> str:
    """Backquote ``name`` unless it is a plain (R/Python style) identifier."""
    if name and _is_name_start(name[0]) and all(_is_name_char(c) for c in name):
        if not (name[0] == "." and name[1:2].isdigit()):
            return name
    return f"`{name}`"


def parse_formula(formula: str) -> ParsedFormula:
    """Parse an lme4 formula into response, fixed part, bar terms and offsets."""
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string, got {type(formula).__name__}")
    return _parse_cached(formula)


@lru_cache(maxsize=256)
def _parse_cached(formula: str) -> ParsedFormula:  # ParsedFormula is immutable
    if not formula.strip():
        raise FormulaError("empty formula", formula, 0, hint="write e.g. 'y ~ x + (1 | g)'")
    tk = _Tokens(formula)
    tildes = [i for i in range(len(tk)) if tk.is_op(i, "~")]
    if not tildes:
        raise FormulaError(
            "formula has no '~'", formula, len(formula.rstrip()), hint="write e.g. 'y ~ x + (1 | g)'"
        )
    for i in tildes:
        if tk.parent[i] != -1:
            tk.error("'~' inside brackets", i)
    if len(tildes) > 1:
        tk.error("formula has more than one '~'", tildes[1])
    k = tildes[0]
    response = _parse_response(tk, 0, k)
    if k + 1 == len(tk):
        raise FormulaError(
            "nothing right of '~'", formula, len(formula.rstrip()), hint="use '~ 1' for an intercept-only model"
        )
    fixed, random, offsets = _parse_rhs(tk, k + 1, len(tk))
    return ParsedFormula(formula, response, fixed, tuple(random), tuple(offsets))


def _parse_response(tk: _Tokens, lo: int, hi: int) -> str:
    if hi == lo:
        raise FormulaError(
            "formula has no response left of '~'",
            tk.formula,
            tk[hi].start,
            hint="lme4 models need a response: 'y ~ ...'",
        )
    if hi - lo == 1 and tk[lo].kind in ("name", "bq"):
        return tk[lo].value
    if (
        hi - lo == 4
        and tk[lo].text == "Q"
        and tk.is_op(lo + 1, "(")
        and tk[lo + 2].kind == "str"
        and tk.is_op(lo + 3, ")")
    ):
        return tk[lo + 2].value
    tk.error(
        "the response must be a single column name",
        lo,
        end=hi,
        hint="compute transformed responses as a data column first",
    )


def _parse_rhs(tk: _Tokens, lo: int, hi: int):
    fixed: list[str] = []
    random: list[RandomTermSpec] = []
    offsets: list[str] = []
    for sep, a, b in tk.split(lo, hi, ("+", "-")):
        op = tk[sep].text if sep >= 0 else "+"
        if a == b:
            if sep < 0:
                continue  # leading unary sign: "~ -1 + x"
            if b == hi:
                tk.error(f"nothing after '{op}'", sep)
            tk.error(f"empty term after '{op}'", sep)
        if tk.is_op(a, "(") and tk.match[a] == b - 1 and _top_bars(tk, a + 1, b - 1):
            if op == "-":
                tk.error("cannot subtract a random-effects term", sep, end=b)
            random.extend(_parse_bar(tk, a, b))
        elif tk[a].text == "offset" and tk.is_op(a + 1, "(") and tk.match[a + 1] == b - 1:
            if op == "-":
                tk.error("cannot subtract an offset; use offset(-x)", sep, end=b)
            if b - 1 == a + 2:
                tk.error("offset() is empty", a, end=b)
            offsets.append(tk.norm(a + 2, b - 1))
        else:
            _check_fixed_piece(tk, a, b)
            text = tk.norm(a, b)
            if text == ".":
                tk.error("'.' (all other columns) is not supported", a, hint="list the columns explicitly")
            fixed.append(text if (op == "+" and not fixed) else f"{op} {text}")
    fixed_rhs = " ".join(fixed) if fixed else "1"
    if fixed_rhs.startswith("- "):
        fixed_rhs = "-" + fixed_rhs[2:]
    return fixed_rhs, random, offsets


def _top_bars(tk: _Tokens, lo: int, hi: int) -> list[int]:
    bars, i = [], lo
    while i < hi:
        if tk.is_op(i, *_OPEN):
            i = tk.match[i] + 1
            continue
        if tk.is_op(i, *_BARS):
            bars.append(i)
        i += 1
    return bars


def _check_fixed_piece(tk: _Tokens, lo: int, hi: int) -> None:
    for i in range(lo, hi):
        t = tk[i]
        if tk.is_op(i, *_BARS):
            p = tk.parent[i]
            if p == -1 or p < lo:
                tk.error(
                    f"'{t.text}' outside parentheses",
                    i,
                    hint="write random-effects terms in parentheses: (1 | g)",
                )
            if not tk.is_call_paren(p):
                tk.error(
                    "a random-effects term must be a separate top-level term",
                    p,
                    end=tk.match[p] + 1,
                    hint="add it with '+', e.g. y ~ x + (1 | g); no extra parentheses or '*', ':' around it",
                )
        elif t.text == "offset" and tk.is_op(i + 1, "("):
            tk.error("offset() must be a separate top-level term", i, end=tk.match[i + 1] + 1,
                     hint="add it with '+', e.g. y ~ x + offset(log(n))")


def _parse_bar(tk: _Tokens, lo: int, hi: int) -> list[RandomTermSpec]:
    """Expand the bar term at tokens ``lo:hi`` (outer parentheses included)."""
    source = tk.norm(lo, hi)
    bars = _top_bars(tk, lo + 1, hi - 1)
    if len(bars) > 1:
        tk.error("more than one '|' in a random-effects term", bars[1])
    bar = bars[0]
    double = tk[bar].text == "||"
    if bar == lo + 1:
        tk.error(
            f"nothing left of '{tk[bar].text}' in {source}",
            bar,
            hint="write the random effects left of the bar, e.g. (1 | g)",
        )
    if bar == hi - 2:
        tk.error(
            f"no grouping factor right of '{tk[bar].text}' in {source}",
            bar,
            hint="write the grouping factor right of the bar, e.g. (1 | g)",
        )
    intercept, terms = _parse_bar_lhs(tk, lo + 1, bar, double)
    groups = _parse_groups(tk, bar + 1, hi - 1)
    if not intercept and not terms:
        tk.error(f"random-effects term {source} has no effects", lo, end=hi)
    if double:
        exprs = (["1"] if intercept else []) + [f"0 + {t}" for t in terms]
    elif terms:
        exprs = [("1 + " if intercept else "0 + ") + " + ".join(terms)]
    else:
        exprs = ["1"]
    return [RandomTermSpec(e, g, source) for e in exprs for g in groups]


def _parse_bar_lhs(tk: _Tokens, lo: int, hi: int, double: bool):
    intercept, terms = True, []
    for sep, a, b in tk.split(lo, hi, ("+", "-")):
        op = tk[sep].text if sep >= 0 else "+"
        if a == b:
            if sep < 0:
                continue
            tk.error(f"empty term after '{op}'", sep)
        text = tk.norm(a, b)
        if text in ("0", "1"):
            intercept = (text == "1") == (op == "+")
            continue
        if op == "-":
            tk.error(
                "only '- 1' can be subtracted left of the bar",
                sep,
                end=b,
                hint="use 0 + ... or - 1 to drop the random intercept",
            )
        new = _expand_double(tk, a, b) if double else [text]
        terms.extend(t for t in new if t not in terms)
    if double:  # R's terms(): main effects first, then interactions
        terms.sort(key=lambda t: _degree(t))
    return intercept, terms


def _degree(term: str) -> int:
    tk = _Tokens(term)
    return len(tk.split(0, len(tk), (":",)))


def _expand_double(tk: _Tokens, lo: int, hi: int) -> list[str]:
    """Terms of one additive piece left of '||' (``a*b`` -> a, b, a:b)."""
    for i in range(lo, hi):
        if tk.parent[i] < lo and tk.is_op(i, "/", "^", "(", "%in%") and not (
            tk.is_op(i, "(") and tk.is_call_paren(i)
        ):
            tk.error(
                f"'{tk[i].text}' is not supported left of '||'",
                i,
                hint="write the terms out, e.g. (a + b + a:b || g)",
            )
    factors = [tk.norm(a, b) for _, a, b in tk.split(lo, hi, ("*",))]
    if any(not f for f in factors):
        tk.error("empty factor in '*'", lo, end=hi)
    out = []
    for size in range(1, len(factors) + 1):
        for combo in _combinations(factors, size):
            out.append(":".join(combo))
    return out


def _combinations(items: list[str], size: int):
    if size == 0:
        yield []
        return
    for i in range(len(items) - size + 1):
        for rest in _combinations(items[i + 1 :], size - 1):
            yield [items[i], *rest]


def _parse_groups(tk: _Tokens, lo: int, hi: int) -> list[str]:
    """Grouping factors right of the bar, after '+' and '/' expansion."""
    groups: list[str] = []
    for sep, a, b in tk.split(lo, hi, ("+", "-")):
        if sep >= 0 and tk[sep].text == "-":
            tk.error("cannot subtract a grouping factor", sep)
        if a == b:
            tk.error("empty grouping factor", sep if sep >= 0 else lo)
        nests = []
        for sep2, c, d in tk.split(a, b, ("/",)):
            if c == d:
                tk.error("empty grouping factor around '/'", sep2 if sep2 >= 0 else c)
            nests.append(_parse_interaction(tk, c, d))
        # lme4's findbars: a/b/c -> c:b:a, b:a, a
        for k in range(len(nests), 0, -1):
            g = ":".join(name for part in reversed(nests[:k]) for name in part)
            if g not in groups:
                groups.append(g)
    return groups


def _parse_interaction(tk: _Tokens, lo: int, hi: int) -> list[str]:
    names = []
    for sep, a, b in tk.split(lo, hi, (":",)):
        if a == b:
            tk.error("empty name around ':' in grouping factor", sep if sep >= 0 else lo)
        if b - a != 1 or tk[a].kind not in ("name", "bq"):
            tk.error(
                "grouping factor must be a column name or an interaction of column names (a:b)",
                a,
                end=b,
                hint="compute the grouping variable as a data column first",
            )
        names.append(quote_name(tk[a].value))
    return names


def group_variables(group: str) -> tuple[str, ...]:
    """Column names of a grouping expression: ``"a:`b c`"`` -> ``("a", "b c")``."""
    toks = [t for t in tokenize(group) if not (t.kind == "op" and t.text == ":")]
    return tuple(t.value for t in toks)
