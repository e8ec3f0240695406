"""Selectors: parsing, canonical form, matching, and errors that say where."""

import pytest

from policy.selector import SelectorError, parse_selector

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize("text, matches", [
    ('app == "web"', True),
    ("app == 'db'", False),
    ('app != "db"', True),
    ('missing != "x"', True),             # an absent label is not equal to anything
    ('app in {"web", "api"}', True),
    ('app in {}', False),
    ('app not in {"web"}', False),
    ('missing not in {"web"}', True),
    ("has(tier)", True),
    ("has(missing)", False),
    ("!has(missing)", True),
    ("!!has(tier)", True),
    ("all()", True),
    ('app == "web" && env == "prod"', True),
    ('app == "web" && env == "dev"', False),
    ('app == "db" || env == "prod"', True),
    ('app == "db" || env == "dev"', False),
    ('!(app == "db" || env == "dev")', True),
    ('(app == "web" || app == "db") && !has(missing)', True),
    ('app == "db" || app == "web" && env == "dev"', False),   # && binds tighter than ||
    ('(app == "db" || app == "web") && env == "dev"', False),
    ('app == "web" || app == "db" && env == "dev"', True),
    ("example.com/team == 'a'", False),
])
def test_matching(text, matches):
    assert parse_selector(text).evaluate(LABELS) is matches


def test_canonical_form_names_equal_selectors_alike():
    a = parse_selector("app=='web'&&has( tier )")
    b = parse_selector('app == "web" && has(tier)')
    assert str(a) == str(b) == 'app == "web" && has(tier)'
    assert str(parse_selector("x in {'b','a'}")) == 'x in {"a", "b"}'
    assert str(parse_selector("!(a == 'b' || has(c))")) == '!(a == "b" || has(c))'
    # The canonical text parses back to itself.
    for text in ('a == "b" && (c != "d" || !has(e))', 'k not in {"x", "y"}', "all()"):
        assert str(parse_selector(str(parse_selector(text)))) == str(parse_selector(text))


def test_label_keys():
    assert parse_selector('a == "x" || (has(b) && c in {"y"})').label_keys() == {"a", "b", "c"}


@pytest.mark.parametrize("text, fragment", [
    ("", "empty selector"),
    ('app == ', "unexpected end"),
    ('app == web', "expected a quoted string"),
    ('app = "web"', "unexpected character '='"),
    ('app "web"', "expected ==, !=, in or not in"),
    ('(app == "web"', "expected ')'"),
    ('app == "web")', "unexpected token"),
    ('app == "web" &&', "unexpected end"),
    ("has(tier", "expected ')'"),
    ('app in {"a" "b"}', "expected '}'"),
    ('app == "web" # x', "unexpected character '#'"),
])
def test_errors_name_the_problem(text, fragment):
    with pytest.raises(SelectorError) as e:
        parse_selector(text)
    assert fragment in str(e.value)
