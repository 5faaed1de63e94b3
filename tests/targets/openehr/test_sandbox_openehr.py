"""The openEHR flavour of the sandbox against EHRbase 2.x's behaviour, spoken to with httpx.

Every behaviour the sandbox models (cwsctl/sandbox/README.md, "openEHR (EHRbase)") is checked in
each mode it has: If-Match ``ehrbase`` (2.0–2.31) and ``spec``; AQL fetch precedence ``reject``
and ``min-fetch``, with and without a max fetch of 500.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from tests.sandbox_plugin import serve_sandbox

pytest.importorskip("starlette")

from cwsctl.targets.openehr.data import VITAL_SIGNS_TEMPLATE_ID, vital_signs_opt

SYSTEM = "cwsctl-sandbox"
NS = "urn:cwsctl:external-id:facility:10000"
TID = VITAL_SIGNS_TEMPLATE_ID
REPRESENTATION = {"Prefer": "return=representation"}
JSON_TYPE = {"Content-Type": "application/json"}
XML_UPLOAD = {"Content-Type": "application/xml", "Accept": "application/xml"}
ADL = "/definition/template/adl1.4"
FLAT_TYPE = "application/openehr.wt.flat.schema+json"
STRUCTURED_TYPE = "application/openehr.wt.structured.schema+json"
FLAT_PARAMS = {"format": "FLAT", "templateId": TID}
NOT_LATEST = {
    "error": "Precondition Failed",
    "message": "If-Match version_uid does not match latest version",
}
FIXED_LAST_MODIFIED = "Fri, 02 Jan 1970 10:12:04 GMT"
MODES = ["ehrbase", "spec"]
SYSTOLIC = "vital_signs/blood_pressure:0/any_event:0/systolic"


def ehr_status(subject_id: str, namespace: str = NS, **extra: Any) -> dict[str, Any]:
    return {
        "_type": "EHR_STATUS",
        "archetype_node_id": "openEHR-EHR-EHR_STATUS.generic.v1",
        "name": {"value": "EHR Status"},
        "subject": {
            "external_ref": {
                "id": {"_type": "GENERIC_ID", "value": subject_id, "scheme": "id_scheme"},
                "namespace": namespace,
                "type": "PERSON",
            }
        },
        "is_queryable": True,
        "is_modifiable": True,
        **extra,
    }


def flat(systolic: float = 120.0, diastolic: float = 80.0) -> dict[str, Any]:
    return {
        "ctx/language": "en",
        "ctx/territory": "US",
        "ctx/composer_name": "Dr. Test",
        f"{SYSTOLIC}|magnitude": systolic,
        f"{SYSTOLIC}|unit": "mm[Hg]",
        "vital_signs/blood_pressure:0/any_event:0/diastolic|magnitude": diastolic,
        "vital_signs/blood_pressure:0/any_event:0/diastolic|unit": "mm[Hg]",
    }


def canonical(name: str = "Vital signs", **changes: Any) -> dict[str, Any]:
    """A canonical composition of the shipped template (as the sandbox's example builds it)."""
    from cwsctl.targets.openehr.sandbox.opt import parse_opt
    from cwsctl.targets.openehr.sandbox.web_formats import example

    document = example(parse_opt(vital_signs_opt()))
    document["name"]["value"] = name
    document.update(changes)
    return document


def body(document: Any) -> bytes:
    return json.dumps(document, indent=1).encode()


def unquote(etag: str) -> str:
    assert etag.startswith('"') and etag.endswith('"'), etag
    return etag[1:-1]


def bare_or_quoted(mode: str, uid: str) -> str:
    """What a client that knows the server sends: bare on EHRbase 2.31, quoted per the spec."""
    return uid if mode == "ehrbase" else f'"{uid}"'


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(make_openehr_sandbox: Any, mode: str) -> Any:
    """A sandbox in If-Match ``mode`` with the shipped template uploaded."""
    return make_openehr_sandbox(if_match=mode, templates=[vital_signs_opt()])


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def bare(make_openehr_sandbox: Any) -> Iterator[httpx.Client]:
    """A default sandbox (EHRbase 2.31 mode) with no template uploaded."""
    server = make_openehr_sandbox()
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


def new_ehr(http: httpx.Client, subject_id: str | None = None) -> str:
    answer = http.post("/ehr", json=ehr_status(subject_id or uuid.uuid4().hex))
    assert answer.status_code == 201, answer.text
    return unquote(answer.headers["etag"])


def post_composition(http: httpx.Client, ehr_id: str, name: str = "Vitals") -> str:
    answer = http.post(
        f"/ehr/{ehr_id}/composition", content=body(canonical(name)), headers=JSON_TYPE
    )
    assert answer.status_code == 204, answer.text
    return unquote(answer.headers["etag"])


def put_composition(
    http: httpx.Client, ehr_id: str, object_id: str, name: str, if_match: str | None, **headers: str
) -> httpx.Response:
    sent = {**JSON_TYPE, **headers}
    if if_match is not None:
        sent["If-Match"] = if_match
    return http.put(
        f"/ehr/{ehr_id}/composition/{object_id}", content=body(canonical(name)), headers=sent
    )


def history(http: httpx.Client, ehr_id: str, object_id: str) -> list[str]:
    answer = http.get(f"/ehr/{ehr_id}/versioned_composition/{object_id}/revision_history")
    assert answer.status_code == 200, answer.text
    return [item["version_id"]["value"] for item in answer.json()["items"]]


def query(http: httpx.Client, q: str, **fields: Any) -> httpx.Response:
    return http.post("/query/aql", json={"q": q, **fields})


# -- the shipped template -----------------------------------------------------------------------
def test_shipped_opt_is_package_data_and_an_opt() -> None:
    data = vital_signs_opt()
    assert 2_000 < len(data) < 20_000
    root = ET.fromstring(data)  # noqa: S314 - our own file
    ns = "{http://schemas.openehr.org/v1}"
    assert root.tag == f"{ns}template"
    assert root.findtext(f"{ns}template_id/{ns}value") == TID
    definition = root.find(f"{ns}definition")
    assert definition is not None
    assert definition.findtext(f"{ns}rm_type_name") == "COMPOSITION"
    archetypes = [e.text for e in root.iter(f"{ns}archetype_id") for e in e]
    assert "openEHR-EHR-OBSERVATION.blood_pressure.v2" in archetypes


def test_template_id_comes_from_the_xml_not_the_file_name(
    make_openehr_sandbox: Any, tmp_path: Any
) -> None:
    renamed = vital_signs_opt().replace(
        f"<template_id><value>{TID}</value>".encode(), b"<template_id><value>other.v2</value>"
    )
    path = tmp_path / f"{TID}.opt"  # the file name says one thing, the XML another
    path.write_bytes(renamed)
    server = make_openehr_sandbox()
    with httpx.Client(base_url=server.base_url) as http:
        answer = http.post(ADL, content=path.read_bytes(), headers=XML_UPLOAD)
        assert answer.status_code == 201
        assert answer.headers["location"].endswith(f"{ADL}/other.v2")
        assert [t["template_id"] for t in http.get(ADL).json()] == ["other.v2"]
        assert http.get(f"{ADL}/{TID}").status_code == 404
    assert server.upload_template(vital_signs_opt()) == TID
    assert server.template_ids() == ["cwsctl.vital_signs.v1", "other.v2"]
    with pytest.raises(ValueError, match="already exists"):
        server.upload_template(vital_signs_opt())
    assert server.upload_template(vital_signs_opt(), exist_ok=True) == TID


# -- templates -----------------------------------------------------------------------------------
def test_template_upload_needs_xml_both_ways_and_answers_409_to_a_second(
    bare: httpx.Client,
) -> None:
    opt = vital_signs_opt()
    wrong_accept = bare.post(ADL, content=opt, headers={**XML_UPLOAD, "Accept": "application/json"})
    assert wrong_accept.status_code == 406
    assert wrong_accept.json()["error"] == "Not Acceptable"
    wrong_type = bare.post(ADL, content=opt, headers={**XML_UPLOAD, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    assert bare.get(ADL).json() == []
    created = bare.post(ADL, content=opt, headers=XML_UPLOAD)
    assert created.status_code == 201 and created.content == b""
    listed = bare.get(ADL).json()
    assert [(t["template_id"], t["concept"], t["archetype_id"]) for t in listed] == [
        (TID, TID, "openEHR-EHR-COMPOSITION.encounter.v1")
    ]
    assert listed[0]["created_timestamp"]
    again = bare.post(ADL, content=opt, headers=XML_UPLOAD)  # identical: still 409
    assert again.status_code == 409
    assert again.json() == {
        "error": "Conflict",
        "message": f"Operational template with this template ID already exists: {TID}",
    }
    changed = opt.replace(b"Record one blood pressure reading.", b"Something else.")
    assert bare.post(ADL, content=changed, headers=XML_UPLOAD).status_code == 409
    represented = bare.post(
        ADL, content=opt.replace(TID.encode(), b"copy.v1"), headers={**XML_UPLOAD, **REPRESENTATION}
    )
    assert represented.status_code == 201 and represented.content.startswith(b"<template")


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (b"<template", "Could not parse input template"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><template/>', "Could not parse input template"),
        (  # the same in UTF-16, which a search for the bytes b"<!DOCTYPE" misses
            '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]>'
            '<template xmlns="http://schemas.openehr.org/v1">&a;</template>'.encode("utf-16"),
            "contains a DTD",
        ),
        (b'<template xmlns="urn:other"/>', "Could not parse input template"),
        (b"<concept>cwsctl.vital_signs.v1</concept>", "nil or empty concept"),
        (b"<template_id><value>cwsctl.vital_signs.v1</value></template_id>", "template_id"),
    ],
)
def test_template_upload_refuses_what_ehrbase_refuses(
    bare: httpx.Client, broken: bytes, message: str
) -> None:
    opt = vital_signs_opt()
    document = opt.replace(broken, b"") if broken in opt else broken
    answer = bare.post(ADL, content=document, headers=XML_UPLOAD)
    assert answer.status_code == 400 and message in answer.json()["message"]
    assert bare.get(ADL).json() == []


def test_template_overwrite_setting(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(template_overwrite=True, templates=[vital_signs_opt()])
    changed = vital_signs_opt().replace(b"Record one blood pressure reading.", b"Changed.")
    with httpx.Client(base_url=server.base_url) as http:
        assert http.post(ADL, content=changed, headers=XML_UPLOAD).status_code == 201
        assert b"Changed." in http.get(f"{ADL}/{TID}").content


def test_template_get_as_opt_or_web_template(http: httpx.Client) -> None:
    got = http.get(f"{ADL}/{TID}", headers={"Accept": "application/xml"})
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/xml")
    assert got.content != vital_signs_opt()  # re-serialised: no XML declaration, no comment

    def canonical_xml(data: bytes) -> str:
        parsed = ET.fromstring(data)  # noqa: S314 - our own data
        for element in parsed.iter():
            element.text = (element.text or "").strip() or None
            element.tail = None
        return ET.canonicalize(ET.tostring(parsed), strip_text=True)

    assert canonical_xml(got.content) == canonical_xml(vital_signs_opt())
    for accept in ("application/json", "application/openehr.wt+json"):
        web = http.get(f"{ADL}/{TID}", headers={"Accept": accept})
        assert web.status_code == 200 and web.headers["content-type"].startswith(accept)
        tree = web.json()["tree"]
        assert web.json()["templateId"] == TID
        assert (tree["id"], tree["rmType"]) == ("vital_signs", "COMPOSITION")
        observation = tree["children"][0]
        assert observation["nodeId"] == "openEHR-EHR-OBSERVATION.blood_pressure.v2"
        event = observation["children"][0]
        assert [c["id"] for c in event["children"]] == ["systolic", "diastolic"]
        assert event["children"][0]["units"] == "mm[Hg]"
    assert http.get(f"{ADL}/{TID}", headers={"Accept": "text/plain"}).status_code == 406
    missing = http.get(f"{ADL}/nope.v1")
    assert missing.status_code == 404
    assert missing.json()["message"] == "Template with template_id 'nope.v1' does not exist"


def test_template_example_in_each_format(http: httpx.Client) -> None:
    example = http.get(f"{ADL}/{TID}/example")
    assert example.status_code == 200
    document = example.json()
    assert document["archetype_details"]["template_id"]["value"] == TID
    assert (
        document["content"][0]["archetype_node_id"] == "openEHR-EHR-OBSERVATION.blood_pressure.v2"
    )
    as_flat = http.get(f"{ADL}/{TID}/example", params={"format": "FLAT"})
    assert as_flat.headers["content-type"].startswith(FLAT_TYPE)
    assert as_flat.json()[f"{SYSTOLIC}|unit"] == "mm[Hg]"
    by_accept = http.get(f"{ADL}/{TID}/example", headers={"Accept": STRUCTURED_TYPE})
    structured = by_accept.json()["vital_signs"]["blood_pressure"][0]["any_event"][0]
    assert structured["systolic"][0]["|unit"] == "mm[Hg]"
    for bad in ("XML", "BOGUS"):
        refused = http.get(f"{ADL}/{TID}/example", params={"format": bad})
        assert refused.status_code == 406
    assert "only [XML, JSON, FLAT, STRUCTURED]" in refused.json()["message"]
    # the example goes back in as it came out
    ehr_id = new_ehr(http)
    stored = http.post(f"/ehr/{ehr_id}/composition", content=example.content, headers=JSON_TYPE)
    assert stored.status_code == 204


# -- compositions need their template -----------------------------------------------------------
@pytest.mark.parametrize("if_match", MODES)
def test_a_composition_needs_its_template_uploaded_first(
    make_openehr_sandbox: Any, if_match: str
) -> None:
    server = make_openehr_sandbox(if_match=if_match)
    with httpx.Client(base_url=server.base_url) as http:
        ehr_id = new_ehr(http)
        refused = http.post(
            f"/ehr/{ehr_id}/composition", content=body(canonical()), headers=JSON_TYPE
        )
        assert refused.status_code == 422
        assert refused.json() == {
            "error": "Unprocessable Entity",
            "message": f"Template with template_id '{TID}' does not exist",
        }
        flat_refused = http.post(f"/ehr/{ehr_id}/composition", params=FLAT_PARAMS, json=flat())
        assert flat_refused.status_code == 422
        assert http.post(ADL, content=vital_signs_opt(), headers=XML_UPLOAD).status_code == 201
        assert (
            http.post(
                f"/ehr/{ehr_id}/composition", content=body(canonical()), headers=JSON_TYPE
            ).status_code
            == 204
        )


@pytest.mark.parametrize(
    "missing", ["name", "archetype_node_id", "language", "category", "composer"]
)
def test_mandatory_composition_attributes(http: httpx.Client, missing: str) -> None:
    ehr_id = new_ehr(http)
    document = canonical()
    del document[missing]
    answer = http.post(f"/ehr/{ehr_id}/composition", content=body(document), headers=JSON_TYPE)
    assert answer.status_code == 400
    assert answer.json()["message"] == f"Composition missing mandatory attribute: {missing}"


def test_composition_checks_before_storing(http: httpx.Client) -> None:
    ehr_id = new_ehr(http)
    post = f"/ehr/{ehr_id}/composition"
    wrong_root = canonical(archetype_node_id="openEHR-EHR-COMPOSITION.report.v1")
    assert http.post(post, content=body(wrong_root), headers=JSON_TYPE).status_code == 400
    assert http.post(post, content=b"[]", headers=JSON_TYPE).status_code == 400
    assert http.post(post, content=b'{"x": NaN}', headers=JSON_TYPE).status_code == 400
    assert (
        http.post(
            post, content=body(canonical()), headers={"Content-Type": "text/plain"}
        ).status_code
        == 415
    )
    assert (
        http.post(
            f"/ehr/{uuid.uuid4()}/composition", content=body(canonical()), headers=JSON_TYPE
        ).status_code
        == 404
    )
    assert (
        http.post(
            "/ehr/not-a-uuid/composition", content=body(canonical()), headers=JSON_TYPE
        ).status_code
        == 400
    )
    foreign_uid = canonical(uid={"value": f"{uuid.uuid4()}::elsewhere::1"})
    assert http.post(post, content=body(foreign_uid), headers=JSON_TYPE).status_code == 412
    own = f"{uuid.uuid4()}::{SYSTEM}::1"
    given = http.post(post, content=body(canonical(uid={"value": own})), headers=JSON_TYPE)
    assert given.status_code == 204 and unquote(given.headers["etag"]) == own
    assert (
        http.post(post, content=body(canonical(uid={"value": own})), headers=JSON_TYPE).status_code
        == 412
    )


def test_post_composition_minimal_is_204_representation_201(
    server: Any, http: httpx.Client
) -> None:
    ehr_id = new_ehr(http)
    created = http.post(f"/ehr/{ehr_id}/composition", content=body(canonical()), headers=JSON_TYPE)
    assert created.status_code == 204 and created.content == b""
    v1 = unquote(created.headers["etag"])
    object_id, system, number = v1.split("::")
    assert (system, number) == (SYSTEM, "1")
    assert created.headers["location"] == f"{server.base_url}/ehr/{ehr_id}/composition/{object_id}"
    assert created.headers["last-modified"] == FIXED_LAST_MODIFIED
    # "Prefer" must be exactly return=representation, as EHRbase compares it
    listed = http.post(
        f"/ehr/{ehr_id}/composition",
        content=body(canonical()),
        headers={**JSON_TYPE, "Prefer": "return=representation, handling=strict"},
    )
    assert listed.status_code == 204
    represented = http.post(
        f"/ehr/{ehr_id}/composition",
        content=body(canonical("Labs")),
        headers={**JSON_TYPE, **REPRESENTATION},
    )
    assert represented.status_code == 201
    assert represented.json()["name"]["value"] == "Labs"
    assert represented.json()["uid"]["value"] == unquote(represented.headers["etag"])
    for uid in (v1, object_id):
        got = http.get(f"/ehr/{ehr_id}/composition/{uid}")
        assert got.status_code == 200 and unquote(got.headers["etag"]) == v1
        assert got.json()["uid"] == {"_type": "OBJECT_VERSION_ID", "value": v1}
    assert http.get(f"/ehr/{ehr_id}/composition/{uuid.uuid4()}").status_code == 404
    assert http.get(f"/ehr/{new_ehr(http)}/composition/{object_id}").status_code == 404


# -- FLAT and STRUCTURED -----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["query", "media-type"])
def test_flat_in_and_out(http: httpx.Client, how: str) -> None:
    ehr_id = new_ehr(http)
    if how == "query":
        sent = http.post(f"/ehr/{ehr_id}/composition", params=FLAT_PARAMS, json=flat(131))
    else:
        sent = http.post(
            f"/ehr/{ehr_id}/composition",
            params={"templateId": TID},
            content=json.dumps(flat(131)).encode(),
            headers={"Content-Type": FLAT_TYPE},
        )
    assert sent.status_code == 204, sent.text
    v1 = unquote(sent.headers["etag"])
    stored = http.get(f"/ehr/{ehr_id}/composition/{v1}").json()
    element = stored["content"][0]["data"]["events"][0]["data"]["items"][0]
    assert element["archetype_node_id"] == "at0004"
    assert element["value"] == {"_type": "DV_QUANTITY", "magnitude": 131, "units": "mm[Hg]"}
    assert stored["composer"]["name"] == "Dr. Test"
    as_flat = http.get(f"/ehr/{ehr_id}/composition/{v1}", params={"format": "FLAT"})
    assert as_flat.headers["content-type"].startswith(FLAT_TYPE)
    assert as_flat.json()[f"{SYSTOLIC}|magnitude"] == 131
    by_accept = http.get(f"/ehr/{ehr_id}/composition/{v1}", headers={"Accept": FLAT_TYPE})
    assert by_accept.json() == as_flat.json()
    object_id = v1.split("::")[0]
    updated = http.put(
        f"/ehr/{ehr_id}/composition/{object_id}",
        params=FLAT_PARAMS,
        json=flat(140),
        headers={"If-Match": v1, **REPRESENTATION},  # a bare uid works in both modes
    )
    assert updated.status_code == 200 and updated.json()[f"{SYSTOLIC}|magnitude"] == 140


def test_structured_in_and_out(http: httpx.Client) -> None:
    ehr_id = new_ehr(http)
    structured = {
        "ctx": {"language": "en", "territory": "US", "composer_name": "Dr. S"},
        "vital_signs": {
            "blood_pressure": [
                {"any_event": [{"systolic": [{"|magnitude": 118, "|unit": "mm[Hg]"}]}]}
            ]
        },
    }
    sent = http.post(
        f"/ehr/{ehr_id}/composition",
        params={"templateId": TID},
        content=json.dumps(structured).encode(),
        headers={"Content-Type": STRUCTURED_TYPE},
    )
    assert sent.status_code == 204, sent.text
    v1 = unquote(sent.headers["etag"])
    back = http.get(f"/ehr/{ehr_id}/composition/{v1}", params={"format": "STRUCTURED"})
    assert back.headers["content-type"].startswith(STRUCTURED_TYPE)
    event = back.json()["vital_signs"]["blood_pressure"][0]["any_event"][0]
    assert event["systolic"] == [{"|magnitude": 118, "|unit": "mm[Hg]"}]
    via_param = http.post(
        f"/ehr/{ehr_id}/composition",
        params={"format": "STRUCTURED", "templateId": TID},
        json=structured,
    )
    assert via_param.status_code == 204


def test_what_the_sandbox_cannot_convert_is_a_clear_error(http: httpx.Client) -> None:
    ehr_id = new_ehr(http)
    post = f"/ehr/{ehr_id}/composition"
    no_template = http.post(post, params={"format": "FLAT"}, json=flat())
    assert no_template.status_code == 400 and "templateId" in no_template.json()["message"]
    # the specification's header is never read (EHRbase takes ?templateId=)
    header_only = http.post(
        post, params={"format": "FLAT"}, json=flat(), headers={"openEHR-TEMPLATE_ID": TID}
    )
    assert header_only.status_code == 400
    unknown = http.post(post, params={"format": "FLAT", "templateId": "nope.v1"}, json=flat())
    assert unknown.status_code == 422
    stray = http.post(post, params=FLAT_PARAMS, json={**flat(), "vital_signs/pulse:0/rate": 70})
    assert stray.status_code == 400
    assert stray.json()["message"] == "Could not consume Parts ['vital_signs/pulse:0/rate']"
    context = http.post(
        post, params=FLAT_PARAMS, json={**flat(), "ctx/health_care_facility|id": "9"}
    )
    assert context.status_code == 422 and "cannot convert" in context.json()["message"]
    text_magnitude = http.post(
        post, params=FLAT_PARAMS, json={**flat(), f"{SYSTOLIC}|magnitude": "x"}
    )
    assert text_magnitude.status_code == 422
    xml = http.post(post, content=b"<composition/>", headers={"Content-Type": "application/xml"})
    assert xml.status_code == 415 and "cannot convert" in xml.json()["message"]
    spec_type = http.post(
        post,
        params={"templateId": TID},
        json=flat(),
        headers={"Content-Type": "application/openehr.wt.flat+json"},
    )
    assert spec_type.status_code == 415
    bogus = http.post(post, params={"format": "SIMPLE", "templateId": TID}, json=flat())
    assert bogus.status_code == 406
    # canonical content the template does not describe cannot be shown as FLAT
    odd = canonical(
        content=[
            {
                "_type": "OBSERVATION",
                "archetype_node_id": "openEHR-EHR-OBSERVATION.pulse.v1",
                "name": {"value": "Pulse"},
            }
        ]
    )
    stored = http.post(post, content=body(odd), headers=JSON_TYPE)
    assert stored.status_code == 204  # the sandbox does not validate content (README)
    v1 = unquote(stored.headers["etag"])
    as_flat = http.get(f"/ehr/{ehr_id}/composition/{v1}", params={"format": "FLAT"})
    assert as_flat.status_code == 422 and "cannot convert" in as_flat.json()["message"]
    assert (
        http.get(
            f"/ehr/{ehr_id}/composition/{v1}", headers={"Accept": "application/xml"}
        ).status_code
        == 406
    )
    assert http.get(f"/ehr/{ehr_id}/composition/{v1}").status_code == 200


# -- If-Match, stale writes, delete -------------------------------------------------------------
def test_if_match_quoting_per_mode(server: Any, http: httpx.Client, mode: str) -> None:
    ehr_id = new_ehr(http)
    v1 = post_composition(http, ehr_id, "first")
    object_id = v1.split("::")[0]
    quoted = put_composition(http, ehr_id, object_id, "second", f'"{v1}"')
    if mode == "ehrbase":
        assert quoted.status_code == 400
        assert quoted.json() == {"error": "Bad Request", "message": "UUID string too large"}
        assert "etag" not in quoted.headers
        assert history(http, ehr_id, object_id) == [v1]  # nothing written
        weak = put_composition(http, ehr_id, object_id, "x", f'W/"{v1}"')
        assert weak.json()["message"] == "UUID string too large"
        bare = put_composition(http, ehr_id, object_id, "second", v1)
        assert bare.status_code == 204
        v2 = unquote(bare.headers["etag"])
    else:
        assert quoted.status_code == 204
        v2 = unquote(quoted.headers["etag"])
        for refused in (f'W/"{v2}"', "*", f'"{v2}', f'{v2}"'):
            answer = put_composition(http, ehr_id, object_id, "x", refused)
            assert answer.status_code == 400, refused
        bare = put_composition(http, ehr_id, object_id, "third", v2)
        assert bare.status_code == 204
    assert v2 == f"{object_id}::{SYSTEM}::2"
    assert history(http, ehr_id, object_id)[:2] == [v1, v2]
    status = httpx.get(server.status_url).json()
    assert status["ehrbase_version"] == ("2.31.0" if mode == "ehrbase" else "2.32.0")
    missing = put_composition(http, ehr_id, object_id, "blind", None)
    assert missing.status_code == 400 and "If-Match" in missing.json()["message"]


def test_if_match_on_ehr_status_per_mode(http: httpx.Client, mode: str) -> None:
    ehr_id = new_ehr(http, "P1")
    first = http.get(f"/ehr/{ehr_id}/ehr_status")
    v1 = unquote(first.headers["etag"])
    assert first.headers["last-modified"].endswith("GMT")
    assert first.headers["last-modified"] != FIXED_LAST_MODIFIED
    new = ehr_status("P1", is_queryable=False)
    quoted = http.put(f"/ehr/{ehr_id}/ehr_status", json=new, headers={"If-Match": f'"{v1}"'})
    if mode == "ehrbase":
        assert quoted.status_code == 400 and quoted.json()["message"] == "UUID string too large"
        assert http.get(f"/ehr/{ehr_id}/ehr_status").json()["is_queryable"] is True
    else:
        assert quoted.status_code == 204
    latest = unquote(http.get(f"/ehr/{ehr_id}/ehr_status").headers["etag"])
    updated = http.put(
        f"/ehr/{ehr_id}/ehr_status", json=new, headers={"If-Match": latest, **REPRESENTATION}
    )
    assert updated.status_code == 200 and updated.json()["is_queryable"] is False
    stale = http.put(f"/ehr/{ehr_id}/ehr_status", json=new, headers={"If-Match": v1})
    assert stale.status_code == 412 and stale.json() == NOT_LATEST
    assert "etag" not in stale.headers and "location" not in stale.headers
    old = http.get(f"/ehr/{ehr_id}/ehr_status/{v1}")
    assert old.status_code == 200 and old.json()["is_queryable"] is True


def test_stale_update_is_412_and_stale_delete_409_without_etag_or_location(
    http: httpx.Client, mode: str
) -> None:
    ehr_id = new_ehr(http)
    v1 = post_composition(http, ehr_id, "first")
    object_id = v1.split("::")[0]
    v2 = unquote(
        put_composition(http, ehr_id, object_id, "second", bare_or_quoted(mode, v1)).headers["etag"]
    )
    stale = put_composition(http, ehr_id, object_id, "lost", bare_or_quoted(mode, v1))
    assert stale.status_code == 412 and stale.json() == NOT_LATEST
    assert "etag" not in stale.headers and "location" not in stale.headers
    other_object = f"{uuid.uuid4()}::{SYSTEM}::2"
    assert (
        put_composition(
            http, ehr_id, object_id, "x", bare_or_quoted(mode, other_object)
        ).status_code
        == 412
    )
    # the system id in If-Match is ignored: the version number and object count
    foreign = put_composition(
        http, ehr_id, object_id, "third", bare_or_quoted(mode, f"{object_id}::elsewhere::2")
    )
    assert foreign.status_code == 204 and unquote(foreign.headers["etag"]).endswith(
        f"::{SYSTEM}::3"
    )
    stale_delete = http.delete(f"/ehr/{ehr_id}/composition/{v2}")
    assert stale_delete.status_code == 409
    assert stale_delete.json() == {"error": "Conflict", "message": NOT_LATEST["message"]}
    assert "etag" not in stale_delete.headers and "location" not in stale_delete.headers
    assert (
        put_composition(http, ehr_id, str(uuid.uuid4()), "x", bare_or_quoted(mode, v2)).status_code
        == 404
    )
    assert put_composition(http, ehr_id, v2, "x", bare_or_quoted(mode, v2)).status_code == 400


def test_delete_then_read_then_delete_again(http: httpx.Client, mode: str) -> None:
    ehr_id = new_ehr(http)
    v1 = post_composition(http, ehr_id, "first")
    object_id = v1.split("::")[0]
    assert http.delete(f"/ehr/{ehr_id}/composition/{object_id}").status_code == 400
    deleted = http.delete(f"/ehr/{ehr_id}/composition/{v1}")
    assert deleted.status_code == 204
    v2 = unquote(deleted.headers["etag"])
    assert v2 == f"{object_id}::{SYSTEM}::2" and deleted.headers["location"].endswith(v2)
    gone = http.get(f"/ehr/{ehr_id}/composition/{object_id}")
    assert gone.status_code == 204 and gone.content == b"" and "etag" not in gone.headers
    assert http.get(f"/ehr/{ehr_id}/composition/{v1}").json()["name"]["value"] == "first"
    message = {
        "error": "Not Found",
        "message": "No EHR with the supplied ehr_id or no COMPOSITION with the supplied "
        "preceding_version_uid.",
    }
    for uid in (v2, v1, f"{uuid.uuid4()}::{SYSTEM}::1"):
        again = http.delete(f"/ehr/{ehr_id}/composition/{uid}")
        assert again.status_code == 404 and again.json() == message
    revived = put_composition(http, ehr_id, object_id, "again", bare_or_quoted(mode, v2))
    assert revived.status_code == 204 and unquote(revived.headers["etag"]).endswith("::3")


def test_concurrent_updaters_exactly_one_wins(server: Any, mode: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as setup:
        ehr_id = new_ehr(setup)
        v1 = post_composition(setup, ehr_id)
    object_id = v1.split("::")[0]
    racers = 6
    barrier = threading.Barrier(racers)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def update(n: int) -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            barrier.wait()
            answer = put_composition(client, ehr_id, object_id, f"w{n}", bare_or_quoted(mode, v1))
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=update, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert sorted(a.status_code for a in answers) == [204] + [412] * (racers - 1)
    with httpx.Client(base_url=server.base_url) as check:
        assert [v[-1] for v in history(check, ehr_id, object_id)] == ["1", "2"]


def test_revision_history_and_versioned_composition(http: httpx.Client, mode: str) -> None:
    ehr_id = new_ehr(http)
    v1 = post_composition(http, ehr_id, "first")
    object_id = v1.split("::")[0]
    v2 = unquote(
        put_composition(http, ehr_id, object_id, "second", bare_or_quoted(mode, v1)).headers["etag"]
    )
    v3 = unquote(http.delete(f"/ehr/{ehr_id}/composition/{v2}").headers["etag"])
    answer = http.get(f"/ehr/{ehr_id}/versioned_composition/{object_id}/revision_history").json()
    assert list(answer) == ["items"]
    items = answer["items"]
    assert [i["version_id"]["value"] for i in items] == [v1, v2, v3]
    audits = [i["audits"][0] for i in items]
    assert [(a["change_type"]["value"], a["change_type"]["defining_code"]["code_string"]) for a in audits] == [
        ("creation", "249"), ("modification", "251"), ("deleted", "523")
    ]  # fmt: skip
    assert all(a["committer"]["_type"] == "PARTY_IDENTIFIED" for a in audits)
    times = [a["time_committed"]["value"] for a in audits]
    assert times == sorted(times) and len(set(times)) == 3
    versioned = http.get(f"/ehr/{ehr_id}/versioned_composition/{object_id}").json()
    assert versioned["uid"]["value"] == object_id and versioned["owner_id"]["id"]["value"] == ehr_id
    missing = f"/ehr/{ehr_id}/versioned_composition/{uuid.uuid4()}/revision_history"
    assert http.get(missing).status_code == 404


def test_version_at_time_needs_extended_iso_8601(http: httpx.Client, mode: str) -> None:
    ehr_id = new_ehr(http)
    v1 = post_composition(http, ehr_id, "first")
    object_id = v1.split("::")[0]
    time.sleep(0.01)
    between = datetime.now(timezone.utc)
    time.sleep(0.01)
    put_composition(http, ehr_id, object_id, "second", bare_or_quoted(mode, v1))
    url = f"/ehr/{ehr_id}/composition/{object_id}"
    iso = between.strftime("%Y-%m-%dT%H:%M:%S.%f")
    for good in (iso, iso + "Z", iso + "+00:00"):  # httpx encodes + as %2B
        answer = http.get(url, params={"version_at_time": good})
        assert answer.status_code == 200 and answer.json()["name"]["value"] == "first", good
    for bad in (iso.replace("T", " "), between.strftime("%Y%m%dT%H%M%S"), "yesterday"):
        assert http.get(url, params={"version_at_time": bad}).status_code == 400, bad
        status = http.get(f"/ehr/{ehr_id}/ehr_status", params={"version_at_time": bad})
        assert status.status_code == 400
    assert http.get(url, params={"version_at_time": "2001-01-01T00:00:00Z"}).status_code == 404


# -- EHR -------------------------------------------------------------------------------------------
def test_ehr_answers_with_ehr_status_as_object_ref(server: Any, http: httpx.Client) -> None:
    answer = http.post("/ehr", json=ehr_status("P1"), headers=REPRESENTATION)
    assert answer.status_code == 201
    ehr_id = unquote(answer.headers["etag"])
    assert answer.headers["location"] == f"{server.base_url}/ehr/{ehr_id}"
    assert answer.headers["last-modified"] == FIXED_LAST_MODIFIED
    document = answer.json()
    ref = document["ehr_status"]
    assert set(ref) == {"id", "namespace", "type"}
    assert (ref["id"]["_type"], ref["namespace"], ref["type"]) == (
        "OBJECT_VERSION_ID",
        "local",
        "EHR_STATUS",
    )
    status = http.get(f"/ehr/{ehr_id}/ehr_status")
    assert ref["id"]["value"] == unquote(status.headers["etag"]) == status.json()["uid"]["value"]
    assert http.get(f"/ehr/{ehr_id}").json() == document
    minimal = http.post("/ehr")
    assert minimal.status_code == 201 and minimal.content == b""
    given = str(uuid.uuid4())
    assert http.put(f"/ehr/{given}", json=ehr_status("P2")).status_code == 201
    exists = http.put(f"/ehr/{given}", json=ehr_status("P3"))
    assert (
        exists.status_code == 409
        and exists.json()["message"] == f"EHR with id {given} already exists"
    )
    assert http.put("/ehr/not-a-uuid").status_code == 400
    assert http.get("/ehr/not-a-uuid").status_code == 400
    assert http.get(f"/ehr/{uuid.uuid4()}").status_code == 404


def test_one_ehr_per_subject_and_lookup(http: httpx.Client) -> None:
    first = new_ehr(http, "P1")
    second = http.post("/ehr", json=ehr_status("P1"))
    assert second.status_code == 409
    assert second.json()["message"] == (
        f"Supplied partyId[P1] is used by a different EHR in the same partyNamespace[{NS}]."
    )
    found = http.get("/ehr", params={"subject_id": "P1", "subject_namespace": NS})
    assert found.status_code == 200 and found.json()["ehr_id"]["value"] == first
    missing = http.get("/ehr", params={"subject_id": "P2", "subject_namespace": NS})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "Not Found",
        "message": "No EHR with supplied subject parameters found",
    }
    assert http.get("/ehr", params={"subject_id": "P1"}).status_code == 400


@pytest.mark.parametrize(
    ("namespace", "accepted"),
    [
        (NS, True),
        ("urn:cwsctl:external-id:facility:north-wing_2", True),
        ("a&b+c?d/e", True),
        ("urn:oid:2.16.840.1", False),
        ("has space", False),
        ("1starts-with-digit", False),
        ("a#b", False),
        ("ns:facility:10.0", False),
    ],
)
def test_subject_namespace_pattern(bare: httpx.Client, namespace: str, accepted: bool) -> None:
    answer = bare.post("/ehr", json=ehr_status("P1", namespace))
    assert answer.status_code == (201 if accepted else 400)
    if not accepted:
        assert "[a-zA-Z][a-zA-Z0-9-_:/&+?]*" in answer.json()["message"]
        ehr_id = unquote(bare.post("/ehr", json=ehr_status("P2")).headers["etag"])
        v1 = unquote(bare.get(f"/ehr/{ehr_id}/ehr_status").headers["etag"])
        update = bare.put(
            f"/ehr/{ehr_id}/ehr_status", json=ehr_status("P2", namespace), headers={"If-Match": v1}
        )
        assert update.status_code == 400


def test_v0_1_proposal_body_is_refused(bare: httpx.Client) -> None:
    answer = bare.post("/ehr", json={"ehr_status": ehr_status("P1"), "commit_audit": {}})
    assert answer.status_code == 400 and "EHR_STATUS itself" in answer.json()["message"]
    assert bare.post("/ehr", content=b"{", headers=JSON_TYPE).status_code == 400
    assert (
        bare.post("/ehr", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    )


# -- AQL -----------------------------------------------------------------------------------------
AQL_SETTINGS = [
    pytest.param(("reject", None), id="reject"),
    pytest.param(("reject", 500), id="reject-max500"),
    pytest.param(("min-fetch", None), id="min-fetch"),
    pytest.param(("min-fetch", 500), id="min-fetch-max500"),
]


@pytest.fixture(params=AQL_SETTINGS)
def aql_server(request: pytest.FixtureRequest, make_openehr_sandbox: Any) -> Any:
    precedence, max_fetch = request.param
    return make_openehr_sandbox(fetch_precedence=precedence, max_fetch=max_fetch)


def test_aql_limit_rules(aql_server: Any) -> None:
    q = "SELECT e/ehr_id/value FROM EHR e"
    with httpx.Client(base_url=aql_server.base_url, timeout=10) as http:
        ehrs = [new_ehr(http, f"S{n}") for n in range(7)]
        everything = query(http, q).json()
        assert [r[0] for r in everything["rows"]] == ehrs  # no default limit: every row
        assert "fetch" not in everything["meta"] and "offset" not in everything["meta"]
        assert everything["meta"]["resultsize"] == 7
        assert everything["meta"].get("max-fetch") == aql_server.max_fetch
        offset_only = query(http, q, offset=2)
        assert offset_only.status_code == 422
        assert offset_only.json() == {
            "error": "Unprocessable Entity",
            "message": "Query parameter for offset provided, but no fetch parameter",
        }
        seen: list[str] = []
        for offset in range(0, 8, 3):
            page = query(http, q, offset=offset, fetch=3).json()
            assert (page["meta"]["fetch"], page["meta"]["offset"]) == (3, offset)
            seen.extend(r[0] for r in page["rows"])
        assert seen == ehrs
        as_strings = http.get("/query/aql", params={"q": q, "offset": "5", "fetch": "10"}).json()
        assert [r[0] for r in as_strings["rows"]] == ehrs[5:]
        big = query(http, q, fetch=501)
        if aql_server.max_fetch == 500:
            assert big.status_code == 422
            assert big.json()["message"] == "Fetch parameter 501 exceeds maximum fetch 500"
            assert query(http, q, fetch=500).status_code == 200
        else:
            assert big.status_code == 200 and len(big.json()["rows"]) == 7
        limited = query(http, q + " LIMIT 4").json()
        assert len(limited["rows"]) == 4
        assert (limited["meta"]["fetch"], limited["meta"]["offset"]) == (4, 0)
        limit_offset = query(http, q + " LIMIT 2 OFFSET 5").json()
        assert [r[0] for r in limit_offset["rows"]] == ehrs[5:7]
        both = query(http, q + " LIMIT 4", fetch=2)
        with_offset = query(http, q + " LIMIT 4", fetch=3, offset=2)
        aql_offset = query(http, q + " LIMIT 4 OFFSET 1", fetch=2)
        if aql_server.fetch_precedence == "reject":
            for refused in (both, with_offset, aql_offset):
                assert refused.status_code == 422
                assert refused.json()["message"] == (
                    "Query contains a LIMIT clause, fetch and offset parameters must not be used "
                    "(with fetch precedence REJECT)"
                )
        else:
            assert [r[0] for r in both.json()["rows"]] == ehrs[:2]
            assert [r[0] for r in with_offset.json()["rows"]] == ehrs[2:5]  # min(4, 3) from 2
            assert query(http, q + " LIMIT 2", fetch=5).json()["meta"]["fetch"] == 2
            assert aql_offset.status_code == 422
            assert aql_offset.json()["message"] == (
                "Query contains a OFFSET clause, fetch parameter must not be used (with fetch "
                "precedence MIN_FETCH)"
            )
        assert query(http, q + " LIMIT 4", offset=1).status_code == 422  # offset without fetch


def test_aql_default_limit(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(default_limit=3)
    with httpx.Client(base_url=server.base_url) as http:
        for n in range(5):
            new_ehr(http, f"S{n}")
        answer = query(http, "SELECT e/ehr_id/value FROM EHR e").json()
        assert len(answer["rows"]) == 3
        assert answer["meta"]["fetch"] == 3 and answer["meta"]["default-limit"] == 3
        assert len(query(http, "SELECT e/ehr_id/value FROM EHR e", fetch=5).json()["rows"]) == 5


def test_aql_subset_and_meta(http: httpx.Client) -> None:
    ehrs = [new_ehr(http, f"S{n}") for n in range(3)]
    uids = {(n, m): post_composition(http, ehrs[n], f"c{n}{m}") for n in range(2) for m in range(2)}
    deleted = post_composition(http, ehrs[2], "deleted one")
    assert http.delete(f"/ehr/{ehrs[2]}/composition/{deleted}").status_code == 204
    result = query(http, "select e/ehr_id/value from EHR e").json()
    assert result["columns"] == [{"name": "#0", "path": "/ehr_id/value"}]
    assert result["rows"] == [[e] for e in ehrs]
    meta = result["meta"]
    assert meta["_type"] == "RESULTSET" and meta["_schema_version"] == "1.0.3"
    assert meta["_href"].endswith("/query/aql") and meta["_created"]
    assert meta["_executed_aql"] and "_generator" not in meta
    by_subject = query(
        http,
        "SELECT e/ehr_id/value AS id FROM EHR e WHERE e/ehr_status/subject/external_ref/id/value"
        " = $sid AND e/ehr_status/subject/external_ref/namespace = $ns",
        query_parameters={"sid": "S1", "ns": NS},
    ).json()
    assert by_subject["rows"] == [[ehrs[1]]] and "'S1'" in by_subject["meta"]["_executed_aql"]
    q = (
        "SELECT c/uid/value, c/name/value FROM EHR e CONTAINS COMPOSITION c"
        " WHERE e/ehr_id/value = $ehr_id ORDER BY c/name/value"
    )
    rows = query(http, q, query_parameters={"ehr_id": ehrs[0]}).json()["rows"]
    assert rows == [[uids[(0, 0)], "c00"], [uids[(0, 1)], "c01"]]
    as_ehrbase = http.get("/query/aql", params={"q": q, "ehr_id": ehrs[1]}).json()
    assert [r[1] for r in as_ehrbase["rows"]] == ["c10", "c11"]
    names = query(http, "SELECT c/name/value FROM COMPOSITION c ORDER BY c/name/value DESC").json()
    assert names["rows"] == [["c11"], ["c10"], ["c01"], ["c00"]]  # the deleted one is not seen


@pytest.mark.parametrize(
    "aql",
    [
        "SELECT e/ehr_id/value FROM EHR e WHERE e/ehr_id/value = 'a' OR e/ehr_id/value = 'b'",
        "SELECT count(e/ehr_id/value) FROM EHR e",
        "SELECT DISTINCT e/ehr_id/value FROM EHR e",
        "SELECT o/data FROM EHR e CONTAINS OBSERVATION o",
        "SELECT e/ehr_id/value FROM EHR e OFFSET 2",
        "SELECT TOP 5 e/ehr_id/value FROM EHR e",
    ],
)
def test_aql_outside_the_subset_is_400(bare: httpx.Client, aql: str) -> None:
    answer = query(bare, aql)
    assert answer.status_code == 400 and "not supported by the sandbox" in answer.json()["message"]


def test_aql_request_errors(bare: httpx.Client) -> None:
    missing = query(bare, "SELECT e/ehr_id/value FROM EHR e WHERE e/ehr_id/value = $nope")
    assert missing.status_code == 400 and "$nope" in missing.json()["message"]
    assert query(bare, "").status_code == 400
    assert bare.post("/query/aql", json={"q": ["SELECT"]}).status_code == 400
    assert bare.post("/query/aql", json=["SELECT"]).status_code == 400
    assert query(bare, "SELECT e FROM EHR e", offset="x", fetch=1).status_code == 400
    text = bare.post(
        "/query/aql",
        content=b'{"q": "SELECT e FROM EHR e"}',
        headers={"Content-Type": "text/plain"},
    )
    assert text.status_code == 415


# -- status, auth, errors, faults, log, restart, CLI ------------------------------------------
def test_status_endpoint_and_unknown_routes(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(basic_auth=("alice", "secret"))
    assert httpx.get(server.status_url).status_code == 401  # behind the same auth
    status = httpx.get(server.status_url, auth=("alice", "secret")).json()
    assert status["ehrbase_version"] == "2.31.0"
    assert {
        "openehr_sdk_version",
        "archie_version",
        "jvm_version",
        "os_version",
        "postgres_version",
    } <= set(status)
    auth = ("alice", "secret")
    unknown = httpx.get(f"{server.base_url}/nowhere", auth=auth)
    assert unknown.status_code == 404 and set(unknown.json()) == {"error", "message"}
    assert httpx.delete(f"{server.base_url}/ehr", auth=auth).status_code == 405
    assert httpx.request("OPTIONS", server.base_url, auth=auth).status_code in (404, 405)


def test_basic_auth(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(basic_auth=("alice", "pa:ss wörd"))
    base = server.base_url
    refused = httpx.post(f"{base}/ehr", json=ehr_status("P1"))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Basic realm="openEHR"')
    # Spring Security's body: no `message` for a client to come to rely on.
    assert set(refused.json()) == {"timestamp", "status", "error", "path"}
    assert httpx.post(f"{base}/ehr", auth=("alice", "wrong")).status_code == 401
    assert httpx.get(f"{base}{ADL}", headers={"Authorization": "Bearer x"}).status_code == 401
    assert server.count_ehrs() == 0
    auth = httpx.BasicAuth("alice", "pa:ss wörd")
    assert httpx.post(f"{base}/ehr", json=ehr_status("P1"), auth=auth).status_code == 201
    server.basic_auth = None
    assert httpx.post(f"{base}/ehr", json=ehr_status("P2")).status_code == 201


def test_bearer_auth_reasons(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(bearer_tokens={"good-token", "other"})
    base = server.base_url

    def get(token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{base}{ADL}", headers=headers)

    none = get(None)
    assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
    wrong = get("forged")
    assert wrong.status_code == 401 and wrong.content == b""
    challenge = wrong.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert "Malformed token" in challenge
    assert get("good-token").status_code == 200
    server.expire_token("good-token")
    expired = get("good-token")
    assert expired.status_code == 401
    assert (
        'error_description="An error occurred while attempting to decode the Jwt: Jwt expired at '
        in (expired.headers["www-authenticate"])
    )
    assert get("other").status_code == 200
    with pytest.raises(ValueError, match="exclude"):
        make_openehr_sandbox(bearer_tokens={"t"}, basic_auth=("u", "p"))


def test_faults_hit_ehr_routes_only(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(error_rate=1.0)
    base = server.base_url
    failed = httpx.post(f"{base}/ehr", json=ehr_status("P1"))
    assert failed.status_code == 500 and server.count_ehrs() == 0
    assert httpx.post(f"{base}/query/aql", json={"q": "SELECT e FROM EHR e"}).status_code == 200
    assert httpx.get(f"{base}{ADL}").status_code == 200
    assert httpx.get(server.status_url).status_code == 200
    from cwsctl.sandbox.faults import Faults

    server.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{base}/ehr", json=ehr_status("P1"), headers=REPRESENTATION)
    assert server.count_ehrs() == 1  # processed, then the answer was cut off


def test_access_log_has_no_credentials_bodies_or_queries(
    make_openehr_sandbox: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_openehr_sandbox(basic_auth=("alice", "hunter2-secret"))
    auth = httpx.BasicAuth("alice", "hunter2-secret")
    base = server.base_url
    capsys.readouterr()
    httpx.post(f"{base}/ehr", json=ehr_status("SUBJECT-PHI-123"), auth=auth)
    httpx.get(
        f"{base}/ehr", params={"subject_id": "SUBJECT-PHI-123", "subject_namespace": NS}, auth=auth
    )
    httpx.get(
        f"{base}/query/aql", params={"q": "SELECT e FROM EHR e WHERE e/x = 'PHI-Q'"}, auth=auth
    )
    httpx.get(f"{base}/ehr", auth=("alice", "wrong-guess-secret"))
    log = capsys.readouterr().err
    lines = [line for line in log.splitlines() if line.startswith("cwsctl-sandbox:")]
    assert len(lines) == 4
    assert "POST /ehrbase/rest/openehr/v1/ehr 201" in log and "user=alice" in log
    for secret in (
        "hunter2",
        "wrong-guess",
        "SUBJECT-PHI",
        "PHI-Q",
        "subject_id",
        "Basic ",
        "YWxp",
    ):
        assert secret not in log


def test_state_and_templates_survive_a_restart(tmp_path: Any) -> None:
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer

    first = OpenEhrSandboxServer(
        tmp_path, faults=Faults(), access_log=False, templates=[vital_signs_opt()]
    )
    with first as server, httpx.Client(base_url=server.base_url) as http:
        ehr_id = new_ehr(http, "P1")
        v1 = post_composition(http, ehr_id)
    second = OpenEhrSandboxServer(tmp_path, faults=Faults(), access_log=False)
    with second as server, httpx.Client(base_url=server.base_url) as http:
        assert server.template_ids() == [TID]
        assert http.post("/ehr", json=ehr_status("P1")).status_code == 409
        answer = put_composition(http, ehr_id, v1.split("::")[0], "later", v1)
        assert answer.status_code == 204 and unquote(answer.headers["etag"]).endswith("::2")
    assert (tmp_path / "openehr.db").stat().st_mode & 0o077 == 0


def test_server_settings_are_checked(tmp_path: Any) -> None:
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer

    for bad in ({"if_match": "quoted"}, {"fetch_precedence": "MIN_FETCH"}, {"max_fetch": 0},
                {"default_limit": True}, {"bearer_tokens": set()}):  # fmt: skip
        with pytest.raises(ValueError):
            OpenEhrSandboxServer(tmp_path, **bad)  # type: ignore[arg-type]


def test_serve_kind_openehr_with_its_switches(tmp_path: Any) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("token-not-on-the-command-line\n")
    args = ("--kind", "openehr", "--data-dir", str(tmp_path / "ehr"), "--if-match", "spec",
            "--max-fetch", "500", "--fetch-precedence", "min-fetch", "--default-limit", "50",
            "--bearer-token-file", str(tokens))  # fmt: skip
    with serve_sandbox(tmp_path, *args, ready="Press Ctrl-C") as served:
        base = f"{served.url}/ehrbase/rest/openehr/v1"
        assert f"Base URL (profile --url): {base}" in served.startup
        assert "EHRbase 2.32.0" in served.startup and "max fetch 500" in served.startup
        assert "No templates uploaded yet" in served.startup
        assert httpx.get(f"{base}{ADL}").status_code == 401
        auth = {"Authorization": "Bearer token-not-on-the-command-line"}
        status = httpx.get(f"{served.url}/ehrbase/rest/status", headers=auth)
        assert status.json()["ehrbase_version"] == "2.32.0"
        answer = httpx.post(
            f"{base}/query/aql", json={"q": "SELECT e FROM EHR e", "fetch": 501}, headers=auth
        )
        assert answer.status_code == 422
        assert (
            httpx.post(f"{base}/query/aql", json={"q": "SELECT e FROM EHR e"}, headers=auth).json()[
                "meta"
            ]["default-limit"]
            == 50
        )
    assert served.returncode == 0
    assert "token-not-on-the-command-line" not in served.startup + served.log


def test_serve_kind_openehr_with_basic_auth_file(tmp_path: Any) -> None:
    secret_file = tmp_path / "auth"
    secret_file.write_text("loader:not-on-the-command-line\n")
    args = (
        "--kind",
        "openehr",
        "--data-dir",
        str(tmp_path / "ehr"),
        "--basic-auth-file",
        str(secret_file),
    )
    with serve_sandbox(tmp_path, *args, ready="Press Ctrl-C") as served:
        base = f"{served.url}/ehrbase/rest/openehr/v1"
        assert "EHRbase 2.31.0" in served.startup
        assert httpx.post(f"{base}/ehr").status_code == 401
        created = httpx.post(
            f"{base}/ehr", json=ehr_status("P1"), auth=("loader", "not-on-the-command-line")
        )
        assert created.status_code == 201
    assert served.returncode == 0 and "user=loader" in served.log
    assert "not-on-the-command-line" not in served.startup + served.log


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "exactly one user:password line, not 0"),
        ("a:SECRET1\nc:SECRET2\n", "exactly one user:password line, not 2"),
        ("SECRET-no-colon\n", "must be user:password"),
        (":SECRET\n", "must be user:password"),
    ],
)
def test_bad_basic_auth_file(tmp_path: Any, content: str, message: str) -> None:
    from cwsctl.core.errors import InputError
    from cwsctl.targets.openehr.sandbox.app import read_basic_auth_file

    path = tmp_path / "auth"
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        read_basic_auth_file(path)
    assert message in caught.value.message and "SECRET" not in caught.value.message


def test_bad_bearer_token_file(tmp_path: Any) -> None:
    from cwsctl.core.errors import InputError
    from cwsctl.targets.openehr.sandbox.app import read_bearer_token_file

    path = tmp_path / "tokens"
    path.write_text("\n\n")
    with pytest.raises(InputError, match="no token"):
        read_bearer_token_file(path)
    path.write_text("SECRET with space\n")
    with pytest.raises(InputError) as caught:
        read_bearer_token_file(path)
    assert "SECRET" not in caught.value.message
    path.write_text("a\nb\n\n")
    assert read_bearer_token_file(path) == {"a", "b"}


@pytest.mark.parametrize(
    "option", [("--basic-auth-file", "FILE"), ("--if-match", "spec"), ("--max-fetch", "500")]
)
def test_openehr_options_only_for_openehr(tmp_path: Any, option: tuple[str, str]) -> None:
    name, value = option
    if value == "FILE":
        (tmp_path / "auth").write_text("u:p\n")
        value = str(tmp_path / "auth")
    env = {**os.environ, "CWSCTL_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "cwsctl", "sandbox", "serve", "--kind", "cws", name, value],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{name} applies only to --kind openehr" in result.stderr
