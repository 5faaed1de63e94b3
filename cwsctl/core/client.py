"""The client every kind shares: one bounded, audited request loop.

``ApiClient`` sends requests through the bounded transport (see :mod:`cwsctl.core.transport`) with
a kind's ``httpx.Auth``, retries what is safe to retry, and records every exchange in the audit
log. A kind whose answers are signed puts its verdict in the response's
:data:`VERIFICATION_EXTENSION`; the client keeps it on :class:`ApiResponse` and in the log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import httpx

from cwsctl.core.audit import AuditLog, body_sha256
from cwsctl.core.errors import (
    ClientRequestError,
    CwsError,
    InputError,
    ServerFailureError,
)
from cwsctl.core.headers import check_method, check_name, check_value
from cwsctl.core.jsondoc import loads_json
from cwsctl.core.text import printable
from cwsctl.core.transport.bounded import (
    DEFAULT_TIMEOUT,
    bounded_client,
    size_cap,
)
from cwsctl.core.transport.deadline import exchange_deadline, time_left
from cwsctl.core.transport.errors import IDEMPOTENT_METHODS, RetryableNetworkError, network_error
from cwsctl.core.transport.proxies import describe_proxy, plain_http_via_proxy
from cwsctl.core.urls import (
    check_same_server,
    check_transport_security,
    origin,
    resolve_url,
    without_userinfo,
)
from cwsctl.core.verdict import VerificationResult

VERIFICATION_EXTENSION = "cwsctl.verification"
#: What -v, --dry-run and --curl show instead of a credential meant for another host.
OTHER_HOST_CREDENTIAL = "<not shown: computed for another host (--allow-other-host)>"


@dataclass
class ApiResponse:
    """A complete answer; on a CWS profile, one whose signature was checked (unless switched off)."""

    method: str
    url: str
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    verification: VerificationResult | None
    elapsed_ms: float
    request_headers: Mapping[str, str] = field(default_factory=dict)
    #: What the kind's client knows this status means (see ApiClient.explain), for the error line.
    explanation: str = ""

    @property
    def ok(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status < 300

    @property
    def signature_header(self) -> str | None:
        """The response's Authorization header value, as received."""
        return self.headers.get("authorization")

    @cached_property
    def body_sha256(self) -> str:
        """Hex SHA-256 of the raw body (the audit log and the bulk journal both record it)."""
        return body_sha256(self.body)

    def error_message(self) -> str:
        """The server's error text from its JSON body, else a snippet of the body.

        Understands CWS's ``{"error": …}``, OAuth's ``error_description``, OpenEMR's
        ``validationErrors``/``internalErrors`` envelope and its ``hint`` (which names the
        missing scope), FHIR's ``OperationOutcome`` and the ``{"error", "message"}`` of openEHR
        servers. The client's :attr:`explanation` of the status follows, in parentheses.
        """
        text = self._server_message()
        if not self.explanation:
            return text
        return f"{text} ({self.explanation})" if text else self.explanation

    def _server_message(self) -> str:
        try:
            document = loads_json(self.body)
        except ValueError:
            return printable(self.body[:200].decode("utf-8", "replace"))
        hint = document.get("hint") if isinstance(document, dict) else None
        extra = f"; hint: {printable(hint)}" if isinstance(hint, str) and hint.strip() else ""
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            # {"error": "Bad Request", "message": TEXT} (EHRbase, Spring, OpenEMR): the message
            # is the news; the error label is kept only when it says more than the reason phrase.
            label = document.get("error")
            message = printable(document["message"])
            if isinstance(label, str) and label and label.lower() != self.reason.lower():
                message = f"{printable(label)}: {message}"
            return (message + extra)[:300]
        return (printable(_error_text(document) or str(document), limit=None) + extra)[:300]

    def raise_for_status(self) -> None:
        """Raise ClientRequestError for 3xx and 4xx, ServerFailureError for 5xx.

        A redirect is not followed (credentials stay with the server they were meant for) and is
        not a success: a POST answered 301 created nothing.
        """
        if self.ok or self.status < 300:
            return
        if self.status < 400:
            location = self.headers.get("location")
            where = f" to {printable(location)}" if location else ""
            raise ClientRequestError(
                f"{self.status} {printable(self.reason)}: the server answered with a "
                f"redirect{where}; redirects are not followed and a redirect is not a success",
                hint="use the URL the profile's server means (cwsctl profile init NAME --url …), "
                "or give that path",
            )
        message = f"{self.status} {printable(self.reason)}: {self.error_message()}"
        current = self.headers.get("etag")
        if self.status == 412 and current:
            # A failed precondition names the version that is current now (openEHR: its uid).
            message += f"; latest is {printable(current.removeprefix('W/').strip(chr(34)))}"
        if self.status >= 500:
            raise ServerFailureError(
                message, hint="the server failed; retry later or contact its administrators"
            )
        raise ClientRequestError(message)


