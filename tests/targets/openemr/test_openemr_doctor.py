"""`cwsctl doctor` on an openemr profile: the endpoints, discovery and the sign-in it needs."""

from __future__ import annotations

from cwsctl.core.profile import Store
from tests.cli.test_doctor import checks
from tests.targets.openemr.conftest import complete_oauth_login

# -- openemr -----------------------------------------------------------------------------------


def test_openemr_doctor_endpoints_and_the_sign_in_it_needs(cli, make_openemr_login, cwsctl_home):
    login = make_openemr_login(login=False)
    result = cli("-p", login.name, "doctor", "--json")
    assert result.exit_code == 3
    found = checks(result)
    assert found["endpoints"]["ok"] and "(discovered)" in found["endpoints"]["detail"]
    assert login.server.token_url in found["endpoints"]["detail"]
    assert "the same as the profile URL" in found["site address"]["detail"]
    assert found["discovery"]["ok"]
    assert not found["token and API"]["ok"]  # no sign-in, no system/ scope: nothing to try
    assert found["token and API"]["fix"] == (
        f"sign in as an OpenEMR user once: cwsctl -p {login.name} oauth login"
    )
    complete_oauth_login(cwsctl_home, login.name)
    healthy = cli("-p", login.name, "doctor")
    assert healthy.exit_code == 0, healthy.stdout + healthy.stderr


def test_openemr_doctor_flags_a_token_endpoint_that_moved(cli, make_openemr_login, cwsctl_home):
    login = make_openemr_login()
    store = Store(cwsctl_home)
    config = store.load()
    config.profiles[
        login.name
    ].settings.token_endpoint = "https://old-name.example.test/oauth2/default/token"
    store.save(config)
    result = cli("-p", login.name, "doctor", "--json")
    found = checks(result)
    assert not found["discovery"]["ok"]
    assert found["discovery"]["fix"] == f"cwsctl -p {login.name} oauth discover"
    assert "differs from the profile URL" in found["site address"]["detail"]
    assert cli("-p", login.name, "oauth", "discover").exit_code == 0
    assert cli("-p", login.name, "doctor").exit_code == 0
