"""uvicorn's h11 protocol plus a clock on receiving each request (the slowloris guard).

uvicorn and h11 already bound a request head's size (h11's ``max_incomplete_event_size``: past
it, 400 and close) and close a connection that stays silent after an answer
(``timeout_keep_alive``). Nothing bounds the time a connection may take to *send* a request: one
that never sends a byte, or sends its head or body a byte at a time, is kept open forever. This
subclass adds that clock, in two phases of ``request_timeout`` seconds each:

- waiting for a request head, from the connection opening or from the previous answer;
- then, if the request has a body, waiting for the rest of the body.

A connection that misses either deadline is closed without an answer (the application, if it was
reading the body, sees a disconnect). Time the application spends answering is not counted.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_HEAD = "head"
_BODY = "body"


class DeadlineH11Protocol(H11Protocol):
    """``H11Protocol`` that closes a connection slower than ``request_timeout`` to send a request."""

    def __init__(
        self, *args: Any, request_timeout: float, log_timeouts: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = request_timeout
        self.log_timeouts = log_timeouts
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # -- the points where the peer's state can change ---------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next request cycle
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        super().connection_lost(exc)

    # -- the clock ----------------------------------------------------------------------------
    def _watch(self) -> None:
        """Start a deadline when the peer starts owing us a head or a body; stop it when not."""
        phase: str | None = None
        if not self.transport.is_closing():
            state = self.conn.their_state
            if state is h11.IDLE:
                phase = _HEAD
            elif state is h11.SEND_BODY:
                phase = _BODY
        if phase != self._phase:
            self._enter(phase)

    def _enter(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        started = self._phase == _BODY or bool(self.conn.trailing_data[0])
        if self.log_timeouts and started:  # a silent idle connection is not worth a line
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            sys.stderr.write(
                f"cwsctl-sandbox: closed the connection from {client}: request {self._phase} "
                f"not received within {self.request_timeout:g}s\n"
            )
        self._phase = None
        self.transport.close()  # connection_lost tells h11 and the application
