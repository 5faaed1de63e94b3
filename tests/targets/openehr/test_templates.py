"""`cwsctl template list|upload|get|example` and doctor's template line.

The XML rules first (safe parsing, comparison as XML), then the exact requests on a capture
server that answers as EHRbase 2.x does (409 to every second upload, the stored OPT served
re-serialised), then end to end against the openEHR sandbox with the shipped OPT.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from cwsctl.core.errors import ClientRequestError, InputError
from cwsctl.core.xml import MAX_XML_BYTES, MAX_XML_DEPTH, parse_xml, same_xml
from cwsctl.targets.openehr.data import VITAL_SIGNS_TEMPLATE_ID, vital_signs_opt
from cwsctl.targets.openehr.templates import read_opt
from tests.capture_server import Captured, CaptureServer, capture_server  # noqa: F401

OPT_NS = "http://schemas.openehr.org/v1"
BASE = "/definition/template/adl1.4"


def reserialised(data: bytes) -> bytes:
    """The OPT as another serialiser writes it: a prefix instead of the default namespace, a
    different declaration, no comments, no indentation, xsi:type values prefixed."""
    ET.register_namespace("v1", OPT_NS)
    root = ET.fromstring(data)  # noqa: S314 (the test's own OPT)
    for element in root.iter():
        element.text = element.text.strip() if element.text else None
        element.tail = None
        xsi = "{http://www.w3.org/2001/XMLSchema-instance}type"
        if xsi in element.attrib:
            element.set(xsi, "v1:" + element.attrib[xsi])
    body = ET.tostring(root, encoding="unicode")
    return b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>' + body.encode()


def changed(data: bytes) -> bytes:
    """The same template id with different content (another unit)."""
    assert b"mm[Hg]" in data
    return data.replace(b"mm[Hg]", b"kPa", 1)


# -- XML -----------------------------------------------------------------------------------------


def test_the_shipped_opt_names_its_template_id():
    template = read_opt(vital_signs_opt())
    assert template.template_id == VITAL_SIGNS_TEMPLATE_ID


def test_a_reserialised_opt_is_the_same_xml_and_a_changed_one_is_not():
    original = vital_signs_opt()
    again = reserialised(original)
    assert again != original
    assert same_xml(original, again)
    assert not same_xml(original, changed(original))
    assert not same_xml(original, reserialised(changed(original)))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><template>&b;</template>',
            "contains a DTD",
        ),
        (b'<!DOCTYPE template SYSTEM "http://example.org/x.dtd"><template/>', "contains a DTD"),
        (b"<template><template_id><value>x</value></template>", "not well-formed XML"),
        (b"", "not well-formed XML"),
    ],
)
def test_unsafe_or_broken_xml_is_refused(data, words):
    with pytest.raises(InputError) as caught:
        parse_xml(data, "FILE")
    assert words in caught.value.message


def test_deep_xml_compares_without_recursion_and_deeper_is_refused():
    depth = MAX_XML_DEPTH

    def nested(text: str, levels: int) -> bytes:
        return ("<a>" * levels + text + "</a>" * levels).encode()

    assert same_xml(nested("x", depth), nested("x", depth))
    assert not same_xml(nested("x", depth), nested("y", depth))
    with pytest.raises(InputError, match=f"nested more than {depth} deep"):
        parse_xml(nested("x", depth + 1), "FILE")


def test_oversized_xml_is_refused_before_parsing():
    with pytest.raises(ClientRequestError) as caught:
        parse_xml(b" " * (MAX_XML_BYTES + 1), "the answer", ClientRequestError)
    assert "larger than 32 MiB" in caught.value.message


def test_an_opt_needs_a_template_root_and_an_id():
    with pytest.raises(InputError, match="not an operational template"):
        read_opt(b"<composition/>")
    with pytest.raises(InputError, match="no template_id/value"):
        read_opt(f'<template xmlns="{OPT_NS}"><concept>x</concept></template>'.encode())


# -- exact requests, EHRbase's answers (capture server) ------------------------------------------


class FakeEhrbase:
    """Template endpoints as EHRbase 2.x answers them (OpenehrTemplateController)."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}

    def __call__(self, request: Captured) -> tuple[int, dict[str, str], bytes]:
        xml = {"Content-Type": "application/xml"}
        if request.method == "POST" and request.path == BASE:
            if request.headers.get("accept") != "application/xml":
                return 406, {}, b""
            root = ET.fromstring(request.body)  # noqa: S314 (what this test sent)
            template_id = root.find(f"{{{OPT_NS}}}template_id/{{{OPT_NS}}}value").text
            if template_id in self.stored:
                message = (
                    f"Operational template with this template ID already exists: {template_id}"
                )
                return 409, {}, json.dumps({"error": "Conflict", "message": message}).encode()
            self.stored[template_id] = reserialised(request.body)
            return (
                201,
                {"Location": f"http://x{BASE}/{template_id}", "ETag": f'"{template_id}"'},
                b"",
            )
        if request.method == "GET" and request.path == BASE:
            rows = [
                {
                    "template_id": t,
                    "concept": t,
                    "archetype_id": "openEHR-EHR-COMPOSITION.encounter.v1",
                    "created_timestamp": "2026-12-04T10:00:00.000Z",
                }
                for t in self.stored
            ]
            return 200, {"Content-Type": "application/json"}, json.dumps(rows).encode()
        match = re.fullmatch(rf"{BASE}/([^/]+)(/example)?", request.path)
        if request.method == "GET" and match and match.group(1) in self.stored:
            if match.group(2):
                return 200, {"Content-Type": "application/json"}, b'{"example": true}'
            if request.headers.get("accept") == "application/xml":
                return 200, xml, self.stored[match.group(1)]
            return 200, {"Content-Type": "application/json"}, b'{"templateId": "web"}'
        message = (
            b'{"error":"Not Found","message":"Template with template_id \'x\' does not exist"}'
        )
        return 404, {"Content-Type": "application/json"}, message


