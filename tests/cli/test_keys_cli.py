"""keygen and keys import/show/export-public: formats, permissions, passphrases, refusals."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cwsctl.core import keys
from tests.conftest import needs_openssl, write_private
from tests.openssl_keys import PASSPHRASE


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_stores_pkcs8_0600_in_0700_dir_and_prints_public_pem(cli, cwsctl_home):
    cli("profile", "init", "prod", "--url", "https://cws.example.org", "--username", "alice")
    result = cli("keygen", "--bits", "2048")
    assert result.exit_code == 0, result.stderr
    key_path = cwsctl_home / "keys" / "prod.pem"
    assert mode(key_path) == 0o600
    assert mode(cwsctl_home / "keys") == 0o700
    pem = key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    private = keys.parse_private_key(pem)
    assert result.stdout_bytes == keys.public_key_pem(private.public_key())
    assert keys.fingerprint(private.public_key()) in result.stderr
    assert "Administration → Public Keys" in result.stderr
    assert "'alice'" in result.stderr
    assert "PRIVATE" not in result.stdout + result.stderr


def test_keygen_with_umask_000_is_still_private(cli, cwsctl_home):
    import os

    old = os.umask(0)
    try:
        assert cli("keygen", "--bits", "2048").exit_code == 0
    finally:
        os.umask(old)
    assert mode(cwsctl_home / "keys" / "default.pem") == 0o600


@needs_openssl
def test_keygen_encrypted_with_passphrase_and_public_out(cli, cwsctl_home, tmp_path):
    pass_file = tmp_path / "pass"
    pass_file.write_text("s3cret\n")
    pub = tmp_path / "rsa.public"
    result = cli(
        "keygen",
        "--bits",
        "2048",
        "--passphrase-file",
        str(pass_file),
        "--public-out",
        str(pub),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["encrypted"] is True and document["bits"] == 2048
    key_path = cwsctl_home / "keys" / "default.pem"
    assert key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert pub.read_text() == document["public_key"]
    # openssl reads it with the same passphrase and derives the same public key
    derived = subprocess.run(
        ["openssl", "rsa", "-in", str(key_path), "-passin", "pass:s3cret", "-pubout"],
        capture_output=True,
        check=True,
    ).stdout
    assert derived.decode() == document["public_key"]


def test_keygen_refuses_overwrite_without_force(cli, cwsctl_home):
    assert cli("keygen", "--bits", "2048").exit_code == 0
    before = (cwsctl_home / "keys" / "default.pem").read_bytes()
    result = cli("keygen", "--bits", "2048")
    assert result.exit_code == 3
    assert "--force" in result.stderr
    assert (cwsctl_home / "keys" / "default.pem").read_bytes() == before
    assert cli("keygen", "--bits", "2048", "--force").exit_code == 0
    assert (cwsctl_home / "keys" / "default.pem").read_bytes() != before


def test_keygen_rejects_odd_sizes(cli):
    assert cli("keygen", "--bits", "1024").exit_code == 2


@needs_openssl
@pytest.mark.parametrize("label", ["pkcs8-2048", "pkcs1-2048", "pkcs8-enc-2048", "pkcs1-enc-2048"])
@pytest.mark.slow
def test_import_every_walkthrough_format(cli, cwsctl_home, openssl_keys, tmp_path, label):
    key = openssl_keys[label]
    args = ["keys", "import", str(key.private)]
    if key.passphrase:
        (tmp_path / "pass").write_text(PASSPHRASE)
        args += ["--passphrase-file", str(tmp_path / "pass")]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    stored = cwsctl_home / "keys" / "default.pem"
    assert mode(stored) == 0o600
    assert result.stdout_bytes == key.public.read_bytes()
    # an encrypted key stays encrypted
    assert stored.read_bytes().startswith(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
        if key.passphrase
        else b"-----BEGIN PRIVATE KEY-----"
    )


@needs_openssl
@pytest.mark.slow
def test_import_refuses_overwrite_without_force(cli, openssl_keys, cwsctl_home):
    assert cli("keys", "import", str(openssl_keys["pkcs8-2048"].private)).exit_code == 0
    result = cli("keys", "import", str(openssl_keys["pkcs1-2048"].private))
    assert result.exit_code == 3
    assert cli("keys", "import", str(openssl_keys["pkcs1-2048"].private), "--force").exit_code == 0
    shown = cli("keys", "show")
    assert shown.stdout_bytes == openssl_keys["pkcs1-2048"].public.read_bytes()


def _ec_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"this is not a key\n", "not a readable private key"),
        (b"\x00\xff\x10garbage", "not a readable private key"),
        ("public", "public key"),
        ("ec", "EC key"),
        ("rsa1024", "1024-bit"),
    ],
)
def test_import_rejects_bad_keys_with_exit_3(cli, tmp_path, rsa2048, content, message):
    path = tmp_path / "bad.key"
    if content == "public":
        content = keys.public_key_pem(rsa2048.public_key())
    elif content == "ec":
        content = _ec_pem()
    elif content == "rsa1024":
        from cryptography.hazmat.primitives.asymmetric import rsa

        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point of the test
        content = keys.private_key_pem(small)  # type: ignore[arg-type]
    path.write_bytes(content)
    path.chmod(0o600)
    result = cli("keys", "import", str(path))
    assert result.exit_code == 3
    assert message in result.stderr
    assert result.stderr.startswith("cwsctl: error:")
    assert "Traceback" not in result.stderr


def test_import_missing_file_is_exit_3(cli, tmp_path):
    result = cli("keys", "import", str(tmp_path / "nope.private"))
    assert result.exit_code == 3
    assert "not found" in result.stderr


def test_wrong_passphrase_is_exit_3(cli, tmp_path, rsa2048):
    path = write_private(tmp_path / "enc.pem", rsa2048, b"right")
    (tmp_path / "pass").write_text("wrong")
    result = cli("keys", "import", str(path), "--passphrase-file", str(tmp_path / "pass"))
    assert result.exit_code == 3
    assert "wrong passphrase" in result.stderr


def test_passphrase_from_environment_variable(cli, tmp_path, rsa2048, monkeypatch):
    path = write_private(tmp_path / "enc.pem", rsa2048, b"right")
    (tmp_path / "pass").write_text("right\n")
    monkeypatch.setenv("CWSCTL_PASSPHRASE_FILE", str(tmp_path / "pass"))
    assert cli("keys", "import", str(path)).exit_code == 0


def test_no_passphrase_source_without_terminal_names_both_options(run_cwsctl, tmp_path, rsa2048):
    path = write_private(tmp_path / "enc.pem", rsa2048, b"right")
    result = run_cwsctl("sign", str(path), "--key", str(path), "--username", "u", timeout=30)
    assert result.returncode == 3
    err = result.stderr.decode()
    assert "--passphrase-file" in err and "CWSCTL_PASSPHRASE_FILE" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("unsafe", [0o640, 0o604, 0o644, 0o660])
def test_group_or_world_readable_key_is_refused(cli, tmp_path, rsa2048, unsafe):
    path = write_private(tmp_path / "rsa.private", rsa2048)
    path.chmod(unsafe)
    body = tmp_path / "body.json"
    body.write_text("{}")
    result = cli("sign", str(body), "--key", str(path), "--username", "u")
    assert result.exit_code == 3
    assert f"chmod 600 {path}" in result.stderr


def test_keys_show_and_export_public(cli, tmp_path):
    gen = cli("keygen", "--bits", "2048")
    shown = cli("keys", "show", "--json")
    document = json.loads(shown.stdout)
    assert document["public_key"].encode() == gen.stdout_bytes
    assert document["fingerprint"].startswith("SHA256:") and "=" not in document["fingerprint"]
    out_file = tmp_path / "rsa.public"
    assert cli("keys", "export-public", str(out_file)).exit_code == 0
    assert out_file.read_bytes() == gen.stdout_bytes


def test_keys_show_without_key_is_exit_3(cli):
    result = cli("keys", "show")
    assert result.exit_code == 3
    assert "cwsctl keygen" in result.stderr


@needs_openssl
def test_fingerprint_matches_ssh_style_over_der_spki(openssl_keys):
    import base64
    import hashlib

    key = openssl_keys["pkcs8-2048"]
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(key.public), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert keys.fingerprint(keys.load_public_key(key.public)) == expected
