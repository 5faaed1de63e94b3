"""openEHR AQL queries: ``--param`` values, the paging rules, EHRbase's hints, and the pager.

Queries are ``POST /query/aql`` with ``{"q", "query_parameters", "offset", "fetch"}`` (the
release's names, not the v0.1 proposal's ``aql``/``aqlParameters``) answering
``{"columns": [{"name", "path"}], "rows": [[…]]}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cwsctl.core.errors import ClientRequestError, InputError
from cwsctl.targets.openehr.answers import fail, json_document

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient, ApiResponse

JSON = "application/json"


#: An AQL parameter name (written ``$name`` in the query).
_PARAM_NAME = re.compile(r"\$?([A-Za-z_][A-Za-z0-9_]*)")
#: Rows per page for ``query --all`` without ``--limit``.
DEFAULT_PAGE_SIZE = 1000
#: Rows ``query --all`` writes at most unless ``--max-rows`` says otherwise.
DEFAULT_MAX_ROWS = 100_000


def parse_query_parameter(text: str) -> tuple[str, Any]:
    """``name=value`` (a string, always) or ``name:=JSON`` (a typed value: ``n:=5``, ``ok:=true``).

    A leading ``$`` on the name is dropped (AQL writes ``$name``).
    """
    name, sep, value = text.partition("=")
    if not sep:
        raise InputError(f"bad --param {text!r}", hint="use --param name=value or name:=JSON")
    typed = name.endswith(":")
    name = name.removesuffix(":")
    match = _PARAM_NAME.fullmatch(name.strip())
    if not match:
        raise InputError(
            f"bad --param name {name!r}",
            hint="a parameter name is letters, digits and _, as $name in the query",
        )
    if not typed:
        return match.group(1), value
    try:
        return match.group(1), json.loads(value)
    except ValueError:
        raise InputError(
            f"--param {name}:= needs a JSON value, not {value!r}",
            hint='e.g. --param n:=5, --param flag:=true, --param ids:=\'["a","b"]\'',
        ) from None


@dataclass
class ResultPage:
    """One page of an AQL result set."""

    offset: int
    columns: list[dict[str, Any]]
    rows: list[list[Any]]
    document: dict[str, Any] = field(repr=False)
    response: ApiResponse = field(repr=False)

    @property
    def column_names(self) -> list[str]:
        """:func:`column_names` of this page's columns."""
        return column_names(self.columns, len(self.rows[0]) if self.rows else 0)


def column_names(columns: list[dict[str, Any]], width: int = 0) -> list[str]:
    """Unique names for the result columns: each column's ``name``, else its ``path``, else
    ``#n``; a repeated name gets ``_2``, ``_3``… (they become CSV headers and JSON keys)."""
    names: list[str] = []
    seen: set[str] = set()
    count = max(len(columns), width)
    for index in range(count):
        column = columns[index] if index < len(columns) else {}
        base = str(column.get("name") or column.get("path") or f"#{index + 1}")
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(name)
    return names


def query_body(
    q: str, parameters: Mapping[str, Any] | None, offset: int | None, fetch: int | None
) -> bytes:
    """The ``POST /query/aql`` body; absent fields are left out."""
    document: dict[str, Any] = {"q": q}
    if parameters:
        document["query_parameters"] = dict(parameters)
    if offset is not None:
        document["offset"] = offset
    if fetch is not None:
        document["fetch"] = fetch
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def query_page(
    client: ApiClient,
    q: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    offset: int | None = None,
    fetch: int | None = None,
) -> ResultPage:
    """Run ``q`` once (``POST /query/aql``) and read one page of its result set.

    An ``offset`` needs a ``fetch`` (EHRbase answers 422 to an offset alone): InputError.
    """
    response = _query_response(client, q, parameters, offset, fetch)
    if not response.ok:
        raise fail(client, response, hint=_query_hint(response))
    return _result_page(response, offset)


