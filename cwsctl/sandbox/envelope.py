"""The envelope every sandbox flavour's ASGI app shares, around the flavour's endpoints.

``EnvelopeApp`` is the part every flavour shares (body limit, faults, access log, the answer
captured whole); a flavour subclasses it: the CWS flavour (:mod:`cwsctl.targets.cws.sandbox.app`)
checks signatures and signs answers; the OpenEMR flavour (:mod:`cwsctl.targets.openemr.sandbox.app`)
checks bearer tokens instead and signs nothing.

Every request, in order (steps 2, 3 and 5 as the CWS flavour does them):

1. body read into memory, counted as it arrives; as soon as it is known to be more than
   ``max_body`` bytes (a declared Content-Length, or the bytes received so far) → 413, sent at
   once with ``Connection: close``. The rest of the body is then read and thrown away, at most
   ``DRAIN_LIMIT_BYTES`` (and within the server's request timeout), before the connection is
   closed: closing a socket with unread input makes the kernel reset the connection, and a client
   still sending a finite body could lose the answer with it. Only ``max_body`` bytes are ever
   held, whatever the client sends;
2. fault dice for ``/ws/patients`` requests: latency, injected 500 (see :mod:`.faults`);
3. ``Authorization: CWS-SHA256|CWS-SHA1 Access=USER, Signature=B64`` checked over the raw body
   (an empty body is signed too) against the key registered for USER → 401 with the reason;
4. routing and the endpoint (:mod:`cwsctl.targets.cws.sandbox.routes`, Starlette), whose answer
   is captured whole;
5. the answer is signed over its exact bytes as ``coremr`` (CWS-SHA256), whatever its status —
   404, 405, 413, 401 and 500 included — then maybe unsigned / corrupted / dropped (faults).

One access line per request goes to stderr: method, path without query string, status, duration,
username (or OAuth client id). Never a body, a query string or a header value: they carry PHI,
signatures and tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from typing import Any

from cwsctl.sandbox.faults import FaultDice, Faults

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 1024 * 1024
#: After a 413, at most this much more of the body is read and thrown away before closing, so a
#: client still sending a finite body reads the answer instead of a connection reset.
DRAIN_LIMIT_BYTES = 16 * MAX_BODY_BYTES
_DROP_LOG_MESSAGE = "ASGI callable returned without completing response."


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class Answer:
    """A complete response before signing."""

    __slots__ = ("body", "body_complete", "close", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool = False,
        content_type: bytes = b"application/json",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []
        self.close = close
        self.content_type = content_type
        self.body_complete = True  # False: the request body was not all read (see _respond)


def error_answer(status: int, message: str, **extra: Any) -> Answer:
    """An answer with the JSON error body ``{"error": message, ...}``."""
    return Answer(status, json_bytes({"error": message, **extra}))


def json_bytes(document: Any) -> bytes:
    """Compact UTF-8 JSON, as the Java and CWS servers write it (non-ASCII kept as is)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class EnvelopeApp:
    """The envelope every sandbox flavour shares: body limit, faults, access log, answer capture.

    A flavour passes its router and overrides the hooks: ``_faulty`` (which paths the fault
    switches hit), ``_authenticate`` (refuse a request before routing) and
    ``_signature_headers`` (sign an answer). ``faults`` may be replaced while running.
    """

    def __init__(
        self,
        router: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.access_log = access_log
        self.max_body = max_body
        self.faults = faults if faults is not None else Faults()
        self._router = router
        self._in_flight = 0  # fault-switched requests in progress (for max_in_flight)
        _quiet_uvicorn_about_drops()

    def close(self) -> None:
        """Release what the flavour holds besides its store (nothing by default)."""

    # -- hooks ----------------------------------------------------------------------------
    def _faulty(self, path: str) -> bool:
        """Whether the fault switches apply to requests for ``path``."""
        return False

    def _authenticate(self, scope: Scope, body: bytes) -> tuple[str, Answer | None]:
        """The caller's name for the access log, and a refusal or None to go on."""
        return "-", None

    async def _signature_headers(
        self, body: bytes, dice: FaultDice | None
    ) -> tuple[list[tuple[bytes, bytes]], str]:
        """Headers that sign ``body``, and the faults applied to them for the access log."""
        return [], ""

    @property
    def faults(self) -> Faults:
        """The fault switches in force."""
        return self._dice.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self._dice = FaultDice(value)

    # -- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, websocket: Starlette knows what to do
            await self._router(scope, receive, send)
            return
        started = time.perf_counter()
        dice = self._dice
        faulty = self._faulty(scope["path"])
        cap = dice.faults.max_in_flight if faulty else 0
        busy = 0 < cap <= self._in_flight
        if faulty:
            self._in_flight += 1
        try:
            await self._handle(scope, receive, send, dice, faulty, busy, started)
        finally:
            if faulty:
                self._in_flight -= 1

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        dice: FaultDice,
        faulty: bool,
        busy: bool,
        started: float,
    ) -> None:
        path: str = scope["path"]
        username = "-"
        note = ""
        if faulty and dice.faults.latency_ms and not busy:
            await asyncio.sleep(dice.latency_seconds())
        try:
            body, too_large = await self._read_body(scope, receive)
        except _ClientGone:  # nobody to answer; nothing was processed
            return
        if too_large is not None:
            answer = too_large
        elif busy:
            answer = error_answer(429, "too many requests in progress (injected fault)")
            answer.headers.append((b"retry-after", b"1"))
            note = " fault=busy"
        elif faulty and dice.hit(dice.faults.error_rate):
            answer = error_answer(500, "internal server error (injected fault)")
            note = " fault=error"
        else:
            username, refusal = self._authenticate(scope, body)
            answer = refusal if refusal is not None else await self._dispatch(scope, body)

        def log(response_note: str) -> None:
            # Written before the answer goes out, so a client that has its answer can rely on
            # the line being there.
            if self.access_log:
                elapsed = (time.perf_counter() - started) * 1000
                sys.stderr.write(
                    f"cwsctl-sandbox: {scope['method']} {printable(path)} {answer.status} "
                    f"{elapsed:.1f}ms user={username}{note}{response_note}\n"
                )

        unread = receive if too_large is not None and not too_large.body_complete else None
        await self._respond(send, answer, dice if faulty else None, log, unread)

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, Answer | None]:
        """The whole body, or a 413 as soon as the body is known to be over ``max_body``."""
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return b"", self._too_large(body_complete=False)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > self.max_body:
                return b"", self._too_large(body_complete=not more)
            chunks.append(chunk)
            if not more:
                return b"".join(chunks), None

    def _too_large(self, *, body_complete: bool) -> Answer:
        """413, closing the connection after it (the body may not end, or not soon)."""
        answer = error_answer(413, f"request body is larger than {self.max_body} bytes")
        answer.close = True
        answer.body_complete = body_complete
        return answer

    async def _dispatch(self, scope: Scope, body: bytes) -> Answer:
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        status = 500
        headers: list[tuple[bytes, bytes]] = []
        content_type = b"application/json"
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers, content_type
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = []
                for k, v in message.get("headers", []):
                    name = bytes(k).lower()
                    if name == b"content-type":
                        content_type = bytes(v)
                    elif name != b"content-length":
                        headers.append((name, bytes(v)))
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        try:
            await self._router(scope, replay, capture)
        except Exception as exc:  # a bug in the sandbox: answer like CorEMR would, still signed
            sys.stderr.write(f"cwsctl-sandbox: internal error: {type(exc).__name__}\n")
            return error_answer(500, "internal server error")
        return Answer(status, b"".join(chunks), headers, content_type=content_type)

    async def _respond(
        self,
        send: Send,
        answer: Answer,
        dice: FaultDice | None,
        log: Callable[[str], None],
        unread: Receive | None = None,
    ) -> None:
        """Sign and send ``answer``, applying faults; ``log`` gets the faults applied, first.

        ``unread``: the request body was not all read. The answer goes out whole at once, but
        the response (and so the connection, which ``answer.close`` closes) ends only after the
        rest of the body has been thrown away, up to ``DRAIN_LIMIT_BYTES``.
        """
        headers = [
            (b"content-type", answer.content_type),
            (b"content-length", str(len(answer.body)).encode("ascii")),
            *answer.headers,
        ]
        if answer.close:
            headers.append((b"connection", b"close"))
        # Our own Date header (uvicorn's is off) so a skewed server clock can be simulated.
        now = time.time() + self.faults.clock_skew_s
        headers.append((b"date", formatdate(now, usegmt=True).encode("ascii")))
        signature_headers, note = await self._signature_headers(answer.body, dice)
        headers.extend(signature_headers)
        drop = dice is not None and dice.hit(dice.faults.drop_rate)
        log(note + (" fault=drop" if drop else ""))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        if drop:
            # Headers and half the body, then uvicorn closes the connection: the client has a
            # Content-Length it will never get and cannot tell whether the request took effect.
            await send(
                {
                    "type": "http.response.body",
                    "body": answer.body[: len(answer.body) // 2],
                    "more_body": True,
                }
            )
            return
        if unread is not None:
            await send({"type": "http.response.body", "body": answer.body, "more_body": True})
            await _discard(unread, DRAIN_LIMIT_BYTES)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})


async def _discard(receive: Receive, limit: int) -> None:
    """Read and drop request body bytes until the body ends, the client leaves, or ``limit``."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        seen += len(message.get("body", b""))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def printable(text: str, limit: int = 200) -> str:
    """Log-safe text: no control characters, bounded length."""
    cleaned = "".join(c if c.isprintable() and c != " " else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


class _DropFilter(logging.Filter):
    """Hide uvicorn's complaint about the responses we truncate on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _DROP_LOG_MESSAGE


def _quiet_uvicorn_about_drops() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFilter) for f in logger.filters):
        logger.addFilter(_DropFilter())
