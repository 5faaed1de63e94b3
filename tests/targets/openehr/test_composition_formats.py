"""`composition create|update|get --format canonical|flat|structured [--template-id ID]`.

The exact requests are checked on a capture server (tests/capture_server.py) answering as
EHRbase 2.x does: FLAT and STRUCTURED go as ``?format=…&templateId=…`` with EHRbase's media
types, the template id taken from the composition when it names one, else from --template-id
(required then: exit 2 before anything is sent). The end-to-end part runs against the openEHR
sandbox with the shipped template uploaded first.
"""

from __future__ import annotations

import json

import pytest

from cwsctl.core.errors import InputError
from cwsctl.targets.openehr.formats import read_request, template_id_in, write_request
from tests.capture_server import Captured, CaptureServer, capture_server  # noqa: F401

EHR = "7d44b88c-4199-4bad-97dc-d78268e01398"
OBJ = "8849182c-82ad-4088-a07f-48ead4180515"
SYSTEM = "local.ehrbase.org"
TEMPLATE = "cwsctl.vital_signs.v1"
FLAT_MEDIA = "application/openehr.wt.flat.schema+json"
STRUCTURED_MEDIA = "application/openehr.wt.structured.schema+json"

FLAT = (
    b'{"vital_signs/language|code": "en",  "vital_signs/territory|code": "DE",\n'
    b' "vital_signs/blood_pressure:0/any_event:0/systolic|magnitude": 120,\n'
    b' "vital_signs/blood_pressure:0/any_event:0/systolic|unit": "mm[Hg]"}\n'
)
FLAT_WITH_CTX = (
    b'{"ctx/template_id": "cwsctl.vital_signs.v1", "ctx/language": "en",'
    b' "vital_signs/blood_pressure:0/any_event:0/systolic|magnitude": 120}'
)
STRUCTURED = (
    b'{"ctx": {"language": "en", "territory": "DE"},'
    b' "vital_signs": {"blood_pressure": [{"any_event": [{"systolic": [{"|magnitude": 120}]}]}]}}'
)
CANONICAL = (
    b'{"_type": "COMPOSITION", "name": {"value": "Vital signs"},'
    b' "archetype_node_id": "openEHR-EHR-COMPOSITION.encounter.v1",'
    b' "archetype_details": {"template_id": {"value": "cwsctl.vital_signs.v1"}}}'
)
CANONICAL_XML = (
    b'<?xml version="1.0"?><composition xmlns="http://schemas.openehr.org/v1" '
    b'archetype_node_id="openEHR-EHR-COMPOSITION.encounter.v1"><name><value>V</value></name>'
    b"<archetype_details><template_id><value>xml.template.v1</value></template_id>"
    b"</archetype_details></composition>"
)


def ehrbase_like(request: Captured) -> tuple[int, dict[str, str], bytes]:
    """Answers as EHRbase 2.x: 204 + ETag/Location for a minimal write, a body for a read."""
    if request.method == "POST":
        uid = f"{OBJ}::{SYSTEM}::1"
        location = f"http://x/ehr/{EHR}/composition/{OBJ}"
        return 204, {"ETag": f'"{uid}"', "Location": location}, b""
    if request.method == "PUT":
        uid = f"{OBJ}::{SYSTEM}::2"
        return 200, {"ETag": f'"{uid}"', "Content-Type": FLAT_MEDIA}, FLAT
    if request.method == "GET":
        kind = request.query.get("format", ["JSON"])[0]
        media = {"FLAT": FLAT_MEDIA, "STRUCTURED": STRUCTURED_MEDIA}.get(kind, "application/json")
        body = {"FLAT": FLAT, "STRUCTURED": STRUCTURED}.get(kind, CANONICAL)
        return 200, {"ETag": f'"{OBJ}::{SYSTEM}::1"', "Content-Type": media}, body
    return 405, {}, b""


@pytest.fixture
def server(capture_server, cli):  # noqa: F811
    capture_server.answer = ehrbase_like
    result = cli(
        "profile", "init", "cdr", "--kind", "openehr", "--url", capture_server.url, "--default"
    )
    assert result.exit_code == 0, result.stderr
    return capture_server


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cwsctl: error:")]


# -- the requests, exactly -----------------------------------------------------------------------


