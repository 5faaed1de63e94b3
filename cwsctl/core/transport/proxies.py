"""Proxies from the environment, read as httpx reads them, and how a request goes through one."""

from __future__ import annotations

import httpx


def environment_proxies() -> dict[str, str | None]:
    """httpx's reading of the proxy variables: URL pattern → proxy URL (None: direct, from
    ``NO_PROXY``). Empty when none is set (or ``NO_PROXY=*``)."""
    from httpx._utils import get_environment_proxies

    return get_environment_proxies()


def proxy_for(url: str) -> str | None:
    """The proxy a request to ``url`` goes through (None: direct), chosen as httpx does."""
    from httpx._utils import URLPattern

    proxies = environment_proxies()
    if not proxies:
        return None
    target = httpx.URL(url)
    for pattern, proxy in sorted(
        ((URLPattern(key), value) for key, value in proxies.items()), key=lambda item: item[0]
    ):
        if pattern.matches(target):
            return proxy
    return None


def plain_http_via_proxy(url: str) -> str | None:
    """The proxy that would receive a plain-http request to ``url`` whole (credentials
    included), or None: https goes through a tunnel, and a proxy on this machine is allowed."""
    from cwsctl.core.urls import is_loopback

    if not url.lower().startswith("http:"):
        return None  # https (or not a URL cwsctl sends): no proxy lookup on every request
    proxy = proxy_for(url)
    if proxy is None or httpx.URL(url).scheme != "http":
        return None
    return None if is_loopback(httpx.URL(proxy).host) else proxy


def describe_proxy(url: str) -> str:
    """How a request to ``url`` travels, for ``-v`` and ``doctor`` (no proxy password)."""
    from cwsctl.core.urls import without_userinfo

    proxy = proxy_for(url)
    if proxy is None:
        variables = "NO_PROXY" if environment_proxies() else "no proxy variable set"
        return f"direct ({variables})"
    how = (
        "CONNECT tunnel" if httpx.URL(url).scheme == "https" else "plain http: it sees the request"
    )
    return f"{without_userinfo(proxy)} ({how})"
