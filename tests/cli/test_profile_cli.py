"""profile init/list/show/use/trust and the global --profile option."""

from __future__ import annotations

import json
import stat

from cwsctl.core.profile import Store
from tests.conftest import write_public


def init(cli, name="prod", *extra):
    return cli(
        "profile",
        "init",
        name,
        "--url",
        f"https://{name}.example.org/",
        "--username",
        f"{name}-user",
        *extra,
    )


def test_init_list_show_use(cli, cwsctl_home):
    assert init(cli, "prod").exit_code == 0
    assert init(cli, "test").exit_code == 0
    config = cwsctl_home / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    listed = json.loads(cli("profile", "list", "--json").stdout)
    assert listed["default"] == "prod"  # the first profile becomes the default
    assert [p["name"] for p in listed["profiles"]] == ["prod", "test"]
    assert listed["profiles"][0]["url"] == "https://prod.example.org"  # trailing slash dropped

    assert cli("profile", "use", "test").exit_code == 0
    shown = json.loads(cli("profile", "show", "--json").stdout)
    assert shown["name"] == "test" and shown["username"] == "test-user" and shown["default"]
    assert (
        json.loads(cli("--profile", "prod", "profile", "show", "--json").stdout)["name"] == "prod"
    )
    assert json.loads(cli("profile", "show", "prod", "--json").stdout)["name"] == "prod"


def test_init_default_flag_and_algorithm(cli):
    init(cli, "a")
    init(cli, "b", "--default", "--algorithm", "sha1")
    shown = json.loads(cli("profile", "show", "--json").stdout)
    assert shown["name"] == "b" and shown["algorithm"] == "sha1"


def test_env_profile_selects_profile(cli, monkeypatch):
    init(cli, "a")
    init(cli, "b")
    monkeypatch.setenv("CWSCTL_PROFILE", "b")
    assert json.loads(cli("profile", "show", "--json").stdout)["name"] == "b"


def test_unknown_profile_is_exit_3_with_hint(cli):
    result = cli("profile", "use", "nope")
    assert result.exit_code == 3
    assert "cwsctl profile init nope" in result.stderr
    assert cli("-p", "nope", "profile", "show").exit_code == 3


def test_invalid_profile_name_and_url(cli):
    assert cli("profile", "init", "../evil", "--url", "https://x", "--username", "u").exit_code == 3
    assert cli("profile", "init", "ok", "--url", "ftp://x", "--username", "u").exit_code == 2


def test_trust_pins_several_keys_and_removes(cli, tmp_path, rsa2048, rsa2048_other):
    init(cli, "prod")
    first = write_public(tmp_path / "coremr1.pem", rsa2048)
    second = write_public(tmp_path / "coremr2.pem", rsa2048_other)
    assert cli("profile", "trust", str(first)).exit_code == 0
    result = cli("profile", "trust", str(second), "--json")
    assert [t["username"] for t in json.loads(result.stdout)["trusted"]] == ["coremr", "coremr"]
    again = cli("profile", "trust", str(second))
    assert "Already pinned" in again.stderr
    assert len(Store().load().profiles["prod"].settings.trusted) == 2
    assert cli("profile", "trust", str(first), "--remove").exit_code == 0
    trusted = Store().load().profiles["prod"].settings.trusted
    assert len(trusted) == 1 and trusted[0].public_key_pem == second.read_text()
    assert cli("profile", "trust", str(first), "--remove").exit_code == 3


def test_trust_rejects_garbage_key_file(cli, tmp_path):
    init(cli, "prod")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    result = cli("profile", "trust", str(bad))
    assert result.exit_code == 3
    assert "Traceback" not in result.stderr
    assert cli("profile", "trust", str(tmp_path / "missing.pem")).exit_code == 2


def test_corrupt_config_is_a_clear_exit_3(cli, cwsctl_home):
    cwsctl_home.mkdir(parents=True)
    (cwsctl_home / "config.toml").write_text("this is [not toml")
    result = cli("profile", "list")
    assert result.exit_code == 3
    assert "not valid TOML" in result.stderr


def test_config_write_is_atomic_and_leaves_no_temp_files(cli, cwsctl_home):
    for i in range(5):
        init(cli, f"p{i}")
    leftovers = [p.name for p in cwsctl_home.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert len(Store().load().profiles) == 5


def test_openemr_init_keeps_discovered_endpoints(cli, cwsctl_home, openemr_sandbox):
    result = cli(
        "profile", "init", "emr", "--kind", "openemr", "--url", openemr_sandbox.url, "--json"
    )
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["token_endpoint"] == openemr_sandbox.token_url
    assert document["fhir_base"] == openemr_sandbox.fhir_url
    assert document["discovery"]["discovered"] is True
    assert document["discovery"]["site_address_differs"] is False
    config = (cwsctl_home / "config.toml").read_text()
    assert f'token_endpoint = "{openemr_sandbox.token_url}"' in config
    shown = cli("profile", "show", "emr")
    assert f"token_endpoint: {openemr_sandbox.token_url}" in shown.stdout
    # a cws profile reads no discovery documents and keeps its old shape
    assert init(cli, "cwsprod").exit_code == 0
    assert "token_endpoint" not in json.loads(cli("profile", "show", "cwsprod", "--json").stdout)