def _error_text(document: object) -> str | None:
    """The human part of a JSON error document, for the formats the kinds' servers use."""
    if not isinstance(document, dict):
        return None
    if document.get("resourceType") == "OperationOutcome":
        issues = document.get("issue") or []
        texts = [
            str(i.get("diagnostics") or _details_text(i.get("details")) or i.get("code", ""))
            for i in (issues if isinstance(issues, list) else [])
            if isinstance(i, dict)
        ]
        return "; ".join(t for t in texts if t) or None
    if "error_description" in document:
        return f"{document.get('error', 'error')}: {document['error_description']}"
    for key in ("error", "message", "detail"):
        if key in document:
            return str(document[key])
    problems = []
    for key in ("validationErrors", "internalErrors"):
        value = document.get(key)
        if isinstance(value, dict):
            problems += [f"{field}: {_flatten(text)}" for field, text in value.items()]
        elif isinstance(value, list):
            problems += [_flatten(item) for item in value]
    return "; ".join(problems) or None


def _details_text(details: object) -> object:
    """An OperationOutcome issue's ``details.text``, when ``details`` is the object it should be."""
    return details.get("text") if isinstance(details, dict) else None


def _flatten(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(_flatten(v) for v in value.values())
    if isinstance(value, list):
        return ", ".join(_flatten(v) for v in value)
    return str(value)


class ApiClient:
    """Requests to one server through a kind's ``httpx.Auth``, bounded, retried where safe, audited.

    Subclasses say how their kind authenticates (``auth``), which headers a path needs by default,
    what a 401 most likely means, and whether answers carry a signature.
    """

    #: Whether this kind's server signs its answers (CWS does; OAuth-protected APIs do not).
    signs_responses = False
    #: What to call the server in messages.
    server_name = "the server"
    #: Whether the kind's auth attaches a reusable credential (token, password, a CWS signature):
    #: then requests may only go to the profile's own server, unless ``allow_other_host``.
    credentials_stay_home = True

    def __init__(
        self,
        auth: httpx.Auth | None,
        *,
        base_url: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        max_response_size: int | None = None,
        allow_http: bool = False,
        allow_other_host: bool = False,
        retries: int = 2,
        max_connections: int = 10,
        audit: AuditLog | None = None,
    ) -> None:
        self.base_url = base_url
        self.allow_http = allow_http
        self.allow_other_host = allow_other_host
        self.retries = retries
        self.timeout = timeout
        self.max_response_size = size_cap(max_response_size)
        self.audit = audit
        self._auth = auth
        self._urls: dict[str, str] = {}  # path -> checked absolute URL (see _checked_url)
        # Connection failures happen before anything is sent, so the transport may retry them.
        self._http = bounded_client(
            timeout=timeout,
            max_response_size=max_response_size,
            retries=retries,
            max_connections=max_connections,
        )

    @property
    def auth(self) -> httpx.Auth | None:
        """The kind's authentication, as every request goes through it."""
        return self._auth

    def default_headers(self, url: str, body: bytes) -> dict[str, str]:
        """Headers a request to ``url`` gets unless the caller gives them (JSON bodies here)."""
        return {"Content-Type": "application/json"} if body else {}

    def unauthorized_hint(self) -> str:
        """What a 401 from this server most likely means, and what to do."""
        return "the server did not accept our credentials"

    def explain(self, status: int) -> str:
        """What this kind's server means by ``status`` when its body says too little (the
        error line shows it after the server's own text); empty when there is nothing to add."""
        return ""

    def trust_description(self, response: ApiResponse) -> str:
        """How far the answer can be trusted, for the status line."""
        return f"TLS only ({self.server_name} does not sign answers)"

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (and the audit log)."""
        self._http.close()
        if self.audit is not None:
            self.audit.close()

    def build_request(
        self,
        method: str,
        path_or_url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        """The request as it will be sent, before the kind's authentication is added."""
        url = self._checked_url(path_or_url)
        check_method(method.upper())
        merged = {k: v for k, v in (headers or {}).items()}
        if any(k.lower() == "authorization" for k in merged):
            raise InputError(
                "the Authorization header is computed by cwsctl; do not pass it with -H"
            )
        for key, value in merged.items():
            check_value(value, f"the {check_name(key)} header")
        given = {k.lower() for k in merged}
        for key, value in self.default_headers(url, body).items():
            if key.lower() not in given:
                merged[key] = value
        return self._http.build_request(method.upper(), url, content=body, headers=merged)

    def _checked_url(self, path_or_url: str) -> str:
        """The absolute URL for ``path_or_url``, refused unless its transport (and, for kinds
        whose requests carry a credential, its server) is allowed.

        A bulk load asks for the same path once per row, so the answer for paths without a
        query string (look-ups carry one per patient) is kept.
        """
        url = self._urls.get(path_or_url)
        if url is None:
            url = resolve_url(self.base_url, path_or_url)
            check_transport_security(url, allow_http=self.allow_http)
            if self.credentials_stay_home and self.base_url and not self.allow_other_host:
                check_same_server(url, self.base_url)
            proxy = plain_http_via_proxy(url)
            if proxy is not None:
                raise InputError(
                    f"refusing to send a plain-http request to {urlsplit(url).netloc} through "
                    f"the proxy {without_userinfo(proxy)}: the proxy would read its credentials "
                    "and body",
                    hint="use https (the proxy then only tunnels it), or list the host in NO_PROXY",
                )
            if "?" not in path_or_url and len(self._urls) < 64:
                self._urls[path_or_url] = url
        return url

    def proxy_description(self, path_or_url: str) -> str:
        """How a request to ``path_or_url`` travels: ``direct (…)`` or the proxy (``-v``)."""
        return describe_proxy(self._checked_url(path_or_url))

    def at_home(self, url: str) -> bool:
        """True when ``url`` is on the profile's own server (or the profile names none)."""
        return not self.base_url or origin(url) == origin(self.base_url)

    def request(
        self,
        method: str,
        path_or_url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """Send a request and return its complete answer (any status), verified where signed.

        The whole call, retries of an idempotent request included, ends within ``timeout``
        seconds and reads at most ``max_response_size`` bytes of answer. Raises NetworkError
        (exit 6) when the server cannot be reached, the answer is lost, late or too large, and
        SignatureError (exit 7) when the answer is not authentic.
        """
        # The unauthenticated request: the kind's auth adds credentials (or the signature) as
        # it sends, so a subclass's build_request, which adds them for display, is skipped.
        request = ApiClient.build_request(self, method, path_or_url, body, headers)
        method = request.method
        attempts = 1 + (self.retries if method in IDEMPOTENT_METHODS else 0)
        started = time.perf_counter()
        with exchange_deadline(self.timeout):
            for attempt in range(1, attempts + 1):
                try:
                    response = self._http.send(request, auth=self._auth)
                    break
                except (httpx.LocalProtocolError, UnicodeEncodeError):
                    # Checked before sending (core/headers.py); this is the last line of
                    # defence. h11's own message quotes the value, which may be a secret.
                    self._record(request, None, started, "InputError")
                    raise InputError(
                        "a request header cannot be sent (a line break, NUL or non-ASCII "
                        "character in a header value); nothing was sent",
                        hint="check the -H values and the profile's credentials",
                    ) from None
                except httpx.HTTPError as exc:
                    error = self.network_error(exc, method, str(request.url))
                    pause = 0.2 * attempt
                    left = time_left() or 0.0
                    retry = isinstance(error, RetryableNetworkError) and attempt < attempts
                    if not retry or left <= pause:
                        self._record(request, None, started, type(error).__name__)
                        raise error from None
                    time.sleep(pause)
                except CwsError as exc:
                    self._record(request, None, started, type(exc).__name__)
                    raise
        result = ApiResponse(
            method=method,
            url=str(request.url),
            status=response.status_code,
            reason=response.reason_phrase,
            # items(), not dict(headers): the same names (lower case) and joined values, in
            # one pass instead of a scan of every header per name.
            headers=dict(response.headers.items()),
            body=response.content,
            verification=response.extensions.get(VERIFICATION_EXTENSION),
            elapsed_ms=(time.perf_counter() - started) * 1000,
            request_headers=self.shown_headers(request),
            explanation=self.explain(response.status_code),
        )
        self._record(request, result, started)
        return result

    def shown_headers(self, request: httpx.Request) -> dict[str, str]:
        """The request's headers as ``-v`` may show them: a credential computed for another
        host (``--allow-other-host``) is shown nowhere."""
        headers = dict(request.headers.items())
        if "authorization" in headers and not self.at_home(str(request.url)):
            headers["authorization"] = OTHER_HOST_CREDENTIAL
        return headers

    def network_error(self, exc: httpx.HTTPError, method: str, url: str) -> CwsError:
        """:func:`network_error`, with this client's timeout and size cap in the message."""
        return network_error(
            exc, method, url, timeout=self.timeout, max_response_size=self.max_response_size
        )

    def _record(
        self,
        request: httpx.Request,
        response: ApiResponse | None,
        started: float,
        error: str | None = None,
    ) -> None:
        if self.audit is None:
            return
        check = response.verification if response is not None else None
        self.audit.record(
            method=request.method,
            url=str(request.url),
            status=response.status if response is not None else None,
            request_sha256=body_sha256(request.content),
            response_sha256=response.body_sha256 if response is not None else None,
            verified=bool(check and check.verified),
            signer=check.signer if check else None,
            key_fingerprint=check.key_fingerprint if check else None,
            duration_ms=(time.perf_counter() - started) * 1000,
            error=error,
        )


# Deprecated names, kept for one release (see cwsctl.core.identity for the pattern).
_MOVED_TO_CWS = {"CwsAuth", "CwsClient"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED_TO_CWS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    import warnings

    new_home = "cwsctl.targets.cws.client"
    warnings.warn(
        f"cwsctl.core.client.{name} moved to {new_home}.{name}", DeprecationWarning, stacklevel=2
    )
    return getattr(importlib.import_module(new_home), name)
