"""The bounded transport every request goes through: deadlines, proxies, the size-capped httpx
transport and its connection pool, network errors, RFC 6750/9110 header helpers. Core only."""