def _query_response(
    client: ApiClient,
    q: str,
    parameters: Mapping[str, Any] | None,
    offset: int | None,
    fetch: int | None,
) -> ApiResponse:
    if not q.strip():
        raise InputError("the AQL query is empty")
    check_paging(q, offset, fetch)
    body = query_body(q, parameters, offset, fetch)
    return client.request("POST", "/query/aql", body, {"Content-Type": JSON})


def _result_page(response: ApiResponse, offset: int | None) -> ResultPage:
    document = json_document(response)
    if response.status == 204 or document is None:
        document = {"columns": [], "rows": []}
    rows = document.get("rows") if isinstance(document, dict) else None
    columns = document.get("columns") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not isinstance(columns or [], list):
        raise ClientRequestError(
            "the query answer is not a result set (no 'rows' list)",
            hint="the server's answer does not follow the openEHR Query API",
        )
    clean_rows = [row if isinstance(row, list) else [row] for row in rows]
    clean_columns = [c if isinstance(c, dict) else {"name": str(c)} for c in columns or []]
    assert isinstance(document, dict)
    return ResultPage(offset or 0, clean_columns, clean_rows, document, response)


_MAX_FETCH = re.compile(r"exceeds maximum fetch (\d+)", re.IGNORECASE)
_MAX_LIMIT = re.compile(r"exceeds maximum limit (\d+)", re.IGNORECASE)


def max_fetch_of(response: ApiResponse) -> int | None:
    """M in EHRbase's 422 "Fetch parameter N exceeds maximum fetch M" (``max-fetch`` is set)."""
    if response.status != 422:
        return None
    match = _MAX_FETCH.search(response.error_message())
    return int(match.group(1)) if match else None


def _query_hint(response: ApiResponse) -> str | None:
    if response.status == 400:
        return "the server rejected the query: check the AQL and its --param values"
    if response.status != 422:
        return None
    text = response.error_message()
    allowed = max_fetch_of(response)
    if allowed is not None:
        return (
            f"the server returns at most {allowed} rows per request: use --limit {allowed} or "
            "less, or --all (which pages within that)"
        )
    match = _MAX_LIMIT.search(text)
    if match:
        return f"the server allows at most LIMIT {match.group(1)} in the AQL: lower it"
    lowered = text.lower()
    if "limit clause" in lowered or ("offset" in lowered and "aql" in lowered):
        return (
            "the AQL has its own LIMIT/OFFSET: drop --limit/--offset, or drop the clause and "
            "page with --limit/--offset or --all"
        )
    if "offset" in lowered and "fetch" in lowered:
        return "an offset needs a fetch: give --limit with --offset"
    return "the server refused the query as unprocessable: see its message"


_STRINGS_AND_COMMENTS = re.compile(
    r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|--[^\n]*|/\*.*?\*/", re.DOTALL
)
_PAGING_CLAUSE = re.compile(
    r"(?<![\w/.\[$])(LIMIT|OFFSET)\s+(?:\d|\$)|\bSELECT\s+(?:DISTINCT\s+)?(TOP)\s+\d",
    re.IGNORECASE,
)


def check_paging(
    q: str, offset: int | None, fetch: int | None, *, all_pages: bool = False
) -> list[str]:
    """The AQL's own paging clauses (:func:`paging_clauses`), once what no server takes is
    refused (InputError, exit 2): an ``offset`` without a ``fetch`` (EHRbase: 422) unless
    ``all_pages`` (which sends one), and a ``fetch`` or ``offset`` next to the AQL's own
    LIMIT/OFFSET/TOP (EHRbase refuses them with a LIMIT, 422, or silently takes the smaller)."""
    if offset is not None and fetch is None and not all_pages:
        raise InputError(
            "--offset needs --limit: openEHR servers refuse an offset without a fetch",
            hint="give --offset N --limit M, or --all (which pages from --offset)",
        )
    clauses = paging_clauses(q)
    if clauses and (offset is not None or fetch is not None):
        raise InputError(
            f"the AQL has its own {'/'.join(clauses)}: --limit and --offset do not go with it",
            hint="drop --limit/--offset (the query runs as written), or drop the clause from "
            "the AQL and page with --limit/--offset or --all",
        )
    return clauses