@pytest.fixture
def ehrbase(capture_server, cli):  # noqa: F811
    fake = FakeEhrbase()
    capture_server.answer = fake
    capture_server.fake = fake
    result = cli(
        "profile", "init", "cdr", "--kind", "openehr", "--url", capture_server.url, "--default"
    )
    assert result.exit_code == 0, result.stderr
    return capture_server


@pytest.fixture
def opt_file(tmp_path):
    path = tmp_path / "vital_signs.opt"
    path.write_bytes(vital_signs_opt())
    return path


def test_upload_sends_the_opt_as_xml_both_ways(ehrbase, cli, opt_file):
    result = cli("template", "upload", str(opt_file))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{VITAL_SIGNS_TEMPLATE_ID}\n"
    assert f"uploaded template '{VITAL_SIGNS_TEMPLATE_ID}'" in result.stderr
    [sent] = ehrbase.requests
    assert (sent.method, sent.path) == ("POST", BASE)
    assert sent.headers["content-type"] == "application/xml"
    assert sent.headers["accept"] == "application/xml"
    assert sent.body == vital_signs_opt()


def test_a_second_upload_of_the_same_opt_is_already_uploaded(ehrbase, cli, opt_file):
    assert cli("template", "upload", str(opt_file)).exit_code == 0
    result = cli("template", "upload", str(opt_file), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "template_id": VITAL_SIGNS_TEMPLATE_ID,
        "outcome": "already uploaded",
        "status": 409,
        "location": None,
    }
    post, read = ehrbase.requests[1:]
    assert (post.method, read.method) == ("POST", "GET")
    assert read.path == f"{BASE}/{VITAL_SIGNS_TEMPLATE_ID}"
    assert read.headers["accept"] == "application/xml"


def test_a_different_opt_with_the_same_id_exits_4_naming_it(ehrbase, cli, opt_file, tmp_path):
    assert cli("template", "upload", str(opt_file)).exit_code == 0
    other = tmp_path / "other.opt"
    other.write_bytes(changed(vital_signs_opt()))
    result = cli("template", "upload", str(other))
    assert result.exit_code == 4
    assert (
        f"cwsctl: error: template '{VITAL_SIGNS_TEMPLATE_ID}' is already on the server with "
        "different content" in result.stderr
    )
    assert "new template_id" in result.stderr
    assert result.stdout == ""


