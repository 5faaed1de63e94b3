"""Profile kinds: old config files still work, kinds round-trip, each kind's patient mapping."""

from __future__ import annotations

import json

import pytest

from cwsctl.core import keys
from cwsctl.core.bulk.rows import WALKTHROUGH_EXAMPLE, PatientValidationError, prepare_patient
from cwsctl.core.client import ApiResponse
from cwsctl.core.profile import Profile, Store
from cwsctl.registry import kind_of
from cwsctl.targets.openemr.kind import (
    EXTERNAL_ID_SYSTEM,
    IDENTIFIER_TYPES,
    OpenEmrPatients,
    fhir_patient,
)
from cwsctl.targets.openemr.settings import OpenEmrSettings

# config.toml exactly as cwsctl wrote it before profiles had a kind (tomli_w's layout).
CONFIG_BEFORE_KINDS = """\
default_profile = "site"

[profiles.site]
url = "{url}"
username = "tester"
algorithm = "sha256"

[[profiles.site.trusted]]
username = "coremr"
public_key = \"\"\"
{pem}\"\"\"
"""


def test_a_config_written_before_kinds_still_works(sandbox, sandbox_user, cwsctl_home, cli):
    pem = sandbox.trusted_key.public_key_pem
    text = CONFIG_BEFORE_KINDS.format(url=sandbox.url, pem=pem.rstrip("\n") + "\n")
    cwsctl_home.mkdir(mode=0o700)
    (cwsctl_home / "config.toml").write_text(text)
    (cwsctl_home / "config.toml").chmod(0o600)
    keys.save_private_key(
        Store(cwsctl_home).private_key_path("site"), sandbox_user.private_key, None, overwrite=True
    )

    store = Store(cwsctl_home)
    profile = store.get_profile("site")
    assert profile.kind == "cws" and kind_of(profile).name == "cws"
    result = cli("request", "GET", "/ws/")
    assert result.exit_code == 0, result.stderr
    assert "verified by coremr" in result.stderr
    # Saving it again keeps the shape an older cwsctl can read: no new keys for a CWS profile.
    store.save(store.load())
    assert "kind" not in (cwsctl_home / "config.toml").read_text()


def test_an_openemr_profile_round_trips(cwsctl_home):
    store = Store(cwsctl_home)
    config = store.load()
    config.profiles["emr"] = Profile(
        "emr",
        url="https://emr.example.org",
        kind="openemr",
        settings=OpenEmrSettings(site="alt", client_id="abc", scope="system/Patient.read"),
    )
    store.save(config)
    again = store.get_profile("emr")
    assert (again.kind, again.settings.site, again.settings.client_id, again.settings.scope) == (
        "openemr",
        "alt",
        "abc",
        "system/Patient.read",
    )
    assert kind_of(again).name == "openemr"


def test_an_unknown_kind_is_a_profile_error(cwsctl_home, cli):
    cwsctl_home.mkdir(mode=0o700)
    (cwsctl_home / "config.toml").write_text('[profiles.x]\nkind = "hl7v2"\nurl = "https://h"\n')
    result = cli("-p", "x", "request", "GET", "/")
    assert result.exit_code == 3
    assert "unknown kind 'hl7v2'" in result.stderr


def test_fhir_patient_holds_what_fhir_has_a_place_for():
    record = prepare_patient(WALKTHROUGH_EXAMPLE)
    patient = fhir_patient(record)
    assert patient == {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": IDENTIFIER_TYPES, "code": "PT"}]},
                "system": EXTERNAL_ID_SYSTEM.format(facility="10000"),
                "value": "10000:FakeExternalID",  # the pubpid: unique per facility
            }
        ],
        "name": [{"use": "official", "family": "Name", "given": ["First"]}],
        "gender": "male",
        "birthDate": "2000-04-12",
    }
    request = OpenEmrPatients("default").create_request(record)
    assert request.method == "POST" and request.path == "/apis/default/fhir/Patient"
    assert json.loads(request.body) == patient
    assert "If-None-Exist" not in request.headers  # OpenEMR ignores it
    assert OpenEmrPatients.lookup_first  # so every patient is looked up first
    assert OpenEmrPatients("default").lookup_path("FakeExternalID", "10000") == (
        "/apis/default/fhir/Patient?identifier="
        "urn%3Acwsctl%3Aexternal-id%3Afacility%3A10000%7C10000%3AFakeExternalID"
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lname": "L"}, "lname"),
        ({"lname": " L "}, "lname"),
        ({"external_id": "A,B"}, "external_id"),
        ({"external_id": "A|B"}, "external_id"),
        ({"facility": "F|1"}, "facility"),
    ],
)
def test_openemr_refuses_before_sending_what_it_would_refuse_or_never_find(change, field):
    record = prepare_patient({**WALKTHROUGH_EXAMPLE, **change})  # valid for CWS
    with pytest.raises(PatientValidationError) as caught:
        OpenEmrPatients("default").check(record)
    assert caught.value.field == field and caught.value.exit_status == 2
    OpenEmrPatients("default").check(prepare_patient({**WALKTHROUGH_EXAMPLE, "lname": "Li"}))


