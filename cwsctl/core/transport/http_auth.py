"""HTTP authentication details every kind shares: a request copy carrying a credential, why a
401 challenge refused it (RFC 6750), and entity tags as HTTP writes them (RFC 9110)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

import httpx

from cwsctl.core.text import printable


class _Answer(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


def authorized_copy(request: httpx.Request, authorization: str) -> httpx.Request:
    """A copy of ``request`` carrying ``Authorization: authorization``.

    Auths holding a secret (a bearer token, a password) send the copy, so the caller's request
    object — what ``request -v`` shows and the audit log sees — never holds the secret.
    """
    headers = request.headers.copy()
    headers["Authorization"] = authorization
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        content=request.content,
        extensions=request.extensions,
    )


def quoted_etag(version: str) -> str:
    """An entity tag as HTTP wants it (RFC 9110): the value in double quotes, added when
    missing (a weak ``W/"…"`` tag is kept as given)."""
    value = version.strip()
    return value if value.startswith(('"', 'W/"')) else f'"{value}"'


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def challenge_reason(response: _Answer) -> str | None:
    """Why a 401 refused the credentials, from its ``WWW-Authenticate`` challenge (RFC 6750):
    ``invalid_token: Jwt expired at …`` from ``error`` and ``error_description``, made safe for
    one line (:func:`~cwsctl.core.text.printable`). None when the challenge gives no reason
    (a bare ``Basic realm="…"``)."""
    header = response.headers.get("www-authenticate")
    if not header:
        return None
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(header)
    }
    error, description = params.get("error"), params.get("error_description")
    if not error and not description:
        return None
    text = ": ".join(part for part in (error, description) if part)
    return "the server says " + printable(text.replace('\\"', '"'))
