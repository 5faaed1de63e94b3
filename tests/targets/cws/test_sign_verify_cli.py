"""sign and verify from profiles: header format, explain, sidecar signatures, global options."""

from __future__ import annotations

import base64
import json

import pytest

from cwsctl.core import keys
from cwsctl.core.audit import body_sha256
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm
from tests.conftest import write_private, write_public


@pytest.fixture
def profile_with_key(cli, tmp_path, rsa2048):
    cli("profile", "init", "prod", "--url", "https://cws.example.org", "--username", "alice")
    key_file = write_private(tmp_path / "rsa.private", rsa2048)
    assert cli("keys", "import", str(key_file)).exit_code == 0
    return rsa2048


def test_sign_from_profile(cli, tmp_path, profile_with_key):
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}')
    result = cli("sign", str(body))
    assert result.exit_code == 0
    expected = signing.sign(profile_with_key, b'{"a": 1}', Algorithm.SHA256)
    assert (
        result.stdout
        == f"CWS-SHA256 Access=alice, Signature={base64.b64encode(expected).decode()}\n"
    )


@pytest.mark.parametrize("position", ["before", "after"])
def test_global_json_before_or_after_the_command(cli, tmp_path, profile_with_key, position):
    body = tmp_path / "body.json"
    body.write_bytes(b"{}")
    args = ["--json", "sign", str(body)] if position == "before" else ["sign", str(body), "--json"]
    document = json.loads(cli(*args).stdout)
    assert set(document) == {
        "header",
        "signature",
        "algorithm",
        "username",
        "body_sha256",
        "key_fingerprint",
    }
    assert document["algorithm"] == "CWS-SHA256" and document["username"] == "alice"
    assert document["body_sha256"] == body_sha256(b"{}")
    assert document["key_fingerprint"] == keys.fingerprint(profile_with_key.public_key())


def test_sign_reads_stdin_only_with_dash(cli, profile_with_key):
    result = cli("sign", "-", "--signature-only", input=b"hello")
    expected = signing.sign(profile_with_key, b"hello", Algorithm.SHA256)
    assert base64.b64decode(result.stdout) == expected


def test_sign_without_file_is_usage_error(run_cwsctl):
    result = run_cwsctl("sign", timeout=20)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("cwsctl: error:")


def test_sign_missing_or_directory_body_is_exit_2(cli, tmp_path, profile_with_key):
    assert cli("sign", str(tmp_path / "missing.json")).exit_code == 2
    assert cli("sign", str(tmp_path)).exit_code == 2


def test_sign_without_profile_or_username_is_exit_3(cli, tmp_path, rsa2048):
    body = tmp_path / "b"
    body.write_text("{}")
    key = write_private(tmp_path / "k", rsa2048)
    result = cli("sign", str(body), "--key", str(key))
    assert result.exit_code == 3
    assert "--username" in result.stderr
    assert cli("sign", str(body), "--key", str(tmp_path / "missing")).exit_code == 3


def test_sign_sha1_warns_legacy(cli, tmp_path, profile_with_key):
    body = tmp_path / "b"
    body.write_text("{}")
    result = cli("sign", str(body), "--algorithm", "sha1")
    assert result.stdout.startswith("CWS-SHA1 Access=alice, Signature=")
    assert "legacy" in result.stderr
    assert cli("sign", str(body), "--algorithm", "md5").exit_code == 2


@pytest.mark.parametrize(
    ("content", "warning"),
    [
        (b'{"a":1}\n', "ends with a newline"),
        (b'{"a":1,\r\n"b":2}', "CRLF"),
        (b'\xef\xbb\xbf{"a":1}', "BOM"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"{'a': 1}", "not valid JSON"),
        (b"", "empty"),
    ],
)
def test_explain_warns_about_byte_traps(cli, tmp_path, profile_with_key, content, warning):
    body = tmp_path / "body.txt"
    body.write_bytes(content)
    result = cli("sign", str(body), "--explain")
    assert result.exit_code == 0
    assert warning in result.stderr
    assert f"{len(content)} bytes" in result.stderr
    assert "openssl dgst -sha256 -sign" in result.stderr


def test_quiet_explain_prints_nothing_on_stderr(cli, tmp_path, profile_with_key):
    body = tmp_path / "body.txt"
    body.write_bytes(b"{}\n")
    result = cli("-q", "sign", str(body), "--explain")
    assert result.exit_code == 0 and result.stderr == ""


def _pin(cli, tmp_path, key, username="coremr"):
    cli(
        "profile",
        "trust",
        str(write_public(tmp_path / f"{username}.pem", key)),
        "--username",
        username,
    )


def test_verify_sidecar_signature_with_pinned_key(cli, tmp_path, profile_with_key, rsa2048_other):
    _pin(cli, tmp_path, rsa2048_other)
    body = tmp_path / "response.json"
    body.write_bytes(b'{"id": 7}')
    header = signing.AuthorizationHeader(
        Algorithm.SHA256, "coremr", signing.sign(rsa2048_other, body.read_bytes(), Algorithm.SHA256)
    )
    (tmp_path / "response.json.sig").write_text(header.format() + "\n")
    result = cli("verify", str(body), "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document == {
        "verified": True,
        "reason": "signature valid (CWS-SHA256)",
        "signer": "coremr",
        "key_fingerprint": keys.fingerprint(rsa2048_other.public_key()),
    }
    body.write_bytes(b'{"id": 8}')
    tampered = cli("verify", str(body))
    assert tampered.exit_code == 7 and tampered.stdout == ""


def test_verify_unpinned_signer_is_exit_3(cli, tmp_path, profile_with_key, rsa2048_other):
    _pin(cli, tmp_path, rsa2048_other, "coremr")
    body = tmp_path / "r.json"
    body.write_bytes(b"{}")
    header = signing.AuthorizationHeader(
        Algorithm.SHA256, "coremr-2", signing.sign(rsa2048_other, b"{}", Algorithm.SHA256)
    )
    result = cli("verify", str(body), "--header", header.format())
    assert result.exit_code == 3
    assert "coremr-2" in result.stderr


def test_verify_without_signature_source_is_exit_2(cli, tmp_path, profile_with_key):
    body = tmp_path / "r.json"
    body.write_bytes(b"{}")
    result = cli("verify", str(body))
    assert result.exit_code == 2
    assert "r.json.sig" in result.stderr


@pytest.mark.parametrize(
    "header",
    [
        "CWS-MD5 Access=coremr, Signature=AAAA",
        "Bearer abc",
        "CWS-SHA256 Access=coremr, Signature=!!!notbase64",
        "CWS-SHA256 Signature=AAAA",
    ],
)
def test_verify_malformed_header_is_exit_7(cli, tmp_path, profile_with_key, rsa2048, header):
    body = tmp_path / "r.json"
    body.write_bytes(b"{}")
    result = cli(
        "verify",
        str(body),
        "--header",
        header,
        "--key",
        str(write_public(tmp_path / "p.pem", rsa2048)),
    )
    assert result.exit_code == 7
    assert "Traceback" not in result.stderr


def test_verify_algorithm_conflict_is_exit_2(cli, tmp_path, rsa2048):
    body = tmp_path / "r.json"
    body.write_bytes(b"{}")
    header = signing.AuthorizationHeader(
        Algorithm.SHA256, "coremr", signing.sign(rsa2048, b"{}", Algorithm.SHA256)
    )
    pub = write_public(tmp_path / "p.pem", rsa2048)
    result = cli(
        "verify", str(body), "--header", header.format(), "--algorithm", "sha1", "--key", str(pub)
    )
    assert result.exit_code == 2
