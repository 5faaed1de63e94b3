"""Key rotation: keygen --next, keys rotate (checked with a signed request), keys remove."""

from __future__ import annotations

import json

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
