"""The CWS flavour's server: a CorEMR stand-in with its own signing key, on the shared runner.

How it runs, and its limits against hostile clients, are :mod:`cwsctl.sandbox.server`'s.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.protocols.cws_signature import TrustedKey
from cwsctl.sandbox.db import default_data_dir
from cwsctl.sandbox.envelope import MAX_BODY_BYTES
from cwsctl.sandbox.faults import Faults
from cwsctl.sandbox.server import DEFAULT_HOST, REQUEST_TIMEOUT_S, BaseSandboxServer
from cwsctl.targets.cws.sandbox.app import SandboxApp
from cwsctl.targets.cws.sandbox.store import (
    SERVER_USERNAME,
    ClientKey,
    SandboxStore,
    load_or_create_server_key,
)


class SandboxServer(BaseSandboxServer):
    """A CWS-compatible server on ``host:port`` with state in ``data_dir``.

    ``start()``/``stop()`` (or ``with SandboxServer(...) as server:``) run it in a background
    thread; ``serve_forever()`` runs it in the calling thread until SIGINT/SIGTERM. ``faults``
    defaults to the ``CWSCTL_SANDBOX_*`` environment; pass ``Faults()`` to ignore it.
    ``request_timeout``: seconds a client has to send a request head, then its body
    (:mod:`cwsctl.sandbox.server`).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        key_bits: int = keys.DEFAULT_BITS,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._init_running(
            host=host, port=port, access_log=access_log, request_timeout=request_timeout
        )
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.server_key: rsa.RSAPrivateKey = load_or_create_server_key(self.data_dir, key_bits)
        self.public_key_pem: str = keys.public_key_pem(self.server_key.public_key()).decode("ascii")
        self.store = SandboxStore(self.data_dir)
        self.app = SandboxApp(
            self.store,
            self.server_key,
            faults=faults if faults is not None else Faults.from_env(),
            access_log=access_log,
            max_body=max_body,
        )

    # -- identity and state ----------------------------------------------------------------
    @property
    def public_key(self) -> rsa.RSAPublicKey:
        """The key responses are signed with."""
        return self.server_key.public_key()

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the server key."""
        return keys.fingerprint(self.public_key)

    @property
    def trusted_key(self) -> TrustedKey:
        """What a client pins to trust this server: signer ``coremr`` and its public key."""
        return TrustedKey(SERVER_USERNAME, self.public_key_pem)

    def register_key(
        self,
        username: str,
        public_key: rsa.RSAPublicKey | bytes | str,
        *,
        replace: bool = False,
    ) -> ClientKey:
        """Register a client public key (object or PEM) under ``username``."""
        if isinstance(public_key, (bytes, str)):
            data = public_key.encode("ascii") if isinstance(public_key, str) else public_key
            public_key = keys.parse_public_key(data)
        return self.store.add_client_key(username, public_key, replace=replace)

    def reset(self, *, client_keys: bool = True) -> None:
        """Forget all patients (and client keys), and switch faults off."""
        self.store.clear(patients=True, client_keys=client_keys)
        self.faults = Faults()
