"""A small subset of AQL for the openEHR sandbox: a hand-written tokenizer, parser and evaluator.

No AQL library on PyPI is worth a dependency (the packages named "aql" are for ArangoDB or SQL
builders), and the sandbox needs only enough to list EHRs and compositions. The subset::

    SELECT item [, item …]
    FROM EHR e [ '[' ehr_id/value = VALUE ']' ] [CONTAINS COMPOSITION c [ '[' ARCHETYPE_ID ']' ]]
       | FROM COMPOSITION c [ '[' ARCHETYPE_ID ']' ]
    [WHERE condition [AND condition …]]
    [ORDER BY path [ASC|DESC] [, …]]
    [LIMIT n [OFFSET m]]

    item      := path [AS alias]
    path      := variable | variable/attribute[/attribute …]     (no [predicates] inside paths)
    condition := path (= | != | <> | < | <= | > | >=) VALUE
    VALUE     := 'string' | "string" | number | true | false | $parameter

Keywords are case-insensitive. A path is a plain walk through the object's canonical JSON: the
EHR as ``GET /ehr/{ehr_id}`` answers it (``e/ehr_id/value``, ``e/time_created/value``,
``e/ehr_status/subject/external_ref/id/value``, ``…/external_ref/namespace``), a composition as
stored with its ``uid`` set to the latest version uid (``c/uid/value``, ``c/name/value``,
``c/archetype_details/template_id/value``, ``c/context/start_time/value``, …); a missing
attribute is ``null``. The archetype predicate on COMPOSITION compares ``archetype_node_id``.
Only the latest, non-deleted version of each composition is seen. Rows come in creation order
unless ORDER BY says otherwise; ``null`` sorts first.

Anything else — OR, NOT, EXISTS, MATCHES, LIKE, functions, DISTINCT, TOP, paths with
predicates, other classes (OBSERVATION, VERSION, …) — raises :class:`AqlError` with "not
supported by the sandbox" (the API answers 400).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SUBSET = (
    "the sandbox answers SELECT paths FROM EHR e [CONTAINS COMPOSITION c] [WHERE path = value "
    "[AND …]] [ORDER BY path [ASC|DESC]] [LIMIT n [OFFSET m]] (see cwsctl sandbox serve --help)"
)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<param>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>-?\d+(?:\.\d+)?(?![A-Za-z_]))
  | (?P<op>!=|<>|>=|<=|=|>|<)
  | (?P<punct>[,\[\]()])
  | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*(?:/[A-Za-z_][A-Za-z0-9_.\-]*)*)
    """,
    re.VERBOSE,
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS = {
    "select", "from", "contains", "where", "and", "order", "by", "limit", "offset", "as",
    "asc", "desc", "ascending", "descending", "or", "not", "exists", "matches", "like",
    "distinct", "top", "true", "false", "null",
}  # fmt: skip
_UNSUPPORTED_WORDS = {"or", "not", "exists", "matches", "like", "distinct", "top", "null"}


class AqlError(ValueError):
    """The query is malformed, outside the subset, or lacks a parameter (→ 400)."""


def unsupported(what: str) -> AqlError:
    """An AqlError for something outside the subset."""
    return AqlError(f"{what}: not supported by the sandbox; {SUBSET}")


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    @property
    def keyword(self) -> str | None:
        """The lower-case keyword this word is, if it is one."""
        lowered = self.text.lower()
        return lowered if self.kind == "word" and lowered in _KEYWORDS else None


@dataclass(frozen=True)
class Path:
    variable: str
    attributes: tuple[str, ...]

    @property
    def text(self) -> str:
        """As a result set column's ``path``: ``/ehr_id/value`` (``/`` for a whole object)."""
        return "/" + "/".join(self.attributes)

    def value(self, row: Mapping[str, Any]) -> Any:
        """Walk ``row[variable]`` along the attributes; None where one is missing."""
        current = row.get(self.variable)
        for name in self.attributes:
            if not isinstance(current, dict):
                return None
            current = current.get(name)
        return current


@dataclass(frozen=True)
class Value:
    literal: Any = None
    parameter: str | None = None

    def resolve(self, parameters: Mapping[str, Any]) -> Any:
        """The literal, or the parameter's value."""
        if self.parameter is None:
            return self.literal
        if self.parameter not in parameters:
            raise AqlError(f"query parameter ${self.parameter} has no value (query_parameters)")
        return parameters[self.parameter]


@dataclass(frozen=True)
class Condition:
    path: Path
    op: str
    value: Value


@dataclass(frozen=True)
class Column:
    name: str
    path: Path


