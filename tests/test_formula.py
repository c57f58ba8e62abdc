"""lme4 formula parsing: expansions and error messages."""

import pytest

from jaxlmm.errors import FormulaError, JaxlmmError
from jaxlmm.formula import RandomTermSpec, group_variables, parse_formula


def bars(formula):
    return [(t.expr, t.group) for t in parse_formula(formula).random]


def test_basic_split():
    p = parse_formula("Reaction ~ Days + (Days | Subject)")
    assert p.response == "Reaction"
    assert p.fixed == "Days"
    assert p.random == (RandomTermSpec("1 + Days", "Subject", "(Days | Subject)"),)
    assert p.offsets == ()
    assert p.formula == "Reaction ~ Days + (Days | Subject)"


@pytest.mark.parametrize(
    "lhs, expr",
    [
        ("1", "1"),
        ("Days", "1 + Days"),
        ("1 + Days", "1 + Days"),
        ("0 + Days", "0 + Days"),
        ("Days + 0", "0 + Days"),
        ("Days - 1", "0 + Days"),
        ("-1 + Days", "0 + Days"),
        ("x + z", "1 + x + z"),
        ("0 + f", "0 + f"),
    ],
)
def test_implicit_intercept(lhs, expr):
    assert bars(f"y ~ ({lhs} | g)") == [(expr, "g")]


def test_double_bar():
    assert bars("y ~ (Days || Subject)") == [("1", "Subject"), ("0 + Days", "Subject")]
    assert bars("y ~ (0 + Days || Subject)") == [("0 + Days", "Subject")]
    assert bars("y ~ (x + z || g)") == [("1", "g"), ("0 + x", "g"), ("0 + z", "g")]
    # R's terms(): a*b is a, b, a:b, main effects before interactions
    assert bars("y ~ (a*b + c || g)") == [
        ("1", "g"), ("0 + a", "g"), ("0 + b", "g"), ("0 + c", "g"), ("0 + a:b", "g")
    ]
    src = {t.source for t in parse_formula("y ~ (Days || Subject)").random}
    assert src == {"(Days || Subject)"}


def test_nesting_slash_as_lme4():
    # lme4's findbars: (1 | a/b) -> (1 | b:a) + (1 | a)
    assert bars("y ~ (1 | a/b)") == [("1", "b:a"), ("1", "a")]
    assert bars("y ~ (1 | a/b/c)") == [("1", "c:b:a"), ("1", "b:a"), ("1", "a")]
    assert bars("y ~ (x || a/b)") == [
        ("1", "b:a"), ("1", "a"), ("0 + x", "b:a"), ("0 + x", "a")
    ]


def test_interaction_and_plus_groups():
    assert bars("y ~ (1 | dept:service)") == [("1", "dept:service")]
    assert bars("y ~ (1 | a + b)") == [("1", "a"), ("1", "b")]
    assert group_variables("dept:service") == ("dept", "service")
    assert group_variables("`my g`:h") == ("my g", "h")


def test_several_terms_anywhere_and_fixed_part():
    p = parse_formula("y ~ (1 | g) + x + (0 + x | h) - 1 + z")
    assert p.fixed == "x - 1 + z"
    assert bars(p.formula) == [("1", "g"), ("0 + x", "h")]
    assert parse_formula("y ~ (1|g)").fixed == "1"
    assert parse_formula("y ~ 0 + (1|g)").fixed == "0"
    assert parse_formula("y ~ -1 + x + (1|g)").fixed == "-1 + x"
    assert parse_formula("y ~ x*z + (1|g)").fixed == "x*z"


def test_offset_and_quoted_names():
    p = parse_formula("y ~ x + offset(log(n)) + offset(o2) + (1|g)")
    assert p.offsets == ("log(n)", "o2")
    assert p.fixed == "x"
    q = parse_formula('`my y` ~ `my x` + Q("a b") + (1 | `my g`)')
    assert q.response == "my y"
    assert q.fixed == '`my x` + Q("a b")'
    assert q.random[0].group == "`my g`"
    assert parse_formula('Q("y y") ~ 1').response == "y y"


def test_bar_inside_call_is_fixed():
    # '|' inside a function call is Python's "or", not a random-effects term
    p = parse_formula("y ~ I(a | b) + (1 | g)")
    assert p.fixed == "I(a | b)"
    assert len(p.random) == 1


def caret_col(err: FormulaError) -> int:
    """Column of the caret relative to the quoted formula."""
    lines = str(err).splitlines()
    caret = next(line for line in lines if line.strip().startswith("^"))
    return caret.index("^") - 4


@pytest.mark.parametrize(
    "formula, needle, at",
    [
        ("y ~ (1 | g", "never closed", "(1"),
        ("y ~ x)", "unmatched ')'", ")"),
        ("y ~ [x)", "does not match", ")"),
        ("y x", "no '~'", None),
        ("~ x", "no response", "~"),
        ("log(y) ~ x", "single column name", "log"),
        ("y ~ ( | g)", "nothing left of '|'", "|"),
        ("y ~ (x | )", "no grouping factor", "|"),
        ("y ~ (x || )", "no grouping factor", "||"),
        ("y ~ ((x || g))", "separate top-level term", "(x ||"),
        ("y ~ x * (1 | g)", "separate top-level term", "(1"),
        ("y ~ x | g", "outside parentheses", "|"),
        ("y ~ (1 | factor(g))", "column name", "factor"),
        ("y ~ (0 | g)", "no effects", "(0"),
        ("y ~ x +", "nothing after '+'", "+"),
        ("y ~ x + + z", "empty term", "+ +"),
        ("y ~ (1 | g | h)", "more than one '|'", "| h"),
        ("y ~ x ~ z", "more than one '~'", "~ z"),
        ('y ~ x + "abc', "unterminated string", '"'),
        ("y ~ x - (1 | g)", "subtract", "-"),
        ("y ~ x * offset(o)", "offset() must be", "offset"),
        ("y ~ (x - z | g)", "only '- 1'", "- z"),
        ("y ~ . + (1 | g)", "not supported", "."),
        ("y ~ (a/b || g)", "not supported left of '||'", "/"),
    ],
)
def test_errors_point_at_culprit(formula, needle, at):
    with pytest.raises(FormulaError) as info:
        parse_formula(formula)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, JaxlmmError)
    text = str(err)
    assert needle in text
    assert formula in text  # the formula is quoted
    if at is None:
        assert caret_col(err) == len(formula)
    else:
        assert caret_col(err) == formula.index(at)


def test_empty_formula():
    with pytest.raises(FormulaError, match="empty formula"):
        parse_formula("   ")
    with pytest.raises(FormulaError, match="nothing right of '~'"):
        parse_formula("y ~ ")