def _bundle(*resources: dict[str, object]) -> dict[str, object]:
    return {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}


def _pt(value: str, code: str = "PT") -> dict[str, object]:
    return {"type": {"coding": [{"system": IDENTIFIER_TYPES, "code": code}]}, "value": value}


def test_openemr_lookup_accepts_only_this_facility_pubpid():
    mapping = OpenEmrPatients("default")
    other_facility = {"id": "u1", "identifier": [_pt("20000:X1")]}
    ss_match = {"id": "u2", "identifier": [_pt("10000:X1", code="SS"), _pt("7")]}
    case_only = {"id": "u3", "identifier": [_pt("10000:x1")]}
    this_one = {"id": "u4", "identifier": [_pt("10000:X1")]}
    found = _answer(200, _bundle(other_facility, ss_match, case_only))
    assert mapping.match(found, "X1", "10000") is None
    found = _answer(200, _bundle(other_facility, ss_match, this_one))
    assert mapping.match(found, "X1", "10000") == "u4"
    assert mapping.match(_answer(200, {"resourceType": "Bundle"}), "X1", "10000") is None


_PT = {
    "type": {"coding": [{"code": "PT"}]},
    "value": "10000:X1",
}


@pytest.mark.parametrize(
    "document",
    [
        {"entry": 5},
        {"entry": "abc"},
        {"entry": [{"resource": {"id": "u1", "identifier": 7}}]},
        {"entry": [{"resource": {"id": "u1", "identifier": [{"value": "10000:X1"}]}}]},
        {"entry": [{"resource": {"id": {"no": 1}, "identifier": [_PT]}}]},
        [1, 2],
    ],
)
def test_openemr_match_survives_odd_bundles(document: object) -> None:
    """A broken or hostile search answer is 'not found', never a crash (exit 1)."""
    assert OpenEmrPatients("default").match(_answer(200, document), "X1", "10000") is None


def _answer(status: int, document: object, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(
        "POST", "https://h/", status, "", headers or {}, json.dumps(document).encode(), None, 1.0
    )


@pytest.mark.parametrize(
    ("status", "document", "headers", "verdict"),
    [
        # OpenEMR: {"pid", "uuid"}, no Location; the uuid is the FHIR id
        (201, {"pid": 7, "uuid": "9a1b-uuid"}, {}, ("created", "9a1b-uuid")),
        # a server that follows FHIR: the resource, or a Location
        (201, {"resourceType": "Patient", "id": "p1"}, {}, ("created", "p1")),
        (
            201,
            {},
            {"location": "https://h/apis/default/fhir/Patient/p2/_history/1"},
            ("created", "p2"),
        ),
        (400, {"validationErrors": {"lname": {"Length::TOO_SHORT": "x"}}}, {}, ("rejected", None)),
        (412, {"resourceType": "OperationOutcome"}, {}, ("rejected", None)),
        (503, {"error": "down"}, {}, ("failed", None)),
    ],
)
def test_openemr_verdicts(status, document, headers, verdict):
    result = OpenEmrPatients("default").verdict(_answer(status, document, headers))
    assert (result.outcome, result.patient_id) == verdict


@pytest.mark.parametrize(
    ("document", "text"),
    [
        (
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "diagnostics": "birthDate is invalid"}],
            },
            "birthDate is invalid",
        ),
        (
            {"validationErrors": {"DOB": {"Date::invalid": "not a date"}}, "internalErrors": []},
            "DOB: not a date",
        ),
        (
            {"error": "invalid_client", "error_description": "jti replayed"},
            "invalid_client: jti replayed",
        ),
        ({"error": "patient exists"}, "patient exists"),
    ],
)
def test_error_bodies_of_every_kind_become_one_line(document, text):
    assert _answer(400, document).error_message() == text
