"""Key rotation: keygen --next, keys rotate (checked with a signed request), keys remove."""

from __future__ import annotations

import json

import pytest

from cwsctl.core import keys


def test_rotation_refused_until_registered_then_old_key_kept(
    cli, sandbox, sandbox_profile, cwsctl_home
):
    active = cwsctl_home / "keys" / "default.pem"
    old_fingerprint = keys.fingerprint(keys.load_private_key(active).public_key())
    made = cli("keygen", "--next", "--bits", "2048")
    assert made.exit_code == 0 and "keys rotate" in made.stderr
    next_public = keys.parse_public_key(made.stdout_bytes)

    refused = cli("keys", "rotate")
    assert refused.exit_code == 4 and "register it in CorEMR" in refused.stderr
    assert keys.fingerprint(keys.load_private_key(active).public_key()) == old_fingerprint

    sandbox.register_key("tester", next_public, replace=True)
    rotated = cli("keys", "rotate", "--json")
    assert rotated.exit_code == 0, rotated.stderr
    assert keys.fingerprint(keys.load_private_key(active).public_key()) == keys.fingerprint(
        next_public
    )
    listing = json.loads(cli("keys", "list", "--json").stdout)["keys"]
    assert [k["role"] for k in listing] == ["active", "retired"]
    assert listing[1]["fingerprint"] == old_fingerprint
    assert cli("request", "GET", "/ws/").exit_code == 0  # the new key works

    assert cli("keys", "remove", "active").exit_code == 2
    assert cli("keys", "remove", listing[1]["label"]).exit_code == 0
    assert [k["role"] for k in json.loads(cli("keys", "list", "--json").stdout)["keys"]] == [
        "active"
    ]


def test_rotate_without_next_key_is_exit_3(cli, sandbox_profile):
    result = cli("keys", "rotate")
    assert result.exit_code == 3 and "keygen --next" in result.stderr


def test_rotate_when_server_unreachable_warns_and_rotates(cli, sandbox_profile, cwsctl_home):
    from cwsctl.core.profile import Store

    store = Store()
    config = store.load()
    config.profiles["default"].url = "http://127.0.0.1:9"  # discard port: nothing listens
    store.save(config)
    assert cli("keygen", "--next", "--bits", "2048").exit_code == 0
    result = cli("keys", "rotate")
    assert result.exit_code == 0
    assert "could not reach" in result.stderr


def test_two_pinned_server_keys_accepted_during_corem_rotation(
    cli, sandbox, sandbox_profile, tmp_path, rsa2048_other
):
    pem = tmp_path / "coremr-next.pem"
    pem.write_bytes(keys.public_key_pem(rsa2048_other.public_key()))
    assert cli("profile", "trust", str(pem)).exit_code == 0
    assert cli("request", "GET", "/ws/").exit_code == 0  # signed with the first pinned key


# -- openemr: a new key means a new client ------------------------------------------------------


def test_openemr_rotate_refuses_without_reregister(cli, make_openemr_login, cwsctl_home):
    login = make_openemr_login(login=False)
    active = cwsctl_home / "keys" / f"{login.name}.pem"
    before = active.read_bytes()
    assert cli("-p", login.name, "keygen", "--next", "--bits", "2048").exit_code == 0
    refused = cli("-p", login.name, "keys", "rotate")
    assert refused.exit_code == 3
    lines = [x for x in refused.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "cwsctl oauth register" in lines[0]
    assert active.read_bytes() == before  # nothing moved
    assert (cwsctl_home / "keys" / f"{login.name}.next.pem").exists()


@pytest.mark.parametrize("version", ["7.0.3", "7.0.4"])
def test_openemr_rotate_reregister_makes_a_new_client(
    cli, run_cwsctl, make_openemr_login, cwsctl_home, version
):
    from cwsctl.core.jwks import key_id
    from cwsctl.core.profile import Store
    from tests.sandbox_plugin import complete_oauth_login

    login = make_openemr_login(version=version)
    server = login.server
    made = cli("-p", login.name, "keygen", "--next", "--bits", "2048")
    next_public = keys.parse_public_key(made.stdout_bytes)
    rotated = cli("-p", login.name, "keys", "rotate", "--reregister")
    assert rotated.exit_code == 0, rotated.stderr
    new_client = rotated.stdout.strip()
    assert new_client and new_client != login.client_id
    assert "Administration → System → API Clients" in rotated.stderr
    assert f"cwsctl -p {login.name} oauth login" in rotated.stderr
    store = Store(cwsctl_home)
    assert store.get_profile(login.name).settings.client_id == new_client
    active = keys.load_private_key(store.private_key_path(login.name)).public_key()
    assert keys.fingerprint(active) == keys.fingerprint(next_public)
    registered = server.client(new_client)
    assert registered is not None
    assert [c["enabled"] for c in server.clients() if c["client_id"] == new_client] == [False]
    # the old sign-in belonged to the old client: nothing silently uses it
    stale = run_cwsctl("-p", login.name, "request", "GET", "/apis/default/fhir/Patient")
    assert stale.returncode == 3 and b"oauth login" in stale.stderr
    server.enable_client(new_client)
    complete_oauth_login(cwsctl_home, login.name)
    fresh = run_cwsctl("-p", login.name, "request", "GET", "/apis/default/fhir/Patient")
    assert fresh.returncode == 0, fresh.stderr
    jwks = json.loads(cli("-p", login.name, "keys", "jwks").stdout)
    assert jwks["keys"][0]["kid"] == key_id(next_public)


def test_openemr_rotate_reregister_failure_changes_nothing(cli, make_openemr_login, cwsctl_home):
    from cwsctl.core.profile import Store

    login = make_openemr_login(login=False)
    store = Store(cwsctl_home)
    before = store.private_key_path(login.name).read_bytes()
    assert cli("-p", login.name, "keygen", "--next", "--bits", "2048").exit_code == 0
    login.server.stop()  # OpenEMR is unreachable
    failed = cli("-p", login.name, "keys", "rotate", "--reregister", "--timeout", "3")
    assert failed.exit_code == 6
    assert store.private_key_path(login.name).read_bytes() == before
    assert store.get_profile(login.name).settings.client_id == login.client_id
