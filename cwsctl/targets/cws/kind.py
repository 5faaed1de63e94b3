"""CorEMR Web Services: signed bodies, signed answers, ``POST /ws/patients/``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cwsctl.core.kind import Kind, PatientMapping
from cwsctl.targets.cws.patients import CwsPatients
from cwsctl.targets.cws.settings import CwsSettings

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
            CwsSettings.of(profile).trusted,
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

        settings = CwsSettings.of(profile)
        return f"{without_userinfo(profile.url)} as {settings.username!r} ({settings.algorithm.scheme})"

    def incomplete(self, profile: Profile) -> str | None:
        """A CWS profile needs a URL and the username CorEMR knows the key by."""
        if profile.url and CwsSettings.of(profile).username:
            return None
        return f"cwsctl profile init {profile.name} --url https://… --username USER"

    def key_note(self, profile: Profile) -> str:
        """CorEMR's Public Keys page holds the key under the username."""
        username = CwsSettings.of(profile).username
        return f"CorEMR's Public Keys page must hold this key under the username {username!r}"

    def keygen_next(self, profile: Profile | None, name: str, next_key: bool) -> list[str]:
        """Register the key in CorEMR's Public Keys page (then make the profile, or rotate)."""
        username = CwsSettings.of(profile).username if profile is not None else "USERNAME"
        lines = [
            "Next: in CorEMR open Administration → Public Keys, press +, paste the public key "
            f"above into Contents and use the username {username!r}."
        ]
        if profile is None:
            lines.append(f"Then: cwsctl profile init {name} --url https://… --username USER")
        if next_key:
            lines.append("Once CorEMR has it, switch to it with: cwsctl keys rotate")
        return lines

    def local_checks(self, profile: Profile, store: Store) -> Iterator[Check]:
        """Answers can be verified only against a pinned CorEMR key."""
        from cwsctl.core.checks import failed, passed
        from cwsctl.core.errors import ExitStatus

        trusted = CwsSettings.of(profile).trusted
        if not trusted:
            yield failed(
                "pinned server key",
                "no CorEMR key pinned: responses cannot be verified",
                "cwsctl profile trust COREMR_PUBLIC_KEY.pem",
                ExitStatus.LOCAL_KEY,
            )
            return
        pins = ", ".join(f"{t.username} {t.fingerprint}" for t in trusted)
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
        settings = CwsSettings.of(profile)
        identity = SigningIdentity(
            private_key, settings.username, settings.algorithm, store.private_key_path(profile.name)
        )
        client = CwsClient(
            identity, settings.trusted, base_url=profile.url, timeout=timeout, allow_http=True
        )
        yield request_check(
            "signed request",
            client,
            path,
            f"register our key ({identity.fingerprint}) in CorEMR under {identity.username!r}, "
            "or fix the username in the profile",
        )


KIND = CwsKind()