def test_an_unsafe_opt_is_refused_before_sending(ehrbase, cli, tmp_path):
    bomb = tmp_path / "bomb.opt"
    bomb.write_bytes(b'<!DOCTYPE t [<!ENTITY a "a">]><template>&a;</template>')
    result = cli("template", "upload", str(bomb))
    assert result.exit_code == 2
    assert "contains a DTD" in result.stderr
    assert ehrbase.requests == []


def test_a_hostile_stored_opt_after_a_409_is_one_error_line(ehrbase, cli, opt_file):
    # A server answering the read-back with XML nested deeper than any OPT: exit 4, no traceback.
    ehrbase.fake.stored[VITAL_SIGNS_TEMPLATE_ID] = b"<a>" * 100_000 + b"</a>" * 100_000
    result = cli("template", "upload", str(opt_file))
    assert result.exit_code == 4, result.stderr
    assert "nested more than" in result.stderr
    assert "Traceback" not in result.stderr


def test_list_json_and_lines(ehrbase, cli, opt_file):
    empty = cli("template", "list", "--json")
    assert empty.exit_code == 0 and json.loads(empty.stdout) == {"templates": []}
    assert cli("template", "upload", str(opt_file)).exit_code == 0
    result = cli("template", "list", "--json")
    [row] = json.loads(result.stdout)["templates"]
    assert row["template_id"] == VITAL_SIGNS_TEMPLATE_ID
    assert set(row) == {"template_id", "concept", "archetype_id", "created_timestamp"}
    lines = cli("template", "list")
    assert lines.stdout.startswith(f"{VITAL_SIGNS_TEMPLATE_ID}\t")
    assert "1 template(s)" in lines.stderr
    assert ehrbase.requests[-1].headers["accept"] == "application/json"


def test_a_deeply_nested_template_list_is_one_line_not_a_crash(ehrbase, cli):
    nested = b"[" * 200_000 + b"]" * 200_000
    ehrbase.answer = lambda request: (200, {"Content-Type": "application/json"}, nested)
    result = cli("template", "list")
    assert result.exit_code == 4, result.stderr
    assert "not a JSON list" in result.stderr and "internal error" not in result.stderr


def test_get_as_opt_or_web_template_and_to_a_file(ehrbase, cli, opt_file, tmp_path):
    assert cli("template", "upload", str(opt_file)).exit_code == 0
    saved = tmp_path / "back.opt"
    result = cli("template", "get", VITAL_SIGNS_TEMPLATE_ID, "--output", str(saved))
    assert result.exit_code == 0, result.stderr
    assert saved.read_bytes() == ehrbase.fake.stored[VITAL_SIGNS_TEMPLATE_ID]
    assert ehrbase.requests[-1].headers["accept"] == "application/xml"
    web = cli("template", "get", VITAL_SIGNS_TEMPLATE_ID, "--format", "web")
    assert web.exit_code == 0 and json.loads(web.stdout) == {"templateId": "web"}
    assert ehrbase.requests[-1].headers["accept"] == "application/json"
    missing = cli("template", "get", "no.such.v1")
    assert missing.exit_code == 4
    assert "no template 'no.such.v1' on the server" in missing.stderr