@dataclass(frozen=True)
class Query:
    """A parsed query of the subset."""

    columns: tuple[Column, ...]
    ehr_variable: str | None
    composition_variable: str | None
    archetype_id: str | None
    where: tuple[Condition, ...]
    order: tuple[tuple[Path, bool], ...]  # (path, descending)
    limit: int | None
    offset: int | None
    tokens: tuple[Token, ...]


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` (whitespace dropped)."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise unsupported(f"unexpected {text[position : position + 20]!r} at offset {position}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group(), match.start(), match.end()))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.at = 0

    def peek(self) -> Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def next(self, what: str) -> Token:
        token = self.peek()
        if token is None:
            raise AqlError(f"the query ends where {what} was expected")
        self.at += 1
        return token

    def keyword(self, *words: str) -> str | None:
        """Consume the next token if it is one of ``words``."""
        token = self.peek()
        if token is not None and token.keyword in words:
            self.at += 1
            return token.keyword
        return None

    def expect(self, word: str) -> None:
        token = self.next(word.upper())
        if token.keyword != word:
            raise _unexpected(token, word.upper())

    def check_supported(self) -> None:
        token = self.peek()
        if token is not None and token.keyword in _UNSUPPORTED_WORDS:
            raise unsupported(token.text.upper())

    def path(self) -> Path:
        self.check_supported()
        token = self.next("a path")
        if token.kind != "word" or token.keyword is not None:
            raise _unexpected(token, "a path such as e/ehr_id/value")
        variable, *attributes = token.text.split("/")
        for name in (variable, *attributes):
            if not _IDENTIFIER.match(name):
                raise unsupported(f"path {token.text!r}")
        following = self.peek()
        if following is not None and following.text in ("[", "("):
            what = "a function call" if following.text == "(" else "a path with [predicates]"
            raise unsupported(f"{what} after {token.text!r}")
        return Path(variable, tuple(attributes))

    def value(self) -> Value:
        self.check_supported()
        token = self.next("a value")
        if token.kind == "string":
            return Value(literal=_unquote(token.text))
        if token.kind == "number":
            return Value(literal=float(token.text) if "." in token.text else int(token.text))
        if token.kind == "param":
            return Value(parameter=token.text[1:])
        if token.keyword in ("true", "false"):
            return Value(literal=token.keyword == "true")
        raise _unexpected(token, "a value ('text', a number, true, false or $parameter)")

    def whole_number(self, what: str) -> int:
        token = self.next(what)
        if token.kind != "number" or not token.text.isdigit():
            raise _unexpected(token, f"a whole number after {what}")
        return int(token.text)

    def condition(self) -> Condition:
        if self.peek() is not None and self.peek().text == "(":  # type: ignore[union-attr]
            raise unsupported("parentheses in WHERE")
        path = self.path()
        token = self.next("a comparison")
        if token.kind != "op":
            self.at -= 1
            self.check_supported()
            raise _unexpected(token, "=, !=, <, <=, > or >=")
        op = "!=" if token.text == "<>" else token.text
        return Condition(path, op, self.value())

    def parse(self) -> Query:
        self.expect("select")
        self.check_supported()
        columns: list[Column] = []
        while True:
            path = self.path()
            alias = None
            if self.keyword("as"):
                token = self.next("an alias")
                if token.kind != "word" or not _IDENTIFIER.match(token.text) or token.keyword:
                    raise _unexpected(token, "an alias name")
                alias = token.text
            columns.append(Column(alias or f"#{len(columns)}", path))
            after = self.peek()
            if after is None or after.text != ",":
                break
            self.at += 1
        self.expect("from")
        ehr_var, comp_var, archetype, where = self.from_clause()
        if self.keyword("where"):
            where.append(self.condition())
            while self.keyword("and"):
                where.append(self.condition())
            self.check_supported()
        order: list[tuple[Path, bool]] = []
        if self.keyword("order"):
            self.expect("by")
            while True:
                path = self.path()
                direction = self.keyword("asc", "ascending", "desc", "descending")
                order.append((path, direction in ("desc", "descending")))
                after = self.peek()
                if after is None or after.text != ",":
                    break
                self.at += 1
        limit = offset = None
        if self.keyword("limit"):  # AQL's grammar: LIMIT n [OFFSET m], never OFFSET alone
            limit = self.whole_number("LIMIT")
            if self.keyword("offset"):
                offset = self.whole_number("OFFSET")
        rest = self.peek()
        if rest is not None:
            self.check_supported()
            raise unsupported(f"{rest.text!r} at offset {rest.start}")
        query = Query(
            tuple(columns),
            ehr_var,
            comp_var,
            archetype,
            tuple(where),
            tuple(order),
            limit,
            offset,
            tuple(self.tokens),
        )
        known = {v for v in (ehr_var, comp_var) if v}
        paths = [c.path for c in columns] + [c.path for c in where] + [p for p, _ in order]
        for path in paths:
            if path.variable not in known:
                raise AqlError(
                    f"unknown variable {path.variable!r} (FROM declares {sorted(known)})"
                )
        return query

    def from_clause(self) -> tuple[str | None, str | None, str | None, list[Condition]]:
        where: list[Condition] = []
        kind, variable = self.class_and_variable()
        if kind == "COMPOSITION":
            return None, variable, self.archetype_predicate(), where
        if kind != "EHR":
            raise unsupported(f"FROM {kind}")
        token = self.peek()
        if token is not None and token.text == "[":
            self.at += 1
            condition = self.condition()
            if condition.path.variable != "ehr_id" or condition.path.attributes != ("value",):
                raise unsupported("an EHR predicate other than [ehr_id/value = …]")
            where.append(
                Condition(Path(variable, ("ehr_id", "value")), condition.op, condition.value)
            )
            if self.next("]").text != "]":
                raise AqlError("the EHR predicate is not closed with ]")
        if not self.keyword("contains"):
            return variable, None, None, where
        self.check_supported()
        kind, comp_var = self.class_and_variable()
        if kind != "COMPOSITION":
            raise unsupported(f"CONTAINS {kind}")
        if comp_var == variable:
            raise AqlError(f"variable {variable!r} declared twice")
        archetype = self.archetype_predicate()
        if self.keyword("contains", "and", "or"):
            raise unsupported("more than one CONTAINS")
        return variable, comp_var, archetype, where

    def class_and_variable(self) -> tuple[str, str]:
        token = self.next("a class (EHR or COMPOSITION)")
        if token.kind != "word" or "/" in token.text:
            raise _unexpected(token, "EHR or COMPOSITION")
        variable = self.next("a variable")
        if variable.kind != "word" or not _IDENTIFIER.match(variable.text) or variable.keyword:
            raise _unexpected(variable, f"a variable name after {token.text}")
        return token.text.upper(), variable.text

    def archetype_predicate(self) -> str | None:
        token = self.peek()
        if token is None or token.text != "[":
            return None
        self.at += 1
        archetype = self.next("an archetype id")
        closing = self.next("]")
        if archetype.kind != "word" or closing.text != "]":
            raise unsupported("a COMPOSITION predicate other than [ARCHETYPE_ID]")
        return archetype.text


def parse(text: str) -> Query:
    """Parse ``text``; AqlError if it is malformed or outside the subset."""
    if not text.strip():
        raise AqlError("the query is empty")
    return _Parser(text).parse()


def substituted(query: Query, text: str, parameters: Mapping[str, Any]) -> str:
    """``text`` with each ``$parameter`` replaced by its value (the executed AQL)."""
    parts: list[str] = []
    position = 0
    for token in query.tokens:
        if token.kind == "param" and token.text[1:] in parameters:
            parts.append(text[position : token.start])
            value = parameters[token.text[1:]]
            parts.append(f"'{value}'" if isinstance(value, str) else json.dumps(value))
            position = token.end
    parts.append(text[position:])
    return "".join(parts)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _holds(condition: Condition, row: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    left = condition.path.value(row)
    right = condition.value.resolve(parameters)
    if condition.op in ("=", "!="):
        return _COMPARE[condition.op](left, right)
    comparable = (isinstance(left, str) and isinstance(right, str)) or (
        _is_number(left) and _is_number(right)
    )
    return comparable and _COMPARE[condition.op](left, right)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row_key(path: Path, row: dict[str, Any]) -> tuple[int, Any]:
    return _sort_key(path.value(row))


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if _is_number(value):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    return (4, json.dumps(value, sort_keys=True))


def execute(
    query: Query,
    parameters: Mapping[str, Any],
    ehrs: Iterable[tuple[str, dict[str, Any]]],
    compositions: Iterable[tuple[str, dict[str, Any]]],
) -> list[list[Any]]:
    """The rows of ``query`` (LIMIT/OFFSET applied) over the EHR and composition documents.

    ``ehrs``: (ehr_id, EHR document) in creation order; ``compositions``: (ehr_id, composition
    document), latest non-deleted versions, in creation order.
    """
    rows: list[dict[str, Any]]
    if query.composition_variable is None:
        ehr_variable = query.ehr_variable or ""  # the parser sets one variable at least
        rows = [{ehr_variable: doc} for _, doc in ehrs]
    else:
        by_ehr: dict[str, list[dict[str, Any]]] = {}
        for ehr_id, doc in compositions:
            archetype = doc.get("archetype_node_id")
            if query.archetype_id is None or archetype == query.archetype_id:
                by_ehr.setdefault(ehr_id, []).append(doc)
        rows = []
        if query.ehr_variable is None:
            for docs in by_ehr.values():
                rows.extend({query.composition_variable: doc} for doc in docs)
        else:
            for ehr_id, ehr_doc in ehrs:
                rows.extend(
                    {query.ehr_variable: ehr_doc, query.composition_variable: doc}
                    for doc in by_ehr.get(ehr_id, [])
                )
    for condition in query.where:
        condition.value.resolve(parameters)  # a missing parameter is an error even with no rows
    rows = [r for r in rows if all(_holds(c, r, parameters) for c in query.where)]
    for path, descending in reversed(query.order):
        rows.sort(key=functools.partial(_row_key, path), reverse=descending)
    start = query.offset or 0
    end = None if query.limit is None else start + query.limit
    return [[c.path.value(r) for c in query.columns] for r in rows[start:end]]


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _unexpected(token: Token, expected: str) -> AqlError:
    if token.keyword in _UNSUPPORTED_WORDS:
        return unsupported(token.text.upper())
    return unsupported(f"{token.text!r} at offset {token.start} where {expected} was expected")
