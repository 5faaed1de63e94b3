"""Profile kinds: what differs between the EMR APIs cwsctl talks to, one module per target.

A kind says how a client authenticates (its ``httpx.Auth``, inside an :class:`ApiClient`
subclass) and how a patient row becomes a request, how the answer reads, and how an in-doubt row
is looked up (its :class:`PatientMapping`). Everything else — profiles and keys, the bounded
client, the bulk runner and journal, exit codes — is shared. Each target implements a kind in
``cwsctl/targets/<t>/kind.py``, named by its entry in ``cwsctl.registry`` (whose ``kind_of``
finds a profile's); no command changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.audit import AuditLog
    from cwsctl.core.checks import Check
    from cwsctl.core.client import ApiClient, ApiResponse
    from cwsctl.core.keys import PassphraseSource
    from cwsctl.core.profile import Profile, Store


class PatientRequest(NamedTuple):
    """One patient as the request that creates it."""

    method: str
    path: str
    body: bytes
    headers: dict[str, str]


class Verdict(NamedTuple):
    """What an answer to a create request means for the row."""

    outcome: str  # created | exists | rejected | failed
    patient_id: Any = None
    message: str = ""


class PatientMapping(ABC):
    """How a validated patient record is created on, and found again in, one kind of server."""

    #: Input columns this kind's server has no place for (listed as not sent in the summary).
    unsent_fields: tuple[str, ...] = ()
    #: Look every patient up before creating it, not only rows in doubt: for servers that cannot
    #: refuse a duplicate themselves (every create makes a new patient).
    lookup_first: bool = False

    def check(self, record: dict[str, Any]) -> None:
        """Refuse a valid record this kind's server would refuse, before anything is sent.

        Raises :class:`~cwsctl.core.bulk.rows.PatientValidationError` (exit 2); a bulk load
        reports the row as invalid and goes on. The default accepts every record.
        """
        return None

    @abstractmethod
    def create_request(self, record: dict[str, Any]) -> PatientRequest:
        """The request that creates ``record``."""

    @abstractmethod
    def verdict(self, response: ApiResponse) -> Verdict:
        """Read the answer to :meth:`create_request`."""

    @abstractmethod
    def lookup_path(self, external_id: str, facility: str) -> str:
        """The GET path that finds a patient by external id in a facility."""

    @abstractmethod
    def found_id(self, response: ApiResponse) -> Any:
        """The server id in a 200 answer to :meth:`lookup_path`, or None when none matched."""

    def match(self, response: ApiResponse, external_id: str, facility: str) -> Any:
        """The id of the patient ``external_id`` of ``facility`` in a 200 answer to
        :meth:`lookup_path`, or None. The default trusts the search (:meth:`found_id`); a kind
        whose search can match other patients checks each one here."""
        return self.found_id(response)


class Kind(ABC):
    """One EMR API: its client and its patient mapping."""

    name: str

    @abstractmethod
    def open_client(
        self,
        profile: Profile,
        store: Store,
        *,
        passphrase: PassphraseSource | None,
        audit: AuditLog | None,
        verify_responses: bool = True,
        **options: Any,
    ) -> ApiClient:
        """A client for ``profile`` (``options``: ApiClient's timeout, size cap, retries…)."""

    @abstractmethod
    def patients(self, profile: Profile) -> PatientMapping:
        """How patients are created on ``profile``'s server."""

    # -- for `cwsctl doctor` ------------------------------------------------------------------
    @abstractmethod
    def summary(self, profile: Profile) -> str:
        """One line saying where the profile points and as whom."""

    @abstractmethod
    def incomplete(self, profile: Profile) -> str | None:
        """The command that completes an unusable profile, or None when it is complete."""

    def uses_key(self) -> bool:
        """Whether the profile's RSA key takes part (by default it does; a kind whose servers know
        no client key says no)."""
        return True

    @abstractmethod
    def key_note(self, profile: Profile) -> str:
        """Where the server must know the profile's public key from."""

    # -- for `cwsctl keygen` ------------------------------------------------------------------
    @abstractmethod
    def keygen_next(self, profile: Profile | None, name: str, next_key: bool) -> list[str]:
        """The lines `keygen` ends with: what to do with the new key of profile ``name``
        (``next_key``: the key `keys rotate` switches to). ``profile`` is None when no profile of
        that name exists yet (the default kind is asked then)."""

    @abstractmethod
    def local_checks(self, profile: Profile, store: Store) -> Iterator[Check]:
        """Checks of the kind's own settings, before anything is sent."""

    @abstractmethod
    def doctor_path(self, profile: Profile) -> str:
        """A harmless path on the server to test reachability with."""

    @abstractmethod
    def remote_checks(
        self,
        profile: Profile,
        store: Store,
        private_key: rsa.RSAPrivateKey | None,
        path: str,
        timeout: float,
    ) -> Iterator[Check]:
        """Checks that talk to the server as the profile (authentication, server identity)."""


def json_field(body: bytes, *path: str | int) -> Any:
    """``body``'s JSON value at ``path`` (keys and list indexes), or None if it is not there."""
    from cwsctl.core.jsondoc import loads_json

    try:
        value: Any = loads_json(body)
    except ValueError:
        return None
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return value
