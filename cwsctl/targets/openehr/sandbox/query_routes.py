"""The openEHR sandbox's AQL endpoint (``/query/aql``, with EHRbase's fetch/offset/limit rules)
and ``GET /ehrbase/rest/status``."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cwsctl.targets.openehr.sandbox import aql
from cwsctl.targets.openehr.sandbox.context import OpenEhrContext
from cwsctl.targets.openehr.sandbox.http import (
    EHRBASE_VERSIONS,
    SPECS_VERSION,
    BadRequest,
    _get_parameters,
    _whole,
    base,
    error,
    json_answer,
    read_json,
    with_uid,
)
from cwsctl.targets.openehr.sandbox.store import Ehr


class QueryRoutes:
    """AQL over every EHR and latest composition, and the status, over one
    :class:`OpenEhrContext`."""

    def __init__(self, context: OpenEhrContext) -> None:
        self.context = context

    def aql_ehr_document(self, ehr: Ehr) -> dict[str, Any]:
        """The EHR as AQL sees it: the EHR_STATUS contained (``e/ehr_status/subject/…``)."""
        status = self.context.store.version(ehr.status_id)
        assert status is not None
        return {**self.context.ehr_document(ehr), "ehr_status": with_uid(status)}

    # -- query ----------------------------------------------------------------------------------
    async def query(self, request: Request) -> Response:
        """``POST /query/aql`` (JSON) or ``GET /query/aql?q=…``, with EHRbase's limit rules."""
        if request.method == "POST":
            document = read_json(await request.body(), request, what="the query")
            if not isinstance(document, dict):
                return error(400, 'the body must be {"q": AQL, "query_parameters": {…}, …}')
            text = document.get("q")
            parameters = document.get("query_parameters") or {}
            offset, fetch = document.get("offset"), document.get("fetch")
        else:
            params = request.query_params
            text = params.get("q")
            parameters = _get_parameters(request)
            offset, fetch = params.get("offset"), params.get("fetch")
        if not isinstance(text, str) or not text.strip():
            return error(400, "q (the AQL text) is required")
        if not isinstance(parameters, dict):
            return error(400, "query_parameters must be an object of name: value")
        offset, fetch = _whole(offset, "offset"), _whole(fetch, "fetch")
        try:
            query = aql.parse(text)
        except aql.AqlError as exc:
            return error(400, str(exc))
        meta: dict[str, Any] = {
            "_href": f"{base(request)}/query/aql",
            "_type": "RESULTSET",
            "_schema_version": SPECS_VERSION,
            "_created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        }
        if self.context.default_limit is not None:
            meta["default-limit"] = self.context.default_limit
        if self.context.max_fetch is not None:
            meta["max-fetch"] = self.context.max_fetch
        limit, start = self._limits(query, fetch, offset)
        try:
            unlimited = dataclasses.replace(query, limit=None, offset=None)  # applied below
            rows = aql.execute(
                unlimited, parameters, self._ehr_documents(), self._composition_documents()
            )
            executed = aql.substituted(query, text, parameters)
        except aql.AqlError as exc:
            return error(400, str(exc))
        meta["_executed_aql"] = executed
        if limit is not None:
            rows = rows[start : start + limit]
            meta["fetch"] = limit
            meta["offset"] = start
        elif start:
            rows = rows[start:]
        meta["resultsize"] = len(rows)
        return json_answer(
            {
                "meta": meta,
                "q": text,
                "columns": [{"name": c.name, "path": c.path.text} for c in query.columns],
                "rows": rows,
            }
        )

    def _limits(
        self, query: aql.Query, fetch: int | None, offset: int | None
    ) -> tuple[int | None, int]:
        """(limit, offset) as ``AqlLimitPostProcessor`` decides; BadRequest(422) otherwise."""
        if (
            fetch is not None
            and self.context.max_fetch is not None
            and fetch > self.context.max_fetch
        ):
            raise BadRequest(
                422, f"Fetch parameter {fetch} exceeds maximum fetch {self.context.max_fetch}"
            )
        if fetch is None:
            if offset is not None:
                raise BadRequest(422, "Query parameter for offset provided, but no fetch parameter")
            limit = query.limit
        elif query.limit is None:
            limit = fetch
        elif self.context.fetch_precedence == "reject":
            raise BadRequest(
                422,
                "Query contains a LIMIT clause, fetch and offset parameters must not be used "
                "(with fetch precedence REJECT)",
            )
        else:
            if query.offset is not None:
                raise BadRequest(
                    422,
                    "Query contains a OFFSET clause, fetch parameter must not be used (with fetch "
                    "precedence MIN_FETCH)",
                )
            limit = min(query.limit, fetch)
        if limit is None:
            limit = self.context.default_limit
        start = offset if offset is not None else (query.offset or 0)
        return limit, start

    def _ehr_documents(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.ehr_id, self.aql_ehr_document(e)) for e in self.context.store.ehrs()]

    def _composition_documents(self) -> list[tuple[str, dict[str, Any]]]:
        return [(v.ehr_id, with_uid(v)) for v in self.context.store.latest_compositions()]

    # -- status ----------------------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        """``GET /ehrbase/rest/status``: versions, ``ehrbase_version`` per If-Match mode."""
        import platform

        return json_answer(
            {
                "ehrbase_version": EHRBASE_VERSIONS[self.context.if_match_mode],
                "openehr_sdk_version": "sandbox",
                "archie_version": "sandbox",
                "jvm_version": f"none (cwsctl sandbox, Python {platform.python_version()})",
                "os_version": platform.system(),
                "postgres_version": "none (SQLite)",
            }
        )
