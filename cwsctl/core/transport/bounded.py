"""Bounded HTTP exchanges: one deadline for the whole exchange and a cap on the answer's size.

httpx's timeouts apply to each network operation, so a server that trickles one byte a second
never trips a 3-second read timeout, and nothing stops a server that streams an endless body.
Every request cwsctl sends goes through :class:`BoundedTransport`, which closes both gaps in one
place:

- **Deadline.** Each socket operation (connect, TLS handshake, write, read) gets at most the time
  left until the exchange's deadline, via a thin wrapper around httpcore's network backend
  (core/transport/pool.py, imported on the first send). The deadline starts when the request is
  handed to the transport, or earlier when the caller opens :func:`exchange_deadline` (so that
  retries share one budget).
- **Size cap.** The raw answer is counted while it streams in; past ``max_response_size`` bytes
  (or on a ``Content-Length`` above it) reading stops with :class:`ResponseTooLargeError` and
  httpx closes the connection instead of returning it to the pool. cwsctl asks for
  ``Accept-Encoding: identity`` and refuses a compressed answer, so the bytes counted are the bytes
  kept (and a small compressed body cannot expand past the cap).

**Proxies.** ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY`` are read as httpx reads
them (:func:`environment_proxies`), and each proxy gets a bounded transport of its own, mounted
as httpx mounts its own proxy transports: the deadline and the size cap hold through a proxy too.
An https origin is reached through a ``CONNECT`` tunnel, so the proxy sees the host and port and
never the request (its credentials travel inside TLS); a plain-http one would be handed to the
proxy whole, which :func:`plain_http_via_proxy` lets callers refuse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timezone
from typing import Any

import httpx

from cwsctl.core.transport.deadline import _deadline, exchange_deadline
from cwsctl.core.transport.proxies import environment_proxies

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_SIZE = 64 * 1024 * 1024


class ResponseTooLargeError(httpx.TransportError):
    """The answer passed the size cap; reading stopped and the connection was closed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {format_size(limit)}")
        self.limit = limit


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header as seconds from now (delay-seconds or an HTTP date, which is
    always GMT), or None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(text)
        if moment.tzinfo is None:  # "-0000": UTC, says RFC 5322
            moment = moment.replace(tzinfo=timezone.utc)
        return max(0.0, moment.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class UnexpectedEncodingError(httpx.TransportError):
    """The server compressed its answer although cwsctl asked for ``identity``."""


def size_cap(max_response_size: int | None) -> int:
    """The answer-size cap in force: the one given, else the 64 MiB default."""
    return DEFAULT_MAX_RESPONSE_SIZE if max_response_size is None else max_response_size


def format_size(size: int) -> str:
    """``67108864`` → ``64 MiB``; sizes that are not whole KiB/MiB/GiB stay in bytes."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


class _BoundedBody(httpx.SyncByteStream):
    """The answer's raw bytes, counted against the cap and read before the deadline."""

    def __init__(self, inner: httpx.SyncByteStream, deadline: float, limit: int) -> None:
        self._inner = inner
        self._deadline = deadline
        self._limit = limit

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        chunks = iter(self._inner)
        while True:
            token = _deadline.set(self._deadline)
            try:
                chunk = next(chunks, None)
            finally:
                _deadline.reset(token)
            if chunk is None:
                return
            received += len(chunk)
            if received > self._limit:
                raise ResponseTooLargeError(self._limit)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class BoundedTransport(httpx.HTTPTransport):
    """httpx's transport with a whole-exchange deadline and a response-size cap."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_response_size: int | None = None,
        retries: int = 0,
        max_connections: int = 10,
        proxy: str | None = None,
    ) -> None:
        # httpx.HTTPTransport.__init__ only builds its httpcore pool, with no way to pass a
        # network backend; the pool is built the same way (a ConnectionPool, or an HTTPProxy
        # for ``proxy``) with ours, instead of calling it and paying for two SSL contexts. It is built on the first send (see _pool): importing httpcore and h11 costs
        # ~13 ms that a dry run, which only builds the request, never needs.
        self.timeout = timeout
        self.max_response_size = size_cap(max_response_size)
        self._retries = retries
        self._max_connections = max_connections
        self._proxy = proxy
        self._built: Any = None
        self._building = threading.Lock()

    @property
    def _pool(self) -> Any:  # type: ignore[override]
        """httpcore's pool with deadline-bound sockets, made on first use (once: under a lock)."""
        pool = self._built
        if pool is None:
            with self._building:
                if self._built is None:
                    from cwsctl.core.transport.pool import make_pool

                    self._built = make_pool(
                        max_connections=self._max_connections,
                        retries=self._retries,
                        proxy=self._proxy,
                    )
                pool = self._built
        return pool

    def __enter__(self) -> BoundedTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool's connections (nothing to do when nothing was ever sent)."""
        if self._built is not None:
            self._built.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its answer, whose body streams under the same bounds."""
        with exchange_deadline(self.timeout):
            deadline = _deadline.get()
            response = super().handle_request(request)
        assert deadline is not None
        try:
            self._check_head(response)
        except httpx.TransportError:
            response.close()
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _BoundedBody(response.stream, deadline, self.max_response_size)
        return response

    def _check_head(self, response: httpx.Response) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise UnexpectedEncodingError(
                f"the server sent a {encoding!r}-encoded answer although cwsctl asked for none"
            )
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_response_size:
            raise ResponseTooLargeError(self.max_response_size)


def bounded_client(
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_response_size: int | None = None,
    retries: int = 0,
    max_connections: int = 10,
) -> httpx.Client:
    """An ``httpx.Client`` whose every exchange is bounded in time and size (no redirects),
    through the proxies the environment names (each with a bounded transport of its own)."""
    options: dict[str, Any] = {
        "timeout": timeout,
        "max_response_size": max_response_size,
        "retries": retries,
        "max_connections": max_connections,
    }
    mounts: dict[str, httpx.BaseTransport | None] = {}
    for pattern, proxy in environment_proxies().items():
        if proxy is not None and httpx.URL(proxy).scheme not in ("http", "https"):
            from cwsctl.core.errors import InputError
            from cwsctl.core.urls import without_userinfo

            raise InputError(
                f"the proxy {without_userinfo(proxy)} is not an http:// or https:// proxy "
                "(SOCKS is not supported)",
                hint="set HTTPS_PROXY/HTTP_PROXY to an http proxy, or unset ALL_PROXY",
            )
        mounts[pattern] = BoundedTransport(proxy=proxy, **options) if proxy else None
    return _Client(
        transport=BoundedTransport(**options),
        mounts=mounts,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        headers={"Accept-Encoding": "identity"},
    )


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, which skips an answer that sets no cookie.

    httpx hands every answer to the standard library's cookie machinery, building two adapter
    objects each time, which costs more than the rest of reading a small answer's headers.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        """Store the cookies an answer sets (there is nothing to do without ``Set-Cookie``)."""
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class _Client(httpx.Client):
    """``httpx.Client`` whose cookie jar is a :class:`_Cookies` (behaviour unchanged)."""

    @property
    def cookies(self) -> httpx.Cookies:
        """The client's cookie jar."""
        jar: httpx.Cookies | None = self.__dict__.get("_cwsctl_cookies")
        if jar is None:
            jar = self.__dict__["_cwsctl_cookies"] = _Cookies()
        return jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self.__dict__["_cwsctl_cookies"] = _Cookies(cookies)
