"""Network failures in words: whether a request that failed may have taken effect, and whether
sending it again is safe."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from cwsctl.core.errors import CwsError, NetworkError
from cwsctl.core.transport.bounded import (
    ResponseTooLargeError,
    UnexpectedEncodingError,
    format_size,
)

#: Methods that may be re-sent after the request went out without changing anything twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class OutcomeUnknownError(NetworkError):
    """The request went out but no complete answer came back: it may or may not have taken effect."""


class RetryableNetworkError(NetworkError):
    """An idempotent request lost its answer; sending it again is safe."""


def network_error(
    exc: httpx.HTTPError,
    method: str,
    url: str,
    *,
    timeout: float | None = None,
    max_response_size: int | None = None,
) -> CwsError:
    """Turn an httpx failure into NetworkError, saying whether the request may have taken effect."""
    host = urlsplit(url).netloc
    if isinstance(exc, httpx.ConnectTimeout):
        return NetworkError(
            f"timed out connecting to {host}", hint="check the URL, VPN or firewall"
        )
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        if "SSL" in text or "CERTIFICATE" in text.upper():
            return NetworkError(
                f"TLS handshake with {host} failed: {text}", hint="check the server certificate"
            )
        if (
            "Name or service not known" in text
            or "nodename nor servname" in text
            or "getaddrinfo" in text
        ):
            return NetworkError(f"cannot resolve host {host}", hint="check the URL in the profile")
        return NetworkError(f"cannot connect to {host}: {text or 'connection refused'}")
    # The request went out; what follows depends on whether sending it again is harmless, and
    # on whether asking again could get a different answer (only when the answer was lost).
    hint = None
    if isinstance(exc, ResponseTooLargeError):
        cap = format_size(max_response_size if max_response_size is not None else exc.limit)
        what, again = f"the answer is larger than {cap}; stopped reading", False
        hint = "raise --max-response-size if the answer is legitimately this large"
    elif isinstance(exc, UnexpectedEncodingError):
        what, again = str(exc), False
    elif isinstance(exc, httpx.TimeoutException):
        within = f" within {timeout:g} s (--timeout)" if timeout is not None else ""
        what, again = f"no complete answer{within}", True
    elif isinstance(exc, httpx.ProtocolError):
        what, again = f"the answer was cut off or is not valid HTTP ({exc})", True
    elif isinstance(exc, httpx.TransportError):
        what, again = "lost the connection before the answer was complete", True
    else:
        return NetworkError(f"{method} {url}: {exc}")
    if method in IDEMPOTENT_METHODS:
        error = RetryableNetworkError if again else NetworkError
        return error(f"{method} {url}: {what}", hint=hint)
    check = "it may have been applied: check on the server before sending it again"
    return OutcomeUnknownError(
        f"{method} {url}: {what}; its outcome is unknown",
        hint=f"{check}; {hint}" if hint else check,
    )
