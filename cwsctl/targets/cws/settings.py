"""A cws profile's settings: the username CorEMR knows the profile's key by, the signature
algorithm, and the pinned CorEMR keys its answers must be signed with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cwsctl.core.profile import ProfileSettings
from cwsctl.protocols.cws_signature import Algorithm, TrustedKey


@dataclass
class CwsSettings(ProfileSettings):
    """Bodies are signed as ``username`` (registered in CorEMR's Public Keys page) with
    ``algorithm``; answers must verify with a ``trusted`` key (more than one while CorEMR rotates
    its key)."""

    username: str = ""
    algorithm: Algorithm = Algorithm.SHA256
    trusted: list[TrustedKey] = field(default_factory=list)

    def trusted_for(self, username: str) -> list[TrustedKey]:
        """Pinned keys whose signer name matches ``username``."""
        return [t for t in self.trusted if t.username == username]

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> CwsSettings:
        """``username``, ``algorithm`` and the ``trusted`` array of tables."""
        return cls(
            username=str(table.get("username", "")),
            algorithm=Algorithm.from_name(str(table.get("algorithm", "sha256"))),
            trusted=_trusted(table),
        )

    def to_toml(self) -> dict[str, Any]:
        """The shape a profile had before kinds existed: username, algorithm, trusted."""
        return {
            "username": self.username,
            "algorithm": self.algorithm.value,
            "trusted": [
                {"username": t.username, "public_key": t.public_key_pem} for t in self.trusted
            ],
        }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """``--algorithm`` must name a CWS algorithm, whatever the profile's kind."""
        Algorithm.from_name(options["algorithm"])

    @classmethod
    def from_options(cls, options: Mapping[str, Any], previous: Mapping[str, Any]) -> CwsSettings:
        """``--username`` (else the previous one) and ``--algorithm``; pinned keys are kept."""
        username = options["username"]
        return cls(
            username=username if username is not None else str(previous.get("username", "")),
            algorithm=Algorithm.from_name(options["algorithm"]),
            trusted=_trusted(previous),
        )


def _trusted(table: Mapping[str, Any]) -> list[TrustedKey]:
    return [TrustedKey(str(t["username"]), str(t["public_key"])) for t in table.get("trusted", [])]
