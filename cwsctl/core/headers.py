"""What an HTTP/1.1 request line and header can carry, checked before anything is sent.

h11 (under httpx) refuses a header value with CR, LF or NUL, and httpx cannot encode a non-ASCII
one; either failure happens while sending, after a connection was opened, and its message holds
the whole value (a token, a password). cwsctl checks every method, header name and value first,
so such an input is a one-line usage error (exit 2), or a profile error (exit 3) for a stored
value, naming where the value came from and never printing it. No httpx import here: secrets and
option parsing use it too.
"""

from __future__ import annotations

import re

from cwsctl.core.errors import CwsError, InputError

# RFC 9110 token: what a method and a field name are made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# A field value cwsctl sends: visible ASCII, spaces and tabs (no obs-text: httpx encodes ASCII).
_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")


def is_token(text: str) -> bool:
    """True when ``text`` is an HTTP token (a method or a header name)."""
    return bool(_TOKEN.match(text))


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent in a header (None when it can), without quoting it."""
    if _VALUE.match(value):
        return None
    if any(ch in value for ch in "\r\n\x00"):
        return "holds a line break or NUL (CR, LF or NUL)"
    if not value.isascii():
        return "holds a non-ASCII character"
    return "holds a control character"


def check_value(
    value: str, where: str, error: type[CwsError] = InputError, hint: str | None = None
) -> str:
    """``value`` unchanged, or ``error`` saying that ``where`` cannot be sent (never the value)."""
    problem = value_problem(value)
    if problem is not None:
        raise error(
            f"{where} {problem}: it cannot be sent in an HTTP header (nothing was sent)",
            hint=hint or f"fix {where}",
        )
    return value


def check_method(method: str) -> str:
    """``method`` unchanged, or InputError: a method is one token (``GET``, ``POST`` …)."""
    if not is_token(method):
        raise InputError(
            f"the method {_shown(method)} is not an HTTP method (one word of letters)",
            hint="use GET, POST, PUT, PATCH or DELETE",
        )
    return method


def check_name(name: str) -> str:
    """``name`` unchanged, or InputError: a header name is one token (``X-Request-Id``)."""
    if not is_token(name):
        raise InputError(
            f"the header name {_shown(name)} is not valid (letters, digits and -!#$%&'*+.^_`|~)",
            hint="use -H 'Name: value'",
        )
    return name


def _shown(text: str, limit: int = 60) -> str:
    """A bounded ASCII rendering of a user-given name for a message."""
    shown = ascii(text[:limit])
    return shown + ("…" if len(text) > limit else "")
