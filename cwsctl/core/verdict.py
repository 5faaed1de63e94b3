"""What a check of an answer's signature concluded: the client keeps it, the audit log writes it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of a verification; ``reason`` says why in one line."""

    verified: bool
    reason: str
    signer: str | None = None
    key_fingerprint: str | None = None

    def to_json(self) -> dict[str, object]:
        """The stable ``--json`` shape."""
        return {
            "verified": self.verified,
            "reason": self.reason,
            "signer": self.signer,
            "key_fingerprint": self.key_fingerprint,
        }