@pytest.mark.parametrize(
    ("fmt", "sent"), [("canonical", "JSON"), ("flat", "FLAT"), ("structured", "STRUCTURED")]
)
def test_example_asks_for_the_format(ehrbase, cli, opt_file, fmt, sent):
    assert cli("template", "upload", str(opt_file)).exit_code == 0
    result = cli("template", "example", VITAL_SIGNS_TEMPLATE_ID, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    request = ehrbase.requests[-1]
    assert request.path == f"{BASE}/{VITAL_SIGNS_TEMPLATE_ID}/example"
    assert request.query == {"format": [sent]}


def test_doctor_lists_the_templates(ehrbase, run_cwsctl, cwsctl_home, opt_file):
    # the profile was made in process (cli); doctor runs as a subprocess on the same home
    none = run_cwsctl("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(none.stdout)["checks"]}
    assert checks["templates"]["ok"] and "none uploaded" in checks["templates"]["detail"]
    ehrbase.fake.stored[VITAL_SIGNS_TEMPLATE_ID] = vital_signs_opt()
    result = run_cwsctl("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["templates"]["detail"] == f"1 uploaded: {VITAL_SIGNS_TEMPLATE_ID}"


# -- end to end, against the openEHR sandbox -----------------------------------------------------


@pytest.fixture
def cdr(make_openehr_sandbox, cli):
    pytest.importorskip("starlette")
    server = make_openehr_sandbox()
    result = cli(
        "profile", "init", "cdr", "--kind", "openehr", "--url", server.base_url, "--default"
    )
    assert result.exit_code == 0, result.stderr
    return server


def test_sandbox_upload_twice_then_a_changed_one(cdr, cli, opt_file, tmp_path):
    first = cli("template", "upload", str(opt_file), "--json")
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["outcome"] == "uploaded"
    again = cli("template", "upload", str(opt_file), "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout) == {
        "template_id": VITAL_SIGNS_TEMPLATE_ID,
        "outcome": "already uploaded",
        "status": 409,
        "location": None,
    }
    other = tmp_path / "other.opt"
    other.write_bytes(changed(vital_signs_opt()))
    result = cli("template", "upload", str(other))
    assert result.exit_code == 4
    assert f"template '{VITAL_SIGNS_TEMPLATE_ID}' is already on the server" in result.stderr


def test_sandbox_an_opt_nested_too_deep_is_refused_before_sending(cdr, cli, tmp_path):
    deep = tmp_path / "deep.opt"
    deep.write_bytes(
        b"<template>" + b"<a>" * MAX_XML_DEPTH + b"</a>" * MAX_XML_DEPTH + b"</template>"
    )
    result = cli("template", "upload", str(deep))
    assert result.exit_code == 2
    assert f"nested more than {MAX_XML_DEPTH} deep" in result.stderr
    assert json.loads(cli("template", "list", "--json").stdout) == {"templates": []}


def test_sandbox_list_get_and_example(cdr, cli, opt_file, tmp_path):
    assert cli("template", "upload", str(opt_file)).exit_code == 0
    listed = json.loads(cli("template", "list", "--json").stdout)["templates"]
    assert [row["template_id"] for row in listed] == [VITAL_SIGNS_TEMPLATE_ID]
    saved = tmp_path / "back.opt"
    got = cli("template", "get", VITAL_SIGNS_TEMPLATE_ID, "-o", str(saved))
    assert got.exit_code == 0, got.stderr
    assert read_opt(saved.read_bytes()).template_id == VITAL_SIGNS_TEMPLATE_ID
    assert same_xml(saved.read_bytes(), vital_signs_opt())
    web = cli("template", "get", VITAL_SIGNS_TEMPLATE_ID, "--format", "web")
    assert web.exit_code == 0, web.stderr
    assert json.loads(web.stdout)["templateId"] == VITAL_SIGNS_TEMPLATE_ID
    flat = cli("template", "example", VITAL_SIGNS_TEMPLATE_ID, "--format", "flat")
    assert flat.exit_code == 0, flat.stderr
    assert all("/" in key for key in json.loads(flat.stdout))
    canonical = cli("template", "example", VITAL_SIGNS_TEMPLATE_ID)
    assert json.loads(canonical.stdout)["_type"] == "COMPOSITION"


def test_sandbox_doctor_lists_the_uploaded_template(cdr, cli, opt_file, run_cwsctl):
    assert cli("template", "upload", str(opt_file)).exit_code == 0
    result = run_cwsctl("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["templates"]["detail"] == f"1 uploaded: {VITAL_SIGNS_TEMPLATE_ID}"
