"""Hypothesis strategies for lme4 formula strings (used by test_properties.py)."""

from hypothesis import strategies as st

from jaxlmm.formula import quote_name

NAMES = ("y", "x", "z", "g", "h", "f", "`my var`", "`a|b`", "`c:d`")
NUMERIC = ("x", "z", "`my var`", "`c:d`")
GROUPS = ("g", "h", "f", "`my var`", "`a|b`")

TOKENS = (
    "y", "x", "z", "g", "h", "f", "q", "`my var`", "`x`", "`", "'", '"', "~", "+", "-", "*",
    ":", "/", "|", "||", "(", ")", "[", "]", "{", "}", "0", "1", "2", "1.5e", "offset(",
    "offset", "I(", "log(", "Q(", "^", "**", "%in%", "%", ",", ".", "=", "!", "#", " ", "  ",
    "\t", "\n", "é",
)


@st.composite
def fixed_term(draw):
    a, b = draw(st.sampled_from(NAMES)), draw(st.sampled_from(NAMES))
    x = draw(st.sampled_from(NUMERIC))
    return draw(st.sampled_from([a, f"{a}:{b}", f"{a} * {b}", f"{a}*{b}", f"I({x}^2)",
                                 f"log({x} + 10)", f"({a} + {b})^2", f"{a} %in% {b}"]))


@st.composite
def group_expr(draw):
    a, b, c = (draw(st.sampled_from(GROUPS)) for _ in range(3))
    return draw(st.sampled_from([a, f"{a}:{b}", f"{a}/{b}", f"{a} / {b} / {c}", f"{a} + {b}"]))


@st.composite
def bar_term(draw):
    x, u = draw(st.sampled_from(NUMERIC)), draw(st.sampled_from(NAMES[1:]))
    double = draw(st.booleans())
    lhs = ["1", "0 + " + x, x, f"{x} + {u}", f"1 + {x}", f"{x} - 1", f"-1 + {u}", u]
    if double:
        lhs.append(f"{x} * {u}")
    bar = "||" if double else "|"
    body = draw(st.sampled_from(lhs)) + draw(st.sampled_from([f" {bar} ", bar])) + draw(group_expr())
    return f"({body})"


@st.composite
def valid_formula(draw):
    """A formula in lme4 syntax that the parser must accept: pieces in random order."""
    pieces = [("+", t) for t in draw(st.lists(fixed_term(), max_size=3))]
    pieces += [("+", b) for b in draw(st.lists(bar_term(), min_size=1, max_size=3))]
    pieces += [("+", f"offset({x})") for x in draw(st.lists(st.sampled_from(NUMERIC), max_size=1))]
    icpt = draw(st.sampled_from([None, ("+", "0"), ("+", "1"), ("-", "1")]))
    if icpt:
        pieces.append(icpt)
    pieces = draw(st.permutations(pieces))
    seps = draw(st.lists(st.sampled_from(["", " ", "  "]), min_size=2, max_size=2))
    rhs = ""
    for i, (op, text) in enumerate(pieces):
        rhs += (("" if op == "+" else "-") if i == 0 else seps[0] + op + seps[1]) + text
    resp = draw(st.sampled_from(["y", "`my var`", "resp.1", "`a b`"]))
    return f"{resp}{seps[0]}~{seps[1]}{rhs}"


def _mutate(draw, s, tokens, edits, start=0):
    """``s`` with ``edits`` characters deleted or tokens inserted / written over, at or
    after position ``start``."""
    for _ in range(edits):
        i = draw(st.integers(start, len(s)))
        tok = draw(st.sampled_from(tokens))
        kind = draw(st.sampled_from(["delete", "insert", "replace"]))
        if kind == "delete":
            s = s[:i] + s[i + 1:]
        elif kind == "insert":
            s = s[:i] + tok + s[i:]
        else:
            s = s[:i] + tok + s[i + len(tok):]
    return s


@st.composite
def mutated_formula(draw):
    """A valid formula with a few characters deleted, inserted or replaced."""
    return _mutate(draw, draw(valid_formula()), TOKENS, draw(st.integers(1, 3)))


token_soup = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)

garbled_formula = st.one_of(token_soup, mutated_formula(), st.text(max_size=40))


FIT_BASES = {"sleepstudy": "Reaction ~ Days + (Days | Subject)",
             "Penicillin": "diameter ~ 1 + (1 | plate) + (1 | sample)"}
FIT_TOKENS = ("Reaction", "Days", "Subject", "diameter", "plate", "sample", "q", "`Days`", "~",
              "+", "-", "*", ":", "/", "|", "||", "(", ")", "0", "1", " ", "offset(Days)",
              "I(Days^2)", "log(", "`")


@st.composite
def mutated_fit_formula(draw):
    """(dataset, formula): a FIT_BASES formula with one or two tokens inserted, replaced or
    deleted right of '~' (a small vocabulary: the formulas that fit share few designs)."""
    name = draw(st.sampled_from(sorted(FIT_BASES)))
    s = FIT_BASES[name]
    return name, _mutate(draw, s, FIT_TOKENS, draw(st.integers(1, 2)), s.index("~"))


def rebuild(parsed) -> str:
    """A formula string from a ParsedFormula: response ~ fixed + offsets + bar terms."""
    parts = [parsed.fixed] + [f"offset({o})" for o in parsed.offsets]
    parts += [f"({r.expr} | {r.group})" for r in parsed.random]
    return f"{quote_name(parsed.response)} ~ " + " + ".join(parts)


def content(parsed):
    """A ParsedFormula without its source-text fields."""
    return (parsed.response, parsed.fixed, tuple((r.expr, r.group) for r in parsed.random),
            parsed.offsets)