def test_flat_create_sends_format_template_id_and_ehrbase_media_types(server, cli, tmp_path):
    source = write(tmp_path, "v.flat.json", FLAT)
    result = cli(
        "composition", "create", EHR, source, "--format", "flat", "--template-id", TEMPLATE
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"{OBJ}::{SYSTEM}::1"
    [sent] = server.requests
    assert (sent.method, sent.path) == ("POST", f"/ehr/{EHR}/composition")
    assert sent.query == {"format": ["FLAT"], "templateId": [TEMPLATE]}
    assert sent.headers["content-type"] == FLAT_MEDIA
    assert sent.headers["accept"] == FLAT_MEDIA
    assert sent.headers["openehr-template_id"] == TEMPLATE  # alongside, for spec servers
    assert sent.headers["prefer"] == "return=representation"
    assert sent.body == FLAT  # byte for byte


def test_flat_takes_the_template_id_from_ctx(server, cli, tmp_path):
    source = write(tmp_path, "v.flat.json", FLAT_WITH_CTX)
    result = cli("composition", "create", EHR, source, "--format", "flat")
    assert result.exit_code == 0, result.stderr
    assert server.requests[0].query["templateId"] == [TEMPLATE]


def test_flat_without_a_template_id_is_refused_before_sending(server, cli, tmp_path):
    source = write(tmp_path, "v.flat.json", FLAT)
    result = cli("composition", "create", EHR, source, "--format", "flat")
    assert result.exit_code == 2
    assert errors(result.stderr) == [
        "cwsctl: error: a FLAT composition does not name its template: pass --template-id ID"
    ]
    assert "cwsctl template list" in result.stderr
    assert server.requests == []


def test_structured_create_and_update(server, cli, tmp_path):
    source = write(tmp_path, "v.structured.json", STRUCTURED)
    result = cli(
        "composition", "create", EHR, source, "--format", "structured", "--template-id", TEMPLATE
    )
    assert result.exit_code == 0, result.stderr
    sent = server.requests[-1]
    assert sent.query == {"format": ["STRUCTURED"], "templateId": [TEMPLATE]}
    assert sent.headers["content-type"] == STRUCTURED_MEDIA
    base = f"{OBJ}::{SYSTEM}::1"
    result = cli(
        "composition", "update", EHR, OBJ, source, "--format", "structured",
        "--template-id", TEMPLATE, "--if-match", base,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    put = server.requests[-1]
    assert (put.method, put.path) == ("PUT", f"/ehr/{EHR}/composition/{OBJ}")
    assert put.query == {"format": ["STRUCTURED"], "templateId": [TEMPLATE]}
    assert put.headers["content-type"] == STRUCTURED_MEDIA
    assert put.headers["if-match"].strip('"') == base
    assert put.body == STRUCTURED


def test_flat_update_reads_the_latest_canonically_then_writes_flat(server, cli, tmp_path):
    source = write(tmp_path, "v.flat.json", FLAT)
    result = cli(
        "composition", "update", EHR, OBJ, source, "--format", "flat", "--template-id", TEMPLATE
    )
    assert result.exit_code == 0, result.stderr
    read, put = server.requests
    assert (read.method, read.query) == ("GET", {})  # the ETag of the latest version
    assert put.query == {"format": ["FLAT"], "templateId": [TEMPLATE]}
    assert put.headers["if-match"].strip('"') == f"{OBJ}::{SYSTEM}::1"
    assert result.stdout.strip() == f"{OBJ}::{SYSTEM}::2"


def test_canonical_sends_no_format_and_names_the_bodys_template(server, cli, tmp_path):
    source = write(tmp_path, "v.json", CANONICAL)
    result = cli("composition", "create", EHR, source)
    assert result.exit_code == 0, result.stderr
    [sent] = server.requests
    assert sent.query == {}
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["openehr-template_id"] == TEMPLATE
    assert sent.body == CANONICAL


def test_canonical_xml_is_sent_as_xml_with_its_template_id(server, cli, tmp_path):
    source = write(tmp_path, "v.xml", CANONICAL_XML)
    result = cli("composition", "create", EHR, source)
    assert result.exit_code == 0, result.stderr
    [sent] = server.requests
    assert sent.headers["content-type"] == "application/xml"
    assert sent.headers["openehr-template_id"] == "xml.template.v1"


def test_a_template_id_contradicting_the_composition_is_refused(server, cli, tmp_path):
    source = write(tmp_path, "v.json", CANONICAL)
    result = cli("composition", "create", EHR, source, "--template-id", "other.v1")
    assert result.exit_code == 2
    assert "names template 'cwsctl.vital_signs.v1', but --template-id is 'other.v1'" in (
        result.stderr
    )
    assert server.requests == []


@pytest.mark.parametrize(
    ("body", "fmt", "hint"),
    [
        (FLAT, "canonical", "--format flat"),
        (CANONICAL, "flat", "--format canonical"),
        (STRUCTURED, "flat", "--format structured"),
    ],
)
def test_a_file_plainly_in_another_format_is_refused(server, cli, tmp_path, body, fmt, hint):
    source = write(tmp_path, "v.json", body)
    result = cli("composition", "create", EHR, source, "--format", fmt, "--template-id", TEMPLATE)
    assert result.exit_code == 2
    assert hint in result.stderr
    assert server.requests == []


def test_xml_cannot_be_flat(server, cli, tmp_path):
    source = write(tmp_path, "v.xml", CANONICAL_XML)
    result = cli("composition", "create", EHR, source, "--format", "flat", "--template-id", "x")
    assert result.exit_code == 2
    assert "is JSON, and this file is XML" in result.stderr
    assert server.requests == []


@pytest.mark.parametrize(("fmt", "media"), [("flat", FLAT_MEDIA), ("structured", STRUCTURED_MEDIA)])
def test_get_asks_for_the_format(server, cli, fmt, media):
    result = cli("composition", "get", EHR, OBJ, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    [sent] = server.requests
    assert sent.query == {"format": [fmt.upper()]}
    assert sent.headers["accept"] == media
    assert result.stdout_bytes == (FLAT if fmt == "flat" else STRUCTURED)


def test_get_in_a_format_at_a_time_sends_both_parameters(server, cli):
    at = "2024-05-01T10:00:00Z"
    result = cli("composition", "get", EHR, OBJ, "--format", "flat", "--at", at)
    assert result.exit_code == 0, result.stderr
    [sent] = server.requests
    assert sent.query == {"version_at_time": [at], "format": ["FLAT"]}


def test_get_canonical_adds_nothing(server, cli):
    result = cli("composition", "get", EHR, OBJ)
    assert result.exit_code == 0, result.stderr
    [sent] = server.requests
    assert sent.query == {}
    assert sent.headers["accept"] == "application/json"


def test_a_missing_template_gets_the_upload_hint(server, cli, tmp_path):
    def refuse(request: Captured) -> tuple[int, dict[str, str], bytes]:
        message = f"Template with template_id '{TEMPLATE}' does not exist"
        body = json.dumps({"error": "Unprocessable Entity", "message": message}).encode()
        return 422, {"Content-Type": "application/json"}, body

    server.answer = refuse
    source = write(tmp_path, "v.flat.json", FLAT_WITH_CTX)
    result = cli("composition", "create", EHR, source, "--format", "flat")
    assert result.exit_code == 4
    assert "does not exist" in result.stderr
    assert f"upload the template '{TEMPLATE}' first: cwsctl template upload" in result.stderr


# -- the helpers ---------------------------------------------------------------------------------


def test_template_ids_found_in_each_format():
    assert template_id_in(CANONICAL, "canonical") == TEMPLATE
    assert template_id_in(CANONICAL_XML, "canonical") == "xml.template.v1"
    assert template_id_in(FLAT_WITH_CTX, "flat") == TEMPLATE
    assert template_id_in(FLAT, "flat") is None  # the tree id "vital_signs" is not a template id
    with_ctx = json.loads(STRUCTURED)
    with_ctx["ctx"]["template_id"] = "s.v1"
    assert template_id_in(json.dumps(with_ctx).encode(), "structured") == "s.v1"
    assert template_id_in(STRUCTURED, "structured") is None


def test_write_and_read_requests():
    sent = write_request(FLAT, "flat", TEMPLATE)
    assert sent.path("/ehr/e/composition") == (
        f"/ehr/e/composition?format=FLAT&templateId={TEMPLATE}"
    )
    assert read_request("structured").path("/c?version_at_time=x") == (
        "/c?version_at_time=x&format=STRUCTURED"
    )
    assert read_request("canonical").path("/c") == "/c"
    with pytest.raises(InputError):
        write_request(FLAT, "flat", " ")
    with pytest.raises(InputError):
        write_request(b"[1, 2]", "flat", TEMPLATE)


# -- end to end, against the openEHR sandbox -----------------------------------------------------


@pytest.fixture
def cdr(make_openehr_sandbox, cli, tmp_path):
    """A sandbox with an EHR; the shipped template is uploaded by each test that needs it."""
    pytest.importorskip("starlette")
    sandbox = make_openehr_sandbox()
    result = cli(
        "profile", "init", "cdr", "--kind", "openehr", "--url", sandbox.base_url, "--default"
    )
    assert result.exit_code == 0, result.stderr
    ehr = cli("ehr", "create", "--subject-id", "F-1", "--namespace", "urn:cwsctl:test")
    assert ehr.exit_code == 0, ehr.stderr
    sandbox.ehr_id = ehr.stdout.strip()
    return sandbox


def upload_template(cli, tmp_path):
    from cwsctl.targets.openehr.data import vital_signs_opt

    opt = tmp_path / "vital_signs.opt"
    opt.write_bytes(vital_signs_opt())
    result = cli("template", "upload", str(opt))
    assert result.exit_code == 0, result.stderr


def test_sandbox_refuses_a_composition_before_its_template(cdr, cli, tmp_path):
    document = json.loads(CANONICAL)
    document.update(
        {
            "language": {"terminology_id": {"value": "ISO_639-1"}, "code_string": "en"},
            "territory": {"terminology_id": {"value": "ISO_3166-1"}, "code_string": "DE"},
            "category": {
                "value": "event",
                "defining_code": {"terminology_id": {"value": "openehr"}, "code_string": "433"},
            },
            "composer": {"_type": "PARTY_SELF"},
        }
    )
    source = write(tmp_path, "v.json", json.dumps(document).encode())
    result = cli("composition", "create", cdr.ehr_id, source)
    assert result.exit_code == 4
    assert f"upload the template '{TEMPLATE}' first: cwsctl template upload" in result.stderr


def test_sandbox_flat_round_trip(cdr, cli, tmp_path):
    upload_template(cli, tmp_path)
    example = cli("template", "example", TEMPLATE, "--format", "flat")
    assert example.exit_code == 0, example.stderr
    source = write(tmp_path, "v.flat.json", example.stdout.encode())
    created = cli(
        "composition", "create", cdr.ehr_id, source, "--format", "flat", "--template-id", TEMPLATE
    )
    assert created.exit_code == 0, created.stderr
    uid = created.stdout.strip()
    assert uid.endswith("::1")
    flat = cli("composition", "get", cdr.ehr_id, uid, "--format", "flat")
    assert flat.exit_code == 0, flat.stderr
    sent, back = json.loads(example.stdout), json.loads(flat.stdout)
    numbers = {k: v for k, v in sent.items() if k.endswith("|magnitude")}
    assert numbers and all(back.get(k) == v for k, v in numbers.items())
    canonical = cli("composition", "get", cdr.ehr_id, uid)
    document = json.loads(canonical.stdout)
    assert document["archetype_details"]["template_id"]["value"] == TEMPLATE
    updated = cli(
        "composition", "update", cdr.ehr_id, uid.split("::")[0], source,
        "--format", "flat", "--template-id", TEMPLATE,
    )  # fmt: skip
    assert updated.exit_code == 0, updated.stderr
    assert updated.stdout.strip().endswith("::2")


def test_sandbox_structured_create(cdr, cli, tmp_path):
    upload_template(cli, tmp_path)
    example = cli("template", "example", TEMPLATE, "--format", "structured")
    assert example.exit_code == 0, example.stderr
    source = write(tmp_path, "v.structured.json", example.stdout.encode())
    created = cli(
        "composition", "create", cdr.ehr_id, source, "--format", "structured",
        "--template-id", TEMPLATE,
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    got = cli("composition", "get", cdr.ehr_id, created.stdout.strip(), "--format", "structured")
    assert got.exit_code == 0, got.stderr
    assert "ctx" in json.loads(got.stdout) or TEMPLATE.split(".")[0] in got.stdout


def test_an_operation_outcome_with_odd_details_is_one_line_not_a_crash(server, cli):
    """A server's OperationOutcome whose issue ``details`` is not an object (a hostile or
    broken server) still gives the one-line error, not an internal error."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"details": "x", "code": "invalid"}]}
    server.answer = lambda request: (
        400,
        {"Content-Type": "application/json"},
        json.dumps(outcome).encode(),
    )
    result = cli("request", "GET", "/ehr")
    assert result.exit_code == 4, result.stderr
    assert "invalid" in result.stderr and "internal error" not in result.stderr
