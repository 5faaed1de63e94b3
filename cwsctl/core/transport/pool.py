"""httpcore's connection pool for :class:`cwsctl.core.transport.bounded.BoundedTransport`: every socket
operation ends by the exchange's deadline, and the SSL context is made on first https use.

A module of its own so that importing httpcore (and h11) waits until something is sent.
"""

from __future__ import annotations

from typing import Any

import httpcore
import httpx

from cwsctl.core.transport.deadline import time_left


def make_pool(
    *, max_connections: int, retries: int, proxy: str | None = None
) -> httpcore.ConnectionPool:
    """The pool httpx.HTTPTransport would build (httpx's default limits for ``max_connections``),
    with deadline-bound sockets; through ``proxy`` (an http(s) proxy URL) when given, as
    httpx.HTTPTransport(proxy=…) builds it: CONNECT tunnels for https origins."""
    limits = httpx.Limits(max_connections=max_connections)
    if proxy is not None:
        settings = httpx.Proxy(url=proxy)
        return _ProxyPool(
            proxy_url=httpcore.URL(
                scheme=settings.url.raw_scheme,
                host=settings.url.raw_host,
                port=settings.url.port,
                target=settings.url.raw_path,
            ),
            proxy_auth=settings.raw_auth,
            proxy_headers=settings.headers.raw,
            ssl_context=None,
            proxy_ssl_context=settings.ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=_DeadlineBackend(),
        )
    return _Pool(
        ssl_context=None,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        retries=retries,
        network_backend=_DeadlineBackend(),
    )


def _clamp(timeout: float | None, expired: type[Exception]) -> float | None:
    """The per-operation timeout, shortened to what is left of the deadline."""
    left = time_left()
    if left is None:
        return timeout
    if left <= 0:
        raise expired("the exchange's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the exchange's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own socket backend, with connects and streams bound by the deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Pool(httpcore.ConnectionPool):
    """httpcore's pool, whose SSL context is httpx's default one, made on first https use.

    Making it loads the CA bundle (~15 ms): a plain-http exchange (the local sandbox), a dry run
    or a command that fails before sending never needs it. The pool calls
    :meth:`create_connection` under its lock, so the context is made once.
    """

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        """A connection to ``origin``; the first https one makes the SSL context."""
        if self._ssl_context is None and origin.scheme == b"https":
            self._ssl_context = httpx.create_ssl_context()
        return super().create_connection(origin)


class _ProxyPool(httpcore.HTTPProxy):
    """httpcore's proxy pool, with the same lazily made SSL context as :class:`_Pool`."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        """A connection to ``origin`` through the proxy; the first https one makes the context."""
        if self._ssl_context is None and origin.scheme == b"https":
            self._ssl_context = httpx.create_ssl_context()
        return super().create_connection(origin)
