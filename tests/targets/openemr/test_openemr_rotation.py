"""Key rotation on an openemr profile: a new key means a new client (keys rotate --reregister)."""

from __future__ import annotations

import json

import pytest

from cwsctl.core import keys

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
@pytest.mark.slow
def test_openemr_rotate_reregister_makes_a_new_client(
    cli, run_cwsctl, make_openemr_login, cwsctl_home, version
):
    from cwsctl.core.profile import Store
    from cwsctl.protocols.oauth2.jwks import key_id
    from tests.targets.openemr.conftest import complete_oauth_login

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
