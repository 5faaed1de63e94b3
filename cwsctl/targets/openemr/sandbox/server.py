"""The OpenEMR flavour of the sandbox: OAuth2 with JWT client assertions, Standard API, FHIR R4;
this module holds its server (:class:`OpenEmrSandboxServer`: settings, administration, reset).

A stand-in for an OpenEMR 7.0.3 or 7.0.4+ instance's API (site ``default`` unless told
otherwise), modelled on OpenEMR's source; ``cwsctl/sandbox/README.md`` keeps the table of what
it does, for which version, with references, and what it does not model. The routes and the
bearer-token check are in :mod:`.app`.
"""

from __future__ import annotations

import re
from pathlib import Path

from cwsctl.sandbox.db import default_data_dir
from cwsctl.sandbox.envelope import MAX_BODY_BYTES
from cwsctl.sandbox.faults import Faults
from cwsctl.sandbox.server import DEFAULT_HOST, REQUEST_TIMEOUT_S, BaseSandboxServer
from cwsctl.targets.openemr.sandbox.app import OpenEmrApp
from cwsctl.targets.openemr.sandbox.export_routes import ExportService
from cwsctl.targets.openemr.sandbox.export_support import (
    DEFAULT_EXPORT_TTL_S,
    OPENEMR_MODE,
    ExportFaults,
)
from cwsctl.targets.openemr.sandbox.scopes import V703, V704, VERSIONS
from cwsctl.targets.openemr.sandbox.state import OpenEmrState
from cwsctl.targets.openemr.sandbox.store import ACCESS, REFRESH, Client, OpenEmrStore, Patient

