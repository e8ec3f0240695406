"""Label selectors: parsing and matching.

Grammar (Calico's selector syntax, the subset felix-py supports)::

    expr    := and ( "||" and )*
    and     := unary ( "&&" unary )*
    unary   := "!" unary | primary
    primary := "(" expr ")" | "all()" | "has(" KEY ")"
             | KEY "==" STRING | KEY "!=" STRING
             | KEY "in" "{" [STRING ("," STRING)*] "}" | KEY "not in" "{" ... "}"

A parsed selector is an immutable tree with a canonical text form (``str(sel)``): two
selectors that print alike select alike, so the canonical text names the ipset built for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


class SelectorError(ValueError):
    """A selector that does not parse."""


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<op>\|\||&&|==|!=|!|\(|\)|\{|\}|,)
     |(?P<str>"[^"]*"|'[^']*')
     |(?P<word>[A-Za-z0-9_./\-]+)
    )""", re.VERBOSE)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unexpected character {text[pos:].lstrip()[:1]!r} at "
                                f"position {pos} in selector {text!r}")
        out.append(m.group(m.lastgroup))
        pos = m.end()
    return out


class Selector:
    def evaluate(self, labels: dict) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def label_keys(self) -> frozenset[str]:
        """The label keys this selector looks at."""
        return frozenset()


@dataclass(frozen=True)
class All(Selector):
    def evaluate(self, labels):
        return True

    def __str__(self):
        return "all()"


@dataclass(frozen=True)
class Has(Selector):
    key: str

    def evaluate(self, labels):
        return self.key in labels

    def label_keys(self):
        return frozenset([self.key])

    def __str__(self):
        return f"has({self.key})"


@dataclass(frozen=True)
class Equals(Selector):
    key: str
    value: str
    negate: bool = False

    def evaluate(self, labels):
        return (labels.get(self.key) == self.value) != self.negate

    def label_keys(self):
        return frozenset([self.key])

    def __str__(self):
        return f'{self.key} {"!=" if self.negate else "=="} "{self.value}"'


@dataclass(frozen=True)
class In(Selector):
    key: str
    values: frozenset
    negate: bool = False

    def evaluate(self, labels):
        return (labels.get(self.key) in self.values) != self.negate

    def label_keys(self):
        return frozenset([self.key])

    def __str__(self):
        vals = ", ".join(f'"{v}"' for v in sorted(self.values))
        return f'{self.key} {"not in" if self.negate else "in"} {{{vals}}}'


@dataclass(frozen=True)
class Not(Selector):
    inner: Selector

    def evaluate(self, labels):
        return not self.inner.evaluate(labels)

    def label_keys(self):
        return self.inner.label_keys()

    def __str__(self):
        return f"!{_wrap(self.inner)}"


@dataclass(frozen=True)
class And(Selector):
    terms: tuple

    def evaluate(self, labels):
        return all(t.evaluate(labels) for t in self.terms)

    def label_keys(self):
        return frozenset().union(*(t.label_keys() for t in self.terms))

    def __str__(self):
        return " && ".join(_wrap(t) for t in self.terms)


@dataclass(frozen=True)
class Or(Selector):
    terms: tuple

    def evaluate(self, labels):
        return any(t.evaluate(labels) for t in self.terms)

    def label_keys(self):
        return frozenset().union(*(t.label_keys() for t in self.terms))

    def __str__(self):
        return " || ".join(_wrap(t) for t in self.terms)


def _wrap(sel: Selector) -> str:
    return f"({sel})" if isinstance(sel, (And, Or)) else str(sel)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def fail(self, what: str):
        near = self.toks[self.i] if self.i < len(self.toks) else "end of selector"
        raise SelectorError(f"{what} near {near!r} in selector {self.text!r}")

    def peek(self, n: int = 0):
        j = self.i + n
        return self.toks[j] if j < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            self.fail(f"expected {expected!r}" if expected else "unexpected end")
        self.i += 1
        return tok

    def parse(self) -> Selector:
        if not self.toks:
            raise SelectorError("empty selector (use all() to select everything)")
        sel = self.expr()
        if self.peek() is not None:
            self.fail("unexpected token")
        return sel

    def expr(self):
        terms = [self.conj()]
        while self.peek() == "||":
            self.take()
            terms.append(self.conj())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def conj(self):
        terms = [self.unary()]
        while self.peek() == "&&":
            self.take()
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def unary(self):
        if self.peek() == "!":
            self.take()
            return Not(self.unary())
        return self.primary()

    def string(self) -> str:
        tok = self.take()
        if len(tok) < 2 or tok[0] not in "\"'" or tok[-1] != tok[0]:
            self.i -= 1
            self.fail("expected a quoted string")
        return tok[1:-1]

    def key(self) -> str:
        tok = self.take()
        if not re.fullmatch(r"[A-Za-z0-9_./\-]+", tok):
            self.i -= 1
            self.fail("expected a label key")
        return tok

    def string_set(self) -> frozenset:
        self.take("{")
        values = []
        if self.peek() != "}":
            values.append(self.string())
            while self.peek() == ",":
                self.take()
                values.append(self.string())
        self.take("}")
        return frozenset(values)

    def primary(self):
        tok = self.peek()
        if tok == "(":
            self.take()
            inner = self.expr()
            self.take(")")
            return inner
        if tok == "all" and self.peek(1) == "(":
            self.take(), self.take("("), self.take(")")
            return All()
        if tok == "has" and self.peek(1) == "(":
            self.take(), self.take("(")
            key = self.key()
            self.take(")")
            return Has(key)
        key = self.key()
        op = self.peek()
        if op in ("==", "!="):
            self.take()
            return Equals(key, self.string(), negate=(op == "!="))
        if op == "in":
            self.take()
            return In(key, self.string_set())
        if op == "not" and self.peek(1) == "in":
            self.take(), self.take()
            return In(key, self.string_set(), negate=True)
        self.fail(f"expected ==, !=, in or not in after label {key!r}")


@lru_cache(maxsize=4096)
def parse_selector(text: str) -> Selector:
    """Parse ``text``; raises SelectorError naming what is wrong and where."""
    return _Parser(text).parse()
