"""`cwsctl demo` (--kind cws): the whole CWS walkthrough against an in-process sandbox.

Key pair, registration, the pinned server key, the walkthrough's example patient created with a
signed request, the signed response verified (and by openssl when installed), a tampered body
failing; in the caller's temporary directory, on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from cwsctl.core.bulk.rows import WALKTHROUGH_EXAMPLE
from cwsctl.core.errors import SignatureError

DEMO_USERNAME = "demo-user"
Step = Callable[..., None]
#: What the demo showed, said last.
DONE = "request signed, response verified, tampering detected"


def run_demo(step: Step, root: Path, bits: int) -> str:
    """Every step of the walkthrough, each shown with its cwsctl command."""
    from cwsctl.core import keys
    from cwsctl.core.profile import Config, Profile, Store
    from cwsctl.protocols.cws_signature import AuthorizationHeader
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.cws.client import CwsClient
    from cwsctl.targets.cws.identity import load_identity
    from cwsctl.targets.cws.sandbox.server import SandboxServer
    from cwsctl.targets.cws.settings import CwsSettings
    from cwsctl.targets.cws.verification import Candidate, verify_with_candidates

    store = Store(root / "home")
    client_key = keys.generate_private_key(bits)
    keys.save_private_key(store.private_key_path("demo"), client_key, None, overwrite=False)
    fingerprint = keys.fingerprint(client_key.public_key())
    step("Make your key pair", f"cwsctl -p demo keygen --bits {bits}", fingerprint=fingerprint)

    with SandboxServer(
        root / "sandbox", key_bits=bits, faults=Faults(), access_log=False
    ) as server:
        server.register_key(DEMO_USERNAME, client_key.public_key())
        step(
            "Register the public key in CorEMR (Administration → Public Keys)",
            f"cwsctl sandbox add-key {DEMO_USERNAME} rsa.public",
            sandbox=server.url,
        )
        settings = CwsSettings(DEMO_USERNAME, trusted=[server.trusted_key])
        profile = Profile("demo", server.url, settings=settings)
        store.save(Config(default_profile="demo", profiles={"demo": profile}))
        step(
            "Pin CorEMR's public key to verify its responses",
            "cwsctl sandbox server-key > coremr.pem && cwsctl profile trust coremr.pem",
            server_key=server.fingerprint,
        )

        body = json.dumps(WALKTHROUGH_EXAMPLE, indent=2).encode() + b"\n"
        body_file = root / "body.json"
        body_file.write_bytes(body)
        identity = load_identity("demo", store=store)
        with CwsClient(identity, settings.trusted, base_url=server.url) as client:
            response = client.request("POST", "/ws/patients/", body)
        response.raise_for_status()
        check = response.verification
        assert check is not None
        response_file = root / "response.json"
        response_file.write_bytes(response.body)
        sig_file = root / "response.json.sig"
        sig_file.write_text(f"{response.signature_header}\n")
        step(
            "Create the walkthrough's example patient (signed request)",
            "cwsctl request POST /ws/patients/ body.json --output response.json",
            status=f"{response.status} {response.reason}",
            verified=f"by {check.signer} ({check.key_fingerprint})",
            patient_id=json.loads(response.body).get("id"),
        )

        parsed = AuthorizationHeader.parse(response.signature_header or "")
        server_candidate = [Candidate(server.public_key, "coremr")]
        good = verify_with_candidates(
            response_file.read_bytes(), parsed.signature, parsed.algorithm, server_candidate
        )
        openssl_says = _openssl_verify(root, server.public_key_pem, parsed.signature, response_file)
        step(
            "Verify CorEMR's response over its raw bytes",
            "cwsctl verify response.json",
            result="Verified OK" if good.verified else "Verification failure",
            openssl=openssl_says,
        )
        if not good.verified:
            raise SignatureError("the demo response did not verify")

        tampered = response.body.replace(b"First", b"Forged", 1)
        bad = verify_with_candidates(tampered, parsed.signature, parsed.algorithm, server_candidate)
        step(
            "Tamper with one field: verification must fail",
            "sed -i 's/First/Forged/' response.json && cwsctl verify response.json  # exit 7",
            result="Verification failure (as expected)" if not bad.verified else "VERIFIED?!",
        )
        if bad.verified:
            raise SignatureError("a tampered body verified: this must never happen")

    step(
        "The same by hand, for comparison",
        "openssl / curl",
        sign="openssl dgst -sha256 -sign rsa.private -out sign.sha256 body.json",
        base64="openssl enc -A -base64 -in sign.sha256 -out sign.txt",
        send="curl -X POST URL/ws/patients/ -H 'Authorization: CWS-SHA256 "
        f"Access={DEMO_USERNAME}, Signature=…' -H 'Content-Type: application/json' "
        "--data-binary @body.json",
        verify="openssl dgst -sha256 -verify coremr.pem -signature response_sign.sha256 response.json",
    )
    return DONE


def _openssl_verify(root: Path, server_pem: str, signature: bytes, body_file: Path) -> str:
    """Let the real openssl check the same two files, when it is installed."""
    if shutil.which("openssl") is None:
        return "(openssl not installed)"
    (root / "coremr.pem").write_text(server_pem)
    (root / "response_sign.sha256").write_bytes(signature)
    result = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(root / "coremr.pem"),
            "-signature",
            str(root / "response_sign.sha256"),
            str(body_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return (result.stdout or result.stderr).strip()
