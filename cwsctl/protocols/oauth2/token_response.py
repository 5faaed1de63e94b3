"""Token endpoint answers: the granted token, or the refusal it stands for (RFC 6749 §5).

What a refusal means on a given server, and what to do about it, is that target's: it is passed
in as an :data:`ExplainRefusal` (OpenEMR's is :func:`cwsctl.targets.openemr.hints.refusal_hint`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx

from cwsctl.core.errors import ClientRequestError, ServerFailureError
from cwsctl.core.headers import value_problem
from cwsctl.core.jsondoc import loads_json
from cwsctl.core.text import printable
from cwsctl.protocols.oauth2.tokens import (
    GRANT_AUTHORIZATION_CODE,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_REFRESH_TOKEN,
    GrantResult,
    Token,
)

#: Lifetime assumed for a token whose answer has no ``expires_in`` (OpenEMR's client-credentials
#: tokens last 300 s; its user tokens an hour).
DEFAULT_TOKEN_LIFETIME_S = 300
#: The longest lifetime believed from an ``expires_in`` (a day; OpenEMR's tokens last an hour).
#: A missing, non-numeric, negative or non-finite one (1e999, "Infinity", NaN) gets the default.
MAX_TOKEN_LIFETIME_S = 24 * 3600
#: The largest access token taken (OpenEMR's JWTs are 1-2 KiB; servers refuse much larger
#: request heads anyway): a bigger one is refused rather than cached and sent with every request.
MAX_ACCESS_TOKEN_SIZE = 16 * 1024

_GRANT_LABEL = {
    GRANT_CLIENT_CREDENTIALS: "client-credentials",
    GRANT_REFRESH_TOKEN: "refresh-token",
    GRANT_AUTHORIZATION_CODE: "authorization-code",
}

#: A target's reading of a token endpoint's refusal, given ``(grant, error, status, detail)``:
#: ``(note, hint)`` — what the error means on that server, said after the error code ("" for
#: nothing), and what to do about it.
ExplainRefusal = Callable[[str, str, int, str], tuple[str, str]]


class TokenRefusedError(ClientRequestError):
    """The token endpoint refused a grant (HTTP 4xx), with its OAuth2 ``error`` code."""

    def __init__(
        self, message: str, *, grant: str, error: str, status: int, hint: str | None = None
    ) -> None:
        super().__init__(message, hint)
        self.grant = grant
        self.error = error
        self.status = status


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's body as a JSON object, or None when it is not one."""
    try:
        data = loads_json(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _text_field(body: dict[str, Any] | None, name: str) -> str:
    value = body.get(name) if body else None
    return printable(value) if isinstance(value, str) else ""


def refusal_detail(body: dict[str, Any] | None) -> tuple[str, str]:
    """An OAuth2 error answer as ``(error code, detail)``: OpenEMR's ``error_description``, its
    ``message`` when it says more, and its ``hint`` (which names the offending scope), each
    made safe for one line."""
    error = _text_field(body, "error")
    description = _text_field(body, "error_description")
    message = _text_field(body, "message")
    hint = _text_field(body, "hint")
    parts = [description] if description else []
    if message and message != description:
        parts.append(message)
    if hint:
        parts.append(f"hint: {hint}")
    return error, "; ".join(parts)


def parse_token_response(
    response: httpx.Response, grant: str, *, sent_at: float, explain: ExplainRefusal
) -> GrantResult:
    """The token and refresh token of a token endpoint answer, or the error it stands for.

    A 4xx answer raises :class:`TokenRefusedError` naming the OAuth2 error, OpenEMR's own
    description and hint, and what to do (``explain`` says what it means there); a 5xx raises ServerFailureError. Token values never
    appear in a message.
    """
    label = _GRANT_LABEL.get(grant, grant)
    status = response.status_code
    body = json_object(response)
    if 400 <= status < 500:
        error, detail = refusal_detail(body)
        what = error or f"HTTP {status} {printable(response.reason_phrase)}"
        note, hint = explain(grant, error, status, detail)
        if note:
            what += f" — {note}"
        message = f"the token endpoint refused the {label} grant: {what}"
        if detail:
            message += f" ({detail})"
        raise TokenRefusedError(
            message,
            grant=grant,
            error=error,
            status=status,
            hint=hint,
        )
    if status >= 500:
        raise ServerFailureError(
            f"the token endpoint failed: HTTP {status} {printable(response.reason_phrase)}",
            hint="try again later",
        )
    if status != 200 or body is None:
        raise ServerFailureError(
            f"the token endpoint answered HTTP {status} without a token document"
        )
    access = body.get("access_token")
    token_type = str(body.get("token_type", ""))
    if not isinstance(access, str) or not access:
        raise ServerFailureError("the token endpoint's answer has no access_token")
    if len(access) > MAX_ACCESS_TOKEN_SIZE:
        raise ServerFailureError(
            f"the token endpoint's access_token is {len(access)} characters long (cwsctl takes "
            f"at most {MAX_ACCESS_TOKEN_SIZE}); refusing it",
            hint="ask the server's administrators",
        )
    if value_problem(access) is not None:
        raise ServerFailureError(
            f"the token endpoint's access_token {value_problem(access)}: it cannot be sent in "
            "an HTTP header; refusing it",
            hint="ask the server's administrators",
        )
    if token_type.lower() != "bearer":
        raise ServerFailureError(
            f"the token endpoint granted a {printable(token_type) or 'typeless'} token; "
            "cwsctl uses Bearer tokens"
        )
    lifetime = token_lifetime(body.get("expires_in"))
    refresh = body.get("refresh_token")
    return GrantResult(
        token=Token(
            access_token=access,
            token_type="Bearer",  # noqa: S106 - the scheme name, checked above
            scope=str(body.get("scope", "")),
            obtained_at=sent_at,
            expires_at=sent_at + lifetime,
        ),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
    )


def token_lifetime(expires_in: object) -> float:
    """Seconds a granted token lives: ``expires_in`` when it is a finite number of seconds
    above 0, at most :data:`MAX_TOKEN_LIFETIME_S`; else :data:`DEFAULT_TOKEN_LIFETIME_S`."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
        return DEFAULT_TOKEN_LIFETIME_S
    try:
        seconds = float(expires_in)
    except (ValueError, OverflowError):
        return DEFAULT_TOKEN_LIFETIME_S
    if not math.isfinite(seconds) or seconds <= 0:
        return DEFAULT_TOKEN_LIFETIME_S
    return min(seconds, MAX_TOKEN_LIFETIME_S)
