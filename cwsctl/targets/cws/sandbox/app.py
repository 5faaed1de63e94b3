"""The CWS flavour's ASGI app: the envelope, checking request signatures and signing answers.

Steps 3 and 5 of :mod:`cwsctl.sandbox.envelope`: ``Authorization: CWS-SHA256|CWS-SHA1
Access=USER, Signature=B64`` checked over the raw body against the key registered for USER, and
every answer signed over its exact bytes as ``coremr`` (CWS-SHA256), whatever its status.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.errors import SignatureError
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm, AuthorizationHeader
from cwsctl.sandbox.envelope import (
    MAX_BODY_BYTES,
    Answer,
    EnvelopeApp,
    Scope,
    error_answer,
    printable,
)
from cwsctl.sandbox.faults import FaultDice, Faults
from cwsctl.targets.cws.sandbox.routes import cws_routes
from cwsctl.targets.cws.sandbox.store import SERVER_USERNAME, SandboxStore

RESPONSE_ALGORITHM = Algorithm.SHA256
SIGN_IN_THREADS_FROM_BITS = 3072


class SandboxApp(EnvelopeApp):
    """The CWS flavour: requests signed by a registered client key, answers signed as coremr."""

    def __init__(
        self,
        store: SandboxStore,
        server_key: rsa.RSAPrivateKey,
        *,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(cws_routes(store), faults=faults, access_log=access_log, max_body=max_body)
        self.store = store
        self._server_key = server_key
        self._public_keys: dict[str, rsa.RSAPublicKey] = {}  # parsed client keys, by PEM text
        # RSA signing releases the GIL. A 4096-bit signature costs ~2 ms, long enough that
        # signing on worker threads pays for the hop and lets concurrent requests use every
        # core; a 2048-bit one (~0.4 ms) is cheaper to do inline.
        self._signer: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="cws-sign")
            if server_key.key_size >= SIGN_IN_THREADS_FROM_BITS
            else None
        )

    def close(self) -> None:
        """Release the signing threads (the store is closed by its owner)."""
        if self._signer is not None:
            self._signer.shutdown(wait=False)

    def _faulty(self, path: str) -> bool:
        return path == "/ws/patients" or path.startswith("/ws/patients/")

    async def _signature_headers(
        self, body: bytes, dice: FaultDice | None
    ) -> tuple[list[tuple[bytes, bytes]], str]:
        if dice is not None and dice.hit(dice.faults.unsigned_rate):
            return [], " fault=unsigned"
        note = ""
        signature = await self._sign(body)
        if dice is not None and dice.hit(dice.faults.corrupt_rate):
            signature = _flip(signature)
            note = " fault=corrupt"
        value = AuthorizationHeader(RESPONSE_ALGORITHM, SERVER_USERNAME, signature).format()
        return [(b"authorization", value.encode("ascii"))], note

    def _authenticate(self, scope: Scope, body: bytes) -> tuple[str, Answer | None]:
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if not values:
            return "-", error_answer(
                401, "missing Authorization header; every request must be signed, even with no body"
            )
        if len(values) > 1:
            return "-", error_answer(401, "more than one Authorization header")
        try:
            header = AuthorizationHeader.parse(values[0].decode("latin-1"))
        except SignatureError as exc:
            return "-", error_answer(401, exc.message)
        username = printable(header.username, 64)
        pem = self.store.client_key_pem(header.username)
        if pem is None:
            return username, error_answer(
                401, f"unknown username {username!r}: no public key registered"
            )
        key = self._public_key(pem)
        if not signing.verify(key, body, header.signature, header.algorithm):
            return username, error_answer(
                401,
                f"{header.algorithm.scheme} signature does not verify over the request body "
                f"with the key registered for {username!r}",
            )
        return username, None

    async def _sign(self, body: bytes) -> bytes:
        if self._signer is None:
            return signing.sign(self._server_key, body, RESPONSE_ALGORITHM)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._signer, signing.sign, self._server_key, body, RESPONSE_ALGORITHM
        )

    def _public_key(self, pem: str) -> rsa.RSAPublicKey:
        key = self._public_keys.get(pem)
        if key is None:
            key = keys.parse_public_key(pem.encode("ascii"), source="registered key")
            self._public_keys[pem] = key
        return key


def _flip(signature: bytes) -> bytes:
    """Corrupt a signature but keep its length, so it still parses and only fails to verify."""
    return bytes(b ^ 0xFF for b in signature[:8]) + signature[8:]