DEFAULT_SITE = "default"
DEFAULT_VERSION = V704
_SITE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class OpenEmrSandboxServer(BaseSandboxServer):
    """An OpenEMR stand-in on ``host:port`` with state in ``data_dir/openemr.db``.

    Runs like :class:`~cwsctl.sandbox.server.SandboxServer` (``start``/``stop``, ``with``,
    ``serve_forever``, ``faults``). OpenEMR's settings:

    - ``version``: ``"7.0.3"`` or ``"7.0.4"`` (7.0.4 and master behave alike here);
    - ``site``: the ``{site}`` in every path;
    - ``site_address``: the Site Address Override (e.g. ``https://emr.example.test``); None →
      every request's scheme + ``X-Forwarded-Host`` or ``Host``. Base of the discovery URLs and
      of the ``aud`` an assertion must carry;
    - ``system_scopes``: "Enable OpenEMR FHIR System Scopes" (``system/*`` scopes exist);
    - ``manual_approval``: every new client starts disabled, not only confidential ones with
      ``user/`` or ``system/`` scopes;
    - ``token_lifetime``: None → OpenEMR's (client credentials 300 s, user tokens 3600 s); an
      int overrides every access token's lifetime (tests);
    - ``export_mode``: ``"openemr"`` (bulk export as OpenEMR's source does it) or ``"spec"``
      (the Bulk Data Access IG: asynchronous, ``export_delay`` seconds of 202s), see
      :mod:`.export_routes`; ``export_ttl``: seconds export files live after the job started
      (OpenEMR's hour; tests shorten it). ``export_faults`` (:class:`ExportFaults`) are settable
      while running.
    """

    store: OpenEmrStore

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        site: str = DEFAULT_SITE,
        version: str = DEFAULT_VERSION,
        site_address: str | None = None,
        system_scopes: bool = False,
        manual_approval: bool = False,
        token_lifetime: int | None = None,
        export_mode: str = OPENEMR_MODE,
        export_delay: float = 0.0,
        export_ttl: float = DEFAULT_EXPORT_TTL_S,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if not _SITE.match(site):
            raise ValueError(f"site must be 1-64 letters, digits, '_' or '-', not {site!r}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, not {version!r}")
        if token_lifetime is not None and (
            isinstance(token_lifetime, bool)
            or not isinstance(token_lifetime, int)
            or token_lifetime < 1
        ):
            raise ValueError(
                f"token_lifetime must be a whole number of seconds ≥ 1, not {token_lifetime!r}"
            )
        if site_address is not None and not re.match(
            r"^https?://[^/?#\s]+(/[^?#\s]*)?$", site_address
        ):
            raise ValueError(f"site_address must be an http(s) URL, not {site_address!r}")
        self._init_running(
            host=host, port=port, access_log=access_log, request_timeout=request_timeout
        )
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.site = site
        self.store = OpenEmrStore(self.data_dir)
        self.state = OpenEmrState(
            self.store,
            site,
            version=version,
            site_address=site_address.rstrip("/") if site_address else None,
            system_scopes=system_scopes,
            manual_approval=manual_approval,
            token_lifetime=token_lifetime,
            log_refusals=access_log,
        )
        self.export = ExportService(
            self.state, self.data_dir, mode=export_mode, delay=export_delay, ttl=export_ttl
        )
        self.app = OpenEmrApp(
            self.state,
            faults=faults if faults is not None else Faults.from_env(),
            access_log=access_log,
            max_body=max_body,
            export=self.export,
        )

    # -- configuration ------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The OpenEMR version modelled: ``7.0.3`` or ``7.0.4``."""
        return self.state.version

    @property
    def site_address(self) -> str | None:
        """The Site Address Override, or None (each request's own scheme and host)."""
        return self.state.site_address

    @property
    def system_scopes(self) -> bool:
        """Whether ``system/*`` scopes are turned on."""
        return self.state.system_scopes

    @property
    def manual_approval(self) -> bool:
        """Whether every new client starts disabled."""
        return self.state.manual_approval

    @property
    def export_mode(self) -> str:
        """``openemr`` or ``spec``."""
        return self.export.mode

    @property
    def export_delay(self) -> float:
        """Spec mode: seconds a job answers 202 before its manifest."""
        return self.export.delay

    @property
    def export_faults(self) -> ExportFaults:
        """The export fault switches (attributes settable while the server runs)."""
        return self.export.faults

    @export_faults.setter
    def export_faults(self, value: ExportFaults) -> None:
        self.export.faults = value

    @property
    def group_id(self) -> str:
        """The one Group (a provider panel holding every patient) ``Group/{id}/$export`` knows."""
        return self.export.group_id

    @property
    def token_lifetime(self) -> int | None:
        """The access-token lifetime override (None: OpenEMR's); settable while running."""
        return self.state.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int | None) -> None:
        self.state.token_lifetime = seconds

    # -- URLs ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The site address: the override, else this server's own URL."""
        return self.state.site_address or self.url

    @property
    def token_url(self) -> str:
        """The configured token URL: the ``aud`` the server checks (requests without a proxy)."""
        return f"{self.base_url}/oauth2/{self.site}/token"

    @property
    def oauth_url(self) -> str:
        """``{site address}/oauth2/{site}`` (registration, authorize, token, discovery)."""
        return f"{self.base_url}/oauth2/{self.site}"

    @property
    def fhir_url(self) -> str:
        """The FHIR base as the server names it: ``{site address}/apis/{site}/fhir``."""
        return f"{self.base_url}/apis/{self.site}/fhir"

    @property
    def api_url(self) -> str:
        """``{this server's URL}/apis/{site}``: where to send API requests (never the override)."""
        return f"{self.url}/apis/{self.site}"

    # -- administration -----------------------------------------------------------------------
    def enable_client(self, client_id: str) -> bool:
        """Enable a client (Admin → System → API Clients → Enable); False if there is none."""
        return self.store.set_enabled(client_id, True)

    def disable_client(self, client_id: str) -> bool:
        """Disable a client again; False if there is none."""
        return self.store.set_enabled(client_id, False)

    def clients(self) -> list[dict[str, object]]:
        """Every registered client: ``client_id``, ``enabled``, ``scope`` (and name, role)."""
        return [client.to_json() for client in self.store.clients()]

    def client(self, client_id: str) -> Client | None:
        """One registered client, or None."""
        return self.store.client(client_id)

    def revoke_tokens(self, *, refresh: bool = False) -> int:
        """Revoke every live access token (and refresh token, if asked); return how many."""
        return self.store.revoke((ACCESS, REFRESH) if refresh else (ACCESS,))

    def logout(self) -> int:
        """End every user's login (trusted-user sessions); return how many there were.

        Every API call with one of their access tokens then answers 400 "Refresh Token revoked
        or logged out", and their refresh tokens get 400 ``invalid_grant``. Client-credentials
        tokens (the system user) are not affected.
        """
        return self.store.end_sessions()

    def patients(self) -> list[Patient]:
        """Every stored patient, by pid."""
        return self.store.patients()

    def count_patients(self) -> int:
        """How many patients are stored."""
        return self.store.count_patients()

    def seed_patients(
        self, n: int, *, facility: str = "10000", prefix: str = "P", created_at: str | None = None
    ) -> int:
        """Insert ``n`` generated patients at once (one transaction); return how many."""
        return self.store.seed_patients(n, facility=facility, prefix=prefix, created_at=created_at)

    def reset(self) -> None:
        """Forget clients, tokens, sessions, patients and export jobs; switch faults off."""
        self.store.clear()
        self.export.clear()
        self.faults = Faults()


__all__ = [
    "DEFAULT_SITE",
    "DEFAULT_VERSION",
    "V703",
    "V704",
    "ExportFaults",
    "OpenEmrSandboxServer",
]
