"""`cwsctl doctor` pinpoints each broken setup we can simulate with the sandbox."""

from __future__ import annotations

import json
import socket

from cwsctl.core import keys
from cwsctl.core.profile import Store
from cwsctl.protocols.cws_signature import TrustedKey
from cwsctl.sandbox.faults import Faults


def checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_healthy_setup_passes_every_check(cli, sandbox, sandbox_profile):
    result = cli("doctor")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "✗" not in result.stdout
    for name in (
        "config",
        "profile",
        "key permissions",
        "key directory",
        "key readable",
        "key fingerprint",
        "pinned server key",
        "https",
        "dns",
        "reach",
        "clock",
        "signed request",
    ):
        assert f"✓ {name}:" in result.stdout
    document = json.loads(cli("doctor", "--json").stdout)
    assert document["ok"] is True and all(c["ok"] for c in document["checks"])


def test_quiet_healthy_doctor_prints_nothing(cli, sandbox, sandbox_profile):
    result = cli("-q", "doctor")
    assert result.exit_code == 0 and result.stdout == ""
    assert [
        line for line in result.stderr.splitlines() if not line.startswith("cwsctl-sandbox")
    ] == []


def test_wrong_key_registered_is_401_exit_4(cli, sandbox, sandbox_profile, rsa2048_other):
    sandbox.store.clear(patients=False, client_keys=True)
    sandbox.register_key("tester", rsa2048_other.public_key())
    result = cli("doctor", "--json")
    assert result.exit_code == 4
    check = checks(result)["signed request"]
    assert not check["ok"] and "401" in check["detail"] and "register our key" in check["fix"]


def test_unpinned_server_key_is_exit_7(cli, sandbox, sandbox_profile, rsa2048_other):
    store = Store()
    config = store.load()
    config.profiles["default"].settings.trusted = [
        TrustedKey("coremr", keys.public_key_pem(rsa2048_other.public_key()).decode())
    ]
    store.save(config)
    result = cli("doctor", "--json")
    assert result.exit_code == 7
    assert not checks(result)["signed request"]["ok"]


def test_no_pinned_key_is_exit_3(cli, sandbox, sandbox_profile):
    store = Store()
    config = store.load()
    config.profiles["default"].settings.trusted = []
    store.save(config)
    result = cli("doctor", "--json")
    assert result.exit_code == 3
    assert "profile trust" in checks(result)["pinned server key"]["fix"]


def test_unsafe_permissions_are_exit_3_with_chmod_fix(cli, sandbox, sandbox_profile, cwsctl_home):
    key = cwsctl_home / "keys" / "default.pem"
    key.chmod(0o644)
    result = cli("doctor")
    assert result.exit_code == 3
    assert f"fix: chmod 600 {key}" in result.stdout
    key.chmod(0o600)
    (cwsctl_home / "keys").chmod(0o755)
    result = cli("doctor")
    assert result.exit_code == 3 and "chmod 700" in result.stdout


def test_wrong_url_is_exit_6(cli, sandbox, sandbox_profile):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = Store()
    config = store.load()
    config.profiles["default"].url = f"http://127.0.0.1:{port}"
    store.save(config)
    result = cli("doctor", "--json")
    assert result.exit_code == 6
    assert not checks(result)["reach"]["ok"]
    assert "signed request" not in checks(result)  # skipped: it could not mean anything


def test_plain_http_to_remote_host_is_flagged(cli, sandbox_profile):
    store = Store()
    config = store.load()
    config.profiles["default"].url = "http://cws.example.org"
    store.save(config)
    result = cli("doctor", "--json")
    assert result.exit_code == 3 and not checks(result)["https"]["ok"]


def test_skewed_clock_is_flagged(cli, sandbox, sandbox_profile):
    sandbox.faults = Faults(clock_skew_s=3600)
    result = cli("doctor", "--json")
    assert result.exit_code == 6
    clock = checks(result)["clock"]
    assert not clock["ok"]
    skew = int(clock["detail"].split("server clock ")[1].split(" s")[0])
    assert abs(skew - 3600) <= 2  # the Date header has one-second resolution


def test_missing_profile_and_key(cli, cwsctl_home):
    result = cli("doctor")
    assert result.exit_code == 3 and "cwsctl profile init" in result.stdout
    cli("profile", "init", "default", "--url", "https://cws.example.org", "--username", "u")
    result = cli("doctor")
    assert result.exit_code == 3 and "cwsctl keygen" in result.stdout


def test_encrypted_key_is_unlocked_once_for_every_check(
    sandbox, sandbox_profile, sandbox_user, cwsctl_home
):
    from cwsctl.core.checks import worst_exit_status
    from cwsctl.core.doctor import run_checks
    from cwsctl.registry import kind_of

    store = Store(cwsctl_home)
    keys.save_private_key(
        store.private_key_path("default"), sandbox_user.private_key, b"s3cret", overwrite=True
    )
    asked: list[int] = []

    def passphrase() -> bytes:
        asked.append(1)
        return b"s3cret"

    results = list(run_checks(store, None, passphrase, kind_of=kind_of))
    assert worst_exit_status(results) == 0, [c for c in results if not c.ok]
    assert [c.name for c in results][-1] == "signed request"
    assert len(asked) == 1