def paging_clauses(q: str) -> list[str]:
    """The AQL's own paging clauses (``LIMIT``, ``OFFSET``, ``TOP``), upper case, in order;
    words inside string literals and comments do not count."""
    bare = _STRINGS_AND_COMMENTS.sub(" ", q)
    found: list[str] = []
    for match in _PAGING_CLAUSE.finditer(bare):
        word = (match.group(1) or match.group(2)).upper()
        if word not in found:
            found.append(word)
    return found


class RowCapError(ClientRequestError):
    """``query --all`` stopped at its row cap with more rows to come (exit 4): the rows written
    are complete, the result set is not."""


def query_pages(
    client: ApiClient,
    q: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    offset: int = 0,
    page_size: int | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    notice: Callable[[str], None] | None = None,
) -> Iterator[ResultPage]:
    """Every page of ``q``'s result set, from ``offset``, ``page_size`` rows at a time, and at
    most ``max_rows`` rows in all.

    Pages are requested one after another (each a bounded request of its own) and yielded as they
    come; nothing is kept from one page to the next. Paging stops after a page shorter than the
    fetch the server applied (``meta.fetch`` when it says, else the fetch asked), or an empty one.
    A server that refuses the page size with EHRbase's 422 "Fetch parameter N exceeds maximum
    fetch M" is asked again with pages of M (``notice`` is told). When ``max_rows`` rows are
    yielded and the server has more (the last page asks for one row beyond the cap to know),
    :class:`RowCapError` is raised after the last page: a server that always answers a full
    page cannot keep a job running forever. A server that answers for another offset than asked
    (``meta.offset``) is an error rather than an endless loop.

    ``page_size`` None is :data:`DEFAULT_PAGE_SIZE`. A query with its own LIMIT/OFFSET/TOP
    (:func:`paging_clauses`) is never paged past the user's limit: it runs once, as written,
    without fetch or offset (EHRbase refuses both next to a LIMIT, or would take the smaller),
    still within ``max_rows``; with a ``page_size`` or ``offset`` it is an InputError.
    """
    if page_size is not None and page_size < 1:
        raise InputError("the page size must be at least 1")
    if max_rows < 1:
        raise InputError("--max-rows must be at least 1")
    if check_paging(q, offset or None, page_size, all_pages=True):
        page = query_page(client, q, parameters)
        more = len(page.rows) > max_rows
        page.rows = page.rows[:max_rows]
        yield page
        if more:
            raise RowCapError(
                f"stopped at {max_rows} rows (--max-rows): the result set has more",
                hint="raise --max-rows, or lower the query's own LIMIT",
            )
        return
    page_size = page_size or DEFAULT_PAGE_SIZE
    written = 0
    while True:
        left = max_rows - written
        fetch = min(page_size, left + 1)
        response = _query_response(client, q, parameters, offset, fetch)
        allowed = max_fetch_of(response)
        if allowed is not None and 0 < allowed < fetch:
            page_size = allowed
            if notice is not None:
                notice(f"the server returns at most {allowed} rows per request: pages of {allowed}")
            continue
        if not response.ok:
            raise fail(client, response, hint=_query_hint(response))
        page = _result_page(response, offset)
        applied = fetch
        meta = page.document.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        if isinstance(meta.get("fetch"), int) and meta["fetch"] > 0:
            applied = min(applied, int(meta["fetch"]))
        if isinstance(meta.get("offset"), int) and meta["offset"] != offset:
            raise ClientRequestError(
                f"asked for rows from offset {offset}, the server answered from {meta['offset']}",
                hint="run the query without --all, with --offset and --limit",
            )
        more = len(page.rows) > left
        if more:
            page.rows = page.rows[:left]
        yield page
        written += len(page.rows)
        if more:
            raise RowCapError(
                f"stopped at {max_rows} rows (--max-rows): the result set has more",
                hint=f"raise --max-rows, narrow the query, or go on with --offset "
                f"{offset + len(page.rows)} (add ORDER BY for a stable order)",
            )
        if len(page.rows) < applied or not page.rows:
            return
        offset += len(page.rows)
