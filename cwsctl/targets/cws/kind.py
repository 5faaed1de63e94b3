"""CorEMR Web Services: signed bodies, signed answers, ``POST /ws/patients/``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cwsctl.core.kind import Kind, PatientMapping
from cwsctl.targets.cws.patients import CwsPatients

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.audit import AuditLog
    from cwsctl.core.checks import Check
    from cwsctl.core.client import ApiClient
    from cwsctl.core.keys import PassphraseSource
    from cwsctl.core.profile import Profile, Store


class CwsKind(Kind):
    """CorEMR: sign every body with the profile key, verify every answer with pinned keys."""

    name = "cws"

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
        """A signing, verifying ``CwsClient`` as the profile's username."""
        from cwsctl.targets.cws.client import CwsClient
        from cwsctl.targets.cws.identity import load_identity

        identity = load_identity(profile.name, store=store, passphrase=passphrase)
        return CwsClient(
            identity,
            profile.trusted,
            base_url=profile.url,
            verify_responses=verify_responses,
            audit=audit,
            **options,
        )

    def patients(self, profile: Profile) -> PatientMapping:
        """``POST /ws/patients/``."""
        return CwsPatients()

    def summary(self, profile: Profile) -> str:
        """``https://… as 'site-user' (CWS-SHA256)``."""
        from cwsctl.core.urls import without_userinfo

        return (
            f"{without_userinfo(profile.url)} as {profile.username!r} ({profile.algorithm.scheme})"
        )

    def incomplete(self, profile: Profile) -> str | None:
        """A CWS profile needs a URL and the username CorEMR knows the key by."""
        if profile.url and profile.username:
            return None
        return f"cwsctl profile init {profile.name} --url https://… --username USER"

    def key_note(self, profile: Profile) -> str:
        """CorEMR's Public Keys page holds the key under the username."""
        return (
            f"CorEMR's Public Keys page must hold this key under the username {profile.username!r}"
        )

    def local_checks(self, profile: Profile, store: Store) -> Iterator[Check]:
        """Answers can be verified only against a pinned CorEMR key."""
        from cwsctl.core.checks import failed, passed
        from cwsctl.core.errors import ExitStatus

        if not profile.trusted:
            yield failed(
                "pinned server key",
                "no CorEMR key pinned: responses cannot be verified",
                "cwsctl profile trust COREMR_PUBLIC_KEY.pem",
                ExitStatus.LOCAL_KEY,
            )
            return
        pins = ", ".join(f"{t.username} {t.fingerprint}" for t in profile.trusted)
        yield passed("pinned server key", pins)

    def doctor_path(self, profile: Profile) -> str:
        """CWS's root."""
        return "/ws/"

    def remote_checks(
        self,
        profile: Profile,
        store: Store,
        private_key: rsa.RSAPrivateKey | None,
        path: str,
        timeout: float,
    ) -> Iterator[Check]:
        """A signed GET whose answer must verify."""
        from cwsctl.core.checks import request_check
        from cwsctl.targets.cws.client import CwsClient
        from cwsctl.targets.cws.identity import SigningIdentity

        assert private_key is not None  # the doctor loads it: this kind uses a key
        identity = SigningIdentity(
            private_key, profile.username, profile.algorithm, store.private_key_path(profile.name)
        )
        client = CwsClient(
            identity, profile.trusted, base_url=profile.url, timeout=timeout, allow_http=True
        )
        yield request_check(
            "signed request",
            client,
            path,
            f"register our key ({identity.fingerprint}) in CorEMR under {identity.username!r}, "
            "or fix the username in the profile",
        )


KIND = CwsKind()
