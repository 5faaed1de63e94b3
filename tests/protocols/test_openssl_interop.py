"""Byte-exact interoperability with the walkthrough's openssl commands, in both directions."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.conftest import needs_openssl
from tests.openssl_keys import OpenSSLKey, openssl_sign, openssl_verify

pytestmark = needs_openssl

LABELS = ["pkcs8-2048", "pkcs1-2048", "pkcs8-enc-2048", "pkcs1-enc-2048", "pkcs8-4096"]
BODY = b'{\n  "external_id": "FakeExternalID",\n  "facility": 10000\n}\n'


def sign_args(key: OpenSSLKey, tmp_path: Path) -> list[str]:
    args = ["--key", str(key.private), "--username", "fake-username"]
    if key.passphrase:
        pass_file = tmp_path / "pass.txt"
        pass_file.write_text(key.passphrase + "\n")
        args += ["--passphrase-file", str(pass_file)]
    return args


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
@pytest.mark.parametrize("label", LABELS)
def test_signature_equals_openssl_and_openssl_verifies_it(
    cli, openssl_keys, tmp_path, label, algorithm
):
    key = openssl_keys[label]
    body = tmp_path / "body.txt"
    body.write_bytes(BODY)
    raw = tmp_path / f"sign.{algorithm}"

    result = cli(
        "sign",
        str(body),
        *sign_args(key, tmp_path),
        "--algorithm",
        algorithm,
        "--raw-out",
        str(raw),
    )

    assert result.exit_code == 0, result.stderr
    expected = openssl_sign(key, body, algorithm)
    assert raw.read_bytes() == expected
    scheme = f"CWS-{algorithm.upper()}"
    b64 = base64.b64encode(expected).decode()
    assert result.stdout == f"{scheme} Access=fake-username, Signature={b64}\n"
    check = openssl_verify(key.public, body, raw, algorithm)
    assert check.returncode == 0 and b"Verified OK" in check.stdout


@pytest.mark.parametrize("label", ["pkcs8-2048", "pkcs1-enc-2048", "pkcs8-4096"])
def test_signature_only_matches_openssl_enc_base64(cli, openssl_keys, tmp_path, label):
    key = openssl_keys[label]
    body = tmp_path / "body.txt"
    body.write_bytes(BODY)
    result = cli("sign", str(body), *sign_args(key, tmp_path), "--signature-only")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == base64.b64encode(openssl_sign(key, body)).decode()


def test_empty_body_is_signed_like_openssl(cli, openssl_keys, tmp_path):
    key = openssl_keys["pkcs8-2048"]
    body = tmp_path / "body.txt"
    body.write_bytes(b"")
    raw = tmp_path / "sig"
    result = cli("sign", str(body), *sign_args(key, tmp_path), "--raw-out", str(raw))
    assert result.exit_code == 0
    assert raw.read_bytes() == openssl_sign(key, body)


@pytest.mark.parametrize("form", ["binary", "base64", "base64-wrapped", "header"])
@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
@pytest.mark.parametrize("label", ["pkcs8-2048", "pkcs1-2048", "pkcs8-4096"])
def test_verify_accepts_openssl_signatures(cli, openssl_keys, tmp_path, label, algorithm, form):
    key = openssl_keys[label]
    body = tmp_path / "body.txt"
    body.write_bytes(BODY)
    raw = openssl_sign(key, body, algorithm)
    b64 = base64.b64encode(raw).decode()
    sig = tmp_path / "sig"
    sig.write_bytes(
        {
            "binary": raw,
            "base64": b64.encode(),
            "base64-wrapped": "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64)).encode()
            + b"\n",
            "header": f"CWS-{algorithm.upper()} Access=coremr, Signature={b64}\n".encode(),
        }[form]
    )
    args = ["verify", str(body), "--key", str(key.public), "--signature-file", str(sig)]
    if form != "header":
        args += ["--algorithm", algorithm]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Verified OK\n"


def test_verify_with_private_key_file_and_inline_signature(cli, openssl_keys, tmp_path):
    key = openssl_keys["pkcs1-2048"]
    body = tmp_path / "body.txt"
    body.write_bytes(BODY)
    b64 = base64.b64encode(openssl_sign(key, body)).decode()
    result = cli("verify", str(body), "--key", str(key.private), "--signature", b64)
    assert result.exit_code == 0, result.stderr


def test_tampered_body_fails_with_exit_7(cli, openssl_keys, tmp_path):
    key = openssl_keys["pkcs8-2048"]
    body = tmp_path / "body.txt"
    body.write_bytes(BODY)
    sig = tmp_path / "body.txt.sig"
    sig.write_text(
        f"CWS-SHA256 Access=coremr, Signature={base64.b64encode(openssl_sign(key, body)).decode()}\n"
    )
    body.write_bytes(BODY.replace(b"10000", b"10001"))
    result = cli("verify", str(body), "--key", str(key.public))
    assert result.exit_code == 7
    assert result.stdout == ""
    assert "Verification failure" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_key_fails_with_exit_7_and_names_the_key_tried(cli, openssl_keys, tmp_path):
    signer, other = openssl_keys["pkcs8-2048"], openssl_keys["pkcs1-2048"]
    body = tmp_path / "body.txt"
    body.write_bytes(BODY)
    b64 = base64.b64encode(openssl_sign(signer, body)).decode()
    result = cli("verify", str(body), "--key", str(other.public), "--signature", b64, "--json")
    assert result.exit_code == 7
    import json

    document = json.loads(result.stdout)
    assert document["verified"] is False
    assert document["key_fingerprint"].startswith("SHA256:")
    assert document["key_fingerprint"] in document["reason"]


def test_public_key_is_byte_identical_to_openssl_pubout(cli, openssl_keys, tmp_path):
    key = openssl_keys["pkcs1-2048"]
    result = cli("keys", "import", str(key.private))
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == key.public.read_bytes()
    exported = cli("keys", "export-public")
    assert exported.stdout_bytes == key.public.read_bytes()
