"""The openEHR flavour of the sandbox, spoken to directly with httpx (no cwsctl client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from tests.sandbox_plugin import serve_sandbox

pytest.importorskip("starlette")

SYSTEM = "cwsctl-sandbox"
NS = "urn:cwsctl:external-id:facility:10000"
REPRESENTATION = {"Prefer": "return=representation"}


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


def composition(name: str, template: str = "vitals.v1", archetype: str = "encounter") -> bytes:
    document = {
        "_type": "COMPOSITION",
        "name": {"_type": "DV_TEXT", "value": name},
        "archetype_node_id": f"openEHR-EHR-COMPOSITION.{archetype}.v1",
        "archetype_details": {
            "archetype_id": {"value": f"openEHR-EHR-COMPOSITION.{archetype}.v1"},
            "template_id": {"value": template},
            "rm_version": "1.0.4",
        },
        "language": {"terminology_id": {"value": "ISO_639-1"}, "code_string": "en"},
        "composer": {"_type": "PARTY_SELF"},
    }
    return json.dumps(document, indent=1).encode()


def unquote(etag: str) -> str:
    assert etag.startswith('"') and etag.endswith('"'), etag
    return etag[1:-1]


@pytest.fixture
def http(openehr_sandbox: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=openehr_sandbox.base_url, timeout=10) as client:
        yield client


def new_ehr(http: httpx.Client, subject_id: str | None = None) -> str:
    subject_id = subject_id or uuid.uuid4().hex
    answer = http.post("/ehr", json=ehr_status(subject_id))
    assert answer.status_code == 201, answer.text
    return unquote(answer.headers["etag"])


def post_composition(http: httpx.Client, ehr_id: str, name: str = "Vitals", **kw: Any) -> str:
    answer = http.post(
        f"/ehr/{ehr_id}/composition",
        content=composition(name, **kw),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    return unquote(answer.headers["etag"])


def put_composition(
    http: httpx.Client, ehr_id: str, object_id: str, name: str, if_match: str | None, **headers: str
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **headers}
    if if_match is not None:
        sent["If-Match"] = if_match
    return http.put(
        f"/ehr/{ehr_id}/composition/{object_id}", content=composition(name), headers=sent
    )


def query(http: httpx.Client, q: str, **body: Any) -> httpx.Response:
    return http.post("/query/aql", json={"q": q, **body})


# -- EHR ------------------------------------------------------------------------------------------
def test_post_ehr_answers_per_prefer(openehr_sandbox: Any, http: httpx.Client) -> None:
    answer = http.post("/ehr", json=ehr_status("P1"), headers=REPRESENTATION)
    assert answer.status_code == 201
    ehr_id = unquote(answer.headers["etag"])
    assert uuid.UUID(ehr_id)
    assert answer.headers["location"] == f"{openehr_sandbox.base_url}/ehr/{ehr_id}"
    assert answer.headers["last-modified"].endswith("GMT")
    body = answer.json()
    assert body["system_id"] == {"value": SYSTEM}
    assert body["ehr_id"] == {"value": ehr_id}
    status = body["ehr_status"]
    object_id, system, number = status["uid"]["value"].split("::")
    assert (system, number) == (SYSTEM, "1") and uuid.UUID(object_id)
    assert status["subject"]["_type"] == "PARTY_SELF"
    assert status["subject"]["external_ref"]["id"]["value"] == "P1"
    assert datetime.fromisoformat(body["time_created"]["value"]).tzinfo is not None

    minimal = http.post("/ehr", json=ehr_status("P2"))
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["etag"] != answer.headers["etag"]
    empty = http.post("/ehr")  # no body at all: an EHR with a default EHR_STATUS
    assert empty.status_code == 201
    got = http.get(f"/ehr/{unquote(empty.headers['etag'])}")
    assert got.status_code == 200
    assert got.json()["ehr_status"]["is_queryable"] is True
    assert openehr_sandbox.count_ehrs() == 3


def test_put_ehr_with_given_id(openehr_sandbox: Any, http: httpx.Client) -> None:
    ehr_id = str(uuid.uuid4())
    answer = http.put(f"/ehr/{ehr_id}", json=ehr_status("P1"), headers=REPRESENTATION)
    assert answer.status_code == 201
    assert answer.json()["ehr_id"]["value"] == ehr_id
    assert answer.headers["etag"] == f'"{ehr_id}"'
    assert http.get(f"/ehr/{ehr_id}").json()["ehr_id"]["value"] == ehr_id
    again = http.put(f"/ehr/{ehr_id}", json=ehr_status("P9"))
    assert again.status_code == 409 and again.json()["error"] == "Conflict"
    assert http.put("/ehr/not-a-uuid").status_code == 400
    assert http.get(f"/ehr/{uuid.uuid4()}").status_code == 404
    assert http.get("/ehr/not-a-uuid").status_code == 404
    assert openehr_sandbox.count_ehrs() == 1


def test_one_ehr_per_subject_and_lookup(openehr_sandbox: Any, http: httpx.Client) -> None:
    first = new_ehr(http, "P1")
    second = http.post("/ehr", json=ehr_status("P1"), headers=REPRESENTATION)
    assert second.status_code == 409
    assert "P1" in second.json()["message"] and second.json()["error"] == "Conflict"
    assert http.put(f"/ehr/{uuid.uuid4()}", json=ehr_status("P1")).status_code == 409
    other_namespace = new_ehr_in(http, "P1", "urn:other")
    assert other_namespace != first
    assert openehr_sandbox.count_ehrs() == 2

    found = http.get("/ehr", params={"subject_id": "P1", "subject_namespace": NS})
    assert found.status_code == 200 and found.json()["ehr_id"]["value"] == first
    assert found.headers["etag"] == f'"{first}"'
    missing = http.get("/ehr", params={"subject_id": "P2", "subject_namespace": NS})
    assert missing.status_code == 404 and missing.json()["error"] == "Not Found"
    assert http.get("/ehr", params={"subject_id": "P1"}).status_code == 400


def new_ehr_in(http: httpx.Client, subject_id: str, namespace: str) -> str:
    answer = http.post("/ehr", json=ehr_status(subject_id, namespace))
    assert answer.status_code == 201
    return unquote(answer.headers["etag"])


def test_v0_1_proposal_body_is_refused_with_a_hint(http: httpx.Client) -> None:
    answer = http.post("/ehr", json={"ehr_status": ehr_status("P1"), "commit_audit": {}})
    assert answer.status_code == 400
    assert "EHR_STATUS itself" in answer.json()["message"]
    wrong = http.post("/ehr", content=b"{", headers={"Content-Type": "application/json"})
    assert wrong.status_code == 400
    text = http.post("/ehr", content=b"x", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415


# -- EHR_STATUS -----------------------------------------------------------------------------------
def test_ehr_status_versions_and_stale_if_match(http: httpx.Client) -> None:
    ehr_id = new_ehr(http, "P1")
    first = http.get(f"/ehr/{ehr_id}/ehr_status")
    assert first.status_code == 200
    v1 = unquote(first.headers["etag"])
    assert first.json()["uid"]["value"] == v1 and v1.endswith(f"::{SYSTEM}::1")
    assert first.headers["location"].endswith(f"/ehr/{ehr_id}/ehr_status/{v1}")
    time.sleep(0.01)
    between = datetime.now(timezone.utc).isoformat()
    time.sleep(0.01)

    updated = http.put(
        f"/ehr/{ehr_id}/ehr_status",
        json=ehr_status("P1", is_queryable=False),
        headers={"If-Match": f'"{v1}"', **REPRESENTATION},
    )
    assert updated.status_code == 200
    v2 = unquote(updated.headers["etag"])
    assert v2 == v1[:-1] + "2" and updated.json()["is_queryable"] is False
    minimal = http.put(f"/ehr/{ehr_id}/ehr_status", json=ehr_status("P1"), headers={"If-Match": v2})
    assert minimal.status_code == 204 and minimal.content == b""
    v3 = unquote(minimal.headers["etag"])
    assert v3.endswith("::3")

    stale = http.put(f"/ehr/{ehr_id}/ehr_status", json=ehr_status("P1"), headers={"If-Match": v1})
    assert stale.status_code == 412
    assert unquote(stale.headers["etag"]) == v3
    assert stale.headers["location"].endswith(f"/ehr_status/{v3}")
    assert stale.json()["latest_version_uid"] == v3 and v3 in stale.json()["message"]
    assert http.put(f"/ehr/{ehr_id}/ehr_status", json=ehr_status("P1")).status_code == 400

    old = http.get(f"/ehr/{ehr_id}/ehr_status/{v1}")
    assert old.status_code == 200 and old.json()["is_queryable"] is True
    at = http.get(f"/ehr/{ehr_id}/ehr_status", params={"version_at_time": between})
    assert unquote(at.headers["etag"]) == v1
    latest = http.get(f"/ehr/{ehr_id}/ehr_status")
    assert unquote(latest.headers["etag"]) == v3
    before = http.get(f"/ehr/{ehr_id}/ehr_status", params={"version_at_time": "2000-01-01T00:00Z"})
    assert before.status_code == 404
    assert http.get(f"/ehr/{ehr_id}/ehr_status", params={"version_at_time": "x"}).status_code == 400
    assert http.get(f"/ehr/{ehr_id}/ehr_status/{v1[:-1]}9").status_code == 404
    assert http.get(f"/ehr/{uuid.uuid4()}/ehr_status").status_code == 404


# -- compositions ---------------------------------------------------------------------------------
def test_create_and_get_composition(openehr_sandbox: Any, http: httpx.Client) -> None:
    ehr_id = new_ehr(http)
    sent = composition("Vitals")
    created = http.post(
        f"/ehr/{ehr_id}/composition",
        content=sent,
        headers={"Content-Type": "application/json", "openEHR-TEMPLATE_ID": "vitals.v1"},
    )
    assert created.status_code == 201 and created.content == b""
    v1 = unquote(created.headers["etag"])
    object_id, system, number = v1.split("::")
    assert (system, number) == (SYSTEM, "1")
    location = f"{openehr_sandbox.base_url}/ehr/{ehr_id}/composition/{v1}"
    assert created.headers["location"] == location

    for uid in (v1, object_id):
        got = http.get(f"/ehr/{ehr_id}/composition/{uid}")
        assert got.status_code == 200
        assert unquote(got.headers["etag"]) == v1
        assert got.headers["location"] == location
        assert got.headers["last-modified"] == created.headers["last-modified"]
        document = got.json()
        assert document["uid"] == {"_type": "OBJECT_VERSION_ID", "value": v1}
        assert {k: v for k, v in document.items() if k != "uid"} == json.loads(sent)

    represented = http.post(
        f"/ehr/{ehr_id}/composition",
        content=composition("Labs"),
        headers={"Content-Type": "application/json", **REPRESENTATION},
    )
    assert represented.status_code == 201
    assert represented.json()["name"]["value"] == "Labs"
    assert represented.json()["uid"]["value"] == unquote(represented.headers["etag"])

    assert http.get(f"/ehr/{ehr_id}/composition/{uuid.uuid4()}").status_code == 404
    assert http.get(f"/ehr/{ehr_id}/composition/{object_id}::{SYSTEM}::7").status_code == 404
    assert http.get(f"/ehr/{uuid.uuid4()}/composition/{object_id}").status_code == 404
    other_ehr = new_ehr(http)
    assert http.get(f"/ehr/{other_ehr}/composition/{object_id}").status_code == 404
    post = f"/ehr/{ehr_id}/composition"
    json_type = {"Content-Type": "application/json"}
    assert http.post(post, content=b"[]", headers=json_type).status_code == 400
    assert http.post(post, content=b'{"_type":"OBSERVATION"}', headers=json_type).status_code == 400
    assert http.post(post, content=b'{"x": NaN}', headers=json_type).status_code == 400
    assert http.post(post, content=sent, headers={"Content-Type": "text/plain"}).status_code == 415
    mismatch = http.post(post, content=sent, headers={**json_type, "openEHR-TEMPLATE_ID": "other"})
    assert mismatch.status_code == 422
    assert (
        http.post(f"/ehr/{uuid.uuid4()}/composition", content=sent, headers=json_type).status_code
        == 404
    )


def test_updates_make_versions_and_stale_if_match_is_412(http: httpx.Client) -> None:
    ehr_id = new_ehr(http)
    v1 = post_composition(http, ehr_id, "first")
    object_id = v1.split("::")[0]
    time.sleep(0.01)
    after_v1 = datetime.now(timezone.utc).isoformat()
    time.sleep(0.01)

    second = put_composition(http, ehr_id, object_id, "second", f'"{v1}"', **REPRESENTATION)
    assert second.status_code == 200
    v2 = unquote(second.headers["etag"])
    assert v2 == f"{object_id}::{SYSTEM}::2"
    assert second.headers["location"].endswith(f"/composition/{v2}")
    assert second.json()["name"]["value"] == "second" and second.json()["uid"]["value"] == v2
    third = put_composition(http, ehr_id, object_id, "third", v2)  # quotes are optional
    assert third.status_code == 204 and third.content == b""
    v3 = unquote(third.headers["etag"])
    assert v3.endswith("::3")

    stale = put_composition(http, ehr_id, object_id, "lost", f'"{v1}"')
    assert stale.status_code == 412
    assert unquote(stale.headers["etag"]) == v3
    assert stale.headers["location"].endswith(f"/composition/{v3}")
    assert stale.json()["latest_version_uid"] == v3 and v3 in stale.json()["message"]
    missing = put_composition(http, ehr_id, object_id, "blind", None)
    assert missing.status_code == 400 and "If-Match" in missing.json()["message"]
    foreign = put_composition(http, ehr_id, object_id, "x", f"{object_id}::elsewhere::3")
    assert foreign.status_code == 412
    assert put_composition(http, ehr_id, object_id, "x", "garbage").status_code == 400
    other = f"{uuid.uuid4()}::{SYSTEM}::3"
    assert put_composition(http, ehr_id, object_id, "x", other).status_code == 400
    assert put_composition(http, ehr_id, str(uuid.uuid4()), "x", v3).status_code == 404
    assert put_composition(http, ehr_id, v3, "x", v3).status_code == 400  # path: object uid

    def name_of(uid: str, **params: str) -> str:
        answer = http.get(f"/ehr/{ehr_id}/composition/{uid}", params=params)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["name"]["value"])

    assert [name_of(v) for v in (v1, v2, v3)] == ["first", "second", "third"]
    assert name_of(object_id) == "third"
    assert name_of(object_id, version_at_time=after_v1) == "first"
    assert name_of(object_id, version_at_time=after_v1.replace("+00:00", "Z")) == "first"
    early = {"version_at_time": "2001-01-01T00:00:00Z"}
    assert http.get(f"/ehr/{ehr_id}/composition/{object_id}", params=early).status_code == 404
    assert http.get(f"/ehr/{ehr_id}/composition/{v1}", params=early).status_code == 400


def test_concurrent_updaters_exactly_one_wins(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox()
    with httpx.Client(base_url=server.base_url, timeout=10) as setup:
        ehr_id = new_ehr(setup)
        v1 = post_composition(setup, ehr_id)
    object_id = v1.split("::")[0]
    racers = 8
    barrier = threading.Barrier(racers)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def update(n: int) -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            barrier.wait()
            answer = put_composition(client, ehr_id, object_id, f"writer {n}", f'"{v1}"')
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=update, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [204] + [412] * (racers - 1)
    winner = next(a for a in answers if a.status_code == 204)
    v2 = unquote(winner.headers["etag"])
    assert v2.endswith("::2")
    for loser in (a for a in answers if a.status_code == 412):
        assert loser.json()["latest_version_uid"] == v2
    with httpx.Client(base_url=server.base_url) as check:
        history = check.get(f"/ehr/{ehr_id}/versioned_composition/{object_id}/revision_history")
    assert [item["version_id"]["value"][-1] for item in history.json()] == ["1", "2"]


def test_delete_history_and_versioned_composition(http: httpx.Client) -> None:
    ehr_id = new_ehr(http)
    v1 = post_composition(http, ehr_id, "first")
    object_id = v1.split("::")[0]
    v2 = unquote(put_composition(http, ehr_id, object_id, "second", v1).headers["etag"])

    assert (
        http.delete(f"/ehr/{ehr_id}/composition/{object_id}").status_code == 400
    )  # needs a version
    stale = http.delete(f"/ehr/{ehr_id}/composition/{v1}")
    assert stale.status_code == 409
    assert unquote(stale.headers["etag"]) == v2 and stale.json()["latest_version_uid"] == v2
    deleted = http.delete(f"/ehr/{ehr_id}/composition/{v2}")
    assert deleted.status_code == 204
    v3 = unquote(deleted.headers["etag"])
    assert v3 == f"{object_id}::{SYSTEM}::3"
    assert deleted.headers["location"].endswith(f"/composition/{v3}")

    gone = http.get(f"/ehr/{ehr_id}/composition/{object_id}")
    assert gone.status_code == 204 and unquote(gone.headers["etag"]) == v3
    assert http.get(f"/ehr/{ehr_id}/composition/{v2}").json()["name"]["value"] == "second"
    assert http.delete(f"/ehr/{ehr_id}/composition/{v3}").status_code == 400  # already deleted
    unknown = f"{uuid.uuid4()}::{SYSTEM}::1"
    assert http.delete(f"/ehr/{ehr_id}/composition/{unknown}").status_code == 404

    history = http.get(f"/ehr/{ehr_id}/versioned_composition/{object_id}/revision_history")
    assert history.status_code == 200
    items = history.json()
    assert [i["version_id"]["value"] for i in items] == [v1, v2, v3]
    changes = [
        (
            i["audits"][0]["change_type"]["value"],
            i["audits"][0]["change_type"]["defining_code"]["code_string"],
        )
        for i in items
    ]
    assert changes == [("creation", "249"), ("modification", "251"), ("deleted", "523")]
    times = [i["audits"][0]["time_committed"]["value"] for i in items]
    assert times == sorted(times) and len(set(times)) == 3

    versioned = http.get(f"/ehr/{ehr_id}/versioned_composition/{object_id}")
    assert versioned.json()["uid"]["value"] == object_id
    assert versioned.json()["owner_id"]["id"]["value"] == ehr_id
    assert versioned.json()["time_created"]["value"] == times[0]
    missing = f"/ehr/{ehr_id}/versioned_composition/{uuid.uuid4()}/revision_history"
    assert http.get(missing).status_code == 404

    revived = put_composition(http, ehr_id, object_id, "again", v3)
    assert revived.status_code == 204 and unquote(revived.headers["etag"]).endswith("::4")


# -- AQL ------------------------------------------------------------------------------------------
def test_aql_subset(http: httpx.Client) -> None:
    ehrs = [new_ehr(http, f"S{n}") for n in range(3)]
    uids = {}
    for n, ehr_id in enumerate(ehrs[:2]):
        for m in range(2):
            uids[(n, m)] = post_composition(
                http, ehr_id, f"c{n}{m}", archetype="encounter" if m == 0 else "report"
            )
    deleted = post_composition(http, ehrs[2], "deleted one")
    assert http.delete(f"/ehr/{ehrs[2]}/composition/{deleted}").status_code == 204

    answer = query(http, "select e/ehr_id/value from EHR e")
    assert answer.status_code == 200
    result = answer.json()
    assert result["q"] == "select e/ehr_id/value from EHR e"
    assert result["columns"] == [{"name": "#0", "path": "/ehr_id/value"}]
    assert result["rows"] == [[e] for e in ehrs]
    assert result["meta"]["_type"] == "RESULTSET" and result["meta"]["resultsize"] == 3

    by_subject = query(
        http,
        "SELECT e/ehr_id/value AS id FROM EHR e WHERE e/ehr_status/subject/external_ref/id/value"
        " = $sid AND e/ehr_status/subject/external_ref/namespace = $ns",
        query_parameters={"sid": "S1", "ns": NS},
    ).json()
    assert by_subject["rows"] == [[ehrs[1]]] and by_subject["columns"][0]["name"] == "id"
    assert "'S1'" in by_subject["meta"]["_executed_aql"]

    q = (
        "SELECT e/ehr_id/value, c/uid/value, c/name/value FROM EHR e CONTAINS COMPOSITION c"
        " WHERE e/ehr_id/value = $ehr_id ORDER BY c/uid/value"
    )
    rows = query(http, q, query_parameters={"ehr_id": ehrs[0]}).json()["rows"]
    expected = sorted([[ehrs[0], uids[(0, m)], f"c0{m}"] for m in range(2)], key=lambda r: r[1])
    assert rows == expected
    got = http.get("/query/aql", params={"q": q, "query_parameters": f"ehr_id={ehrs[1]}"})
    assert [r[2] for r in got.json()["rows"]] == sorted(
        ["c10", "c11"], key=lambda n: uids[(1, int(n[2]))]
    )
    as_ehrbase = http.get("/query/aql", params={"q": q, "ehr_id": ehrs[1]})  # plain URL parameter
    assert len(as_ehrbase.json()["rows"]) == 2

    everything = query(
        http, "SELECT c/name/value FROM EHR e CONTAINS COMPOSITION c ORDER BY c/name/value DESC"
    ).json()["rows"]
    assert everything == [["c11"], ["c10"], ["c01"], ["c00"]]  # the deleted one is not seen
    limited = query(
        http, "SELECT c/name/value FROM COMPOSITION c ORDER BY c/name/value LIMIT 2 OFFSET 1"
    ).json()
    assert limited["rows"] == [["c01"], ["c10"]] and "fetch" not in limited["meta"]
    archetype = query(
        http,
        "SELECT c/name/value FROM EHR e[ehr_id/value=$e] CONTAINS COMPOSITION "
        "c[openEHR-EHR-COMPOSITION.report.v1]",
        query_parameters={"e": ehrs[1]},
    ).json()["rows"]
    assert archetype == [["c11"]]
    whole = query(http, "SELECT c FROM COMPOSITION c ORDER BY c/name/value LIMIT 1").json()
    assert whole["rows"][0][0]["uid"]["value"] == uids[(0, 0)]
    assert whole["columns"] == [{"name": "#0", "path": "/"}]


def test_aql_paging_with_offset_and_fetch(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(default_fetch=3)
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        ehrs = [new_ehr(http, f"S{n}") for n in range(7)]
        q = "SELECT e/ehr_id/value FROM EHR e"
        default = query(http, q).json()
        assert len(default["rows"]) == 3 and default["meta"]["fetch"] == 3
        seen: list[str] = []
        offset = 0
        while True:
            page = query(http, q, offset=offset, fetch=2).json()
            assert page["meta"]["offset"] == offset and page["meta"]["fetch"] == 2
            seen.extend(r[0] for r in page["rows"])
            if len(page["rows"]) < 2:
                break
            offset += 2
        assert seen == ehrs
        via_get = http.get("/query/aql", params={"q": q, "offset": "5", "fetch": "10"}).json()
        assert [r[0] for r in via_get["rows"]] == ehrs[5:]
        both = query(http, q + " LIMIT 2", fetch=2)
        assert both.status_code == 400 and "LIMIT" in both.json()["message"]
        assert query(http, q, fetch=0).status_code == 400
        assert query(http, q, offset="x").status_code == 400


@pytest.mark.parametrize(
    "aql",
    [
        "SELECT e/ehr_id/value FROM EHR e WHERE e/ehr_id/value = 'a' OR e/ehr_id/value = 'b'",
        "SELECT count(e/ehr_id/value) FROM EHR e",
        "SELECT DISTINCT e/ehr_id/value FROM EHR e",
        "SELECT o/data FROM EHR e CONTAINS OBSERVATION o",
        "SELECT c/content[openEHR-EHR-OBSERVATION.bp.v1] FROM EHR e CONTAINS COMPOSITION c",
        "SELECT e/ehr_id/value FROM EHR e WHERE NOT e/ehr_id/value = 'a'",
        "SELECT e/ehr_id/value FROM EHR e WHERE e/ehr_id/value MATCHES {'a'}",
        "SELECT e/ehr_id/value FROM EHR e CONTAINS VERSION v",
        "DELETE FROM EHR e",
    ],
)
def test_aql_outside_the_subset_is_400(http: httpx.Client, aql: str) -> None:
    answer = query(http, aql)
    assert answer.status_code == 400
    assert "not supported by the sandbox" in answer.json()["message"]


def test_aql_errors(http: httpx.Client) -> None:
    missing = query(http, "SELECT e/ehr_id/value FROM EHR e WHERE e/ehr_id/value = $nope")
    assert missing.status_code == 400 and "$nope" in missing.json()["message"]
    unknown = query(http, "SELECT x/ehr_id/value FROM EHR e")
    assert unknown.status_code == 400 and "'x'" in unknown.json()["message"]
    assert query(http, "").status_code == 400
    assert http.get("/query/aql").status_code == 400
    assert http.post("/query/aql", json=["SELECT"]).status_code == 400
    body = b'{"q": "SELECT e FROM EHR e"}'
    assert (
        http.post("/query/aql", content=body, headers={"Content-Type": "text/plain"}).status_code
        == 415
    )


# -- identity, auth, faults, log --------------------------------------------------------------------
def test_templates_and_options(http: httpx.Client) -> None:
    assert http.get("/definition/template/adl1.4").json() == []
    ehr_id = new_ehr(http)
    post_composition(http, ehr_id, template="vitals.v1")
    post_composition(http, ehr_id, template="labs.v2")
    templates = http.get("/definition/template/adl1.4").json()
    assert [t["template_id"] for t in templates] == ["labs.v2", "vitals.v1"]
    assert all(t["created_timestamp"] for t in templates)
    options = http.request("OPTIONS", "")
    assert options.status_code == 200
    assert options.json()["solution"] == "cwsctl-sandbox"
    assert options.json()["restapi_specs_version"].startswith("1.0")
    unknown = http.get("/nowhere")
    assert unknown.status_code == 404 and unknown.json()["message"] == "no such endpoint"
    assert http.delete("/ehr").status_code == 405


def test_basic_auth(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(basic_auth=("alice", "pa:ss wörd"))
    base = server.base_url
    refused = httpx.post(f"{base}/ehr", json=ehr_status("P1"))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Basic realm="openEHR"')
    assert refused.json()["error"] == "Unauthorized"
    assert httpx.post(f"{base}/ehr", auth=("alice", "wrong")).status_code == 401
    assert httpx.post(f"{base}/ehr", auth=("bob", "pa:ss wörd")).status_code == 401
    bearer = {"Authorization": "Bearer pa:ss"}
    assert httpx.get(f"{base}/definition/template/adl1.4", headers=bearer).status_code == 401
    assert httpx.get(f"{base}/definition/template/adl1.4").status_code == 401
    assert httpx.get(f"{server.url}/elsewhere").status_code == 401
    assert server.count_ehrs() == 0
    assert httpx.request("OPTIONS", base).status_code == 200  # identity needs no credentials

    auth = httpx.BasicAuth("alice", "pa:ss wörd")
    assert httpx.post(f"{base}/ehr", json=ehr_status("P1"), auth=auth).status_code == 201
    assert httpx.get(f"{base}/definition/template/adl1.4", auth=auth).status_code == 200
    assert server.count_ehrs() == 1

    server.basic_auth = None
    assert httpx.post(f"{base}/ehr", json=ehr_status("P2")).status_code == 201


def test_no_auth_by_default(openehr_sandbox: Any) -> None:
    assert openehr_sandbox.basic_auth is None
    answer = httpx.get(f"{openehr_sandbox.base_url}/definition/template/adl1.4")
    assert answer.status_code == 200 and "www-authenticate" not in answer.headers


def test_faults_hit_ehr_routes_only(make_openehr_sandbox: Any) -> None:
    server = make_openehr_sandbox(error_rate=1.0)
    base = server.base_url
    failed = httpx.post(f"{base}/ehr", json=ehr_status("P1"))
    assert failed.status_code == 500 and server.count_ehrs() == 0
    assert httpx.get(f"{base}/ehr/{uuid.uuid4()}/composition/{uuid.uuid4()}").status_code == 500
    assert httpx.post(f"{base}/query/aql", json={"q": "SELECT e FROM EHR e"}).status_code == 200
    assert httpx.get(f"{base}/definition/template/adl1.4").status_code == 200
    assert httpx.request("OPTIONS", base).status_code == 200

    from cwsctl.sandbox.faults import Faults

    server.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{base}/ehr", json=ehr_status("P1"), headers=REPRESENTATION)
    assert server.count_ehrs() == 1  # processed, then the answer was cut off
    server.faults = Faults()
    again = httpx.post(f"{base}/ehr", json=ehr_status("P1"))
    assert again.status_code == 409  # the in-doubt create did happen


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
    assert (
        f"GET {'/ehrbase/rest/openehr/v1'}/ehr 200" in log
        and "POST /ehrbase/rest/openehr/v1/ehr 201" in log
    )
    assert "GET /ehrbase/rest/openehr/v1/ehr 401" in log and "user=alice" in log
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


def test_state_survives_a_restart(tmp_path: Any) -> None:
    from cwsctl.sandbox.faults import Faults
    from cwsctl.sandbox.openehr import OpenEhrSandboxServer

    first = OpenEhrSandboxServer(tmp_path, faults=Faults(), access_log=False)
    with first as server, httpx.Client(base_url=server.base_url) as http:
        ehr_id = new_ehr(http, "P1")
        v1 = post_composition(http, ehr_id)
    second = OpenEhrSandboxServer(tmp_path, faults=Faults(), access_log=False)
    with second as server, httpx.Client(base_url=server.base_url) as http:
        assert http.post("/ehr", json=ehr_status("P1")).status_code == 409
        answer = put_composition(http, ehr_id, v1.split("::")[0], "later", v1)
        assert answer.status_code == 204 and unquote(answer.headers["etag"]).endswith("::2")
    assert (tmp_path / "openehr.db").stat().st_mode & 0o077 == 0


def test_serve_kind_openehr_with_basic_auth_file(tmp_path: Any) -> None:
    secret_file = tmp_path / "auth"
    secret_file.write_text("loader:not-on-the-command-line\n")
    secret_file.chmod(0o600)
    data_dir = tmp_path / "ehr"
    args = ("--kind", "openehr", "--data-dir", str(data_dir), "--basic-auth-file", str(secret_file))
    with serve_sandbox(tmp_path, *args, ready="Press Ctrl-C") as served:
        base = f"{served.url}/ehrbase/rest/openehr/v1"
        assert f"Base URL (profile --url): {base}" in served.startup
        assert httpx.post(f"{base}/ehr").status_code == 401
        auth = ("loader", "not-on-the-command-line")
        created = httpx.post(f"{base}/ehr", json=ehr_status("P1"), auth=auth)
        assert created.status_code == 201
    assert served.returncode == 0
    assert "POST /ehrbase/rest/openehr/v1/ehr 201" in served.log and "user=loader" in served.log
    assert "not-on-the-command-line" not in served.startup + served.log
    assert (data_dir / "openehr.db").exists() and not (data_dir / "server.pem").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "exactly one user:password line, not 0"),
        ("a:SECRET1\nc:SECRET2\n", "exactly one user:password line, not 2"),
        ("SECRET-no-colon\n", "must be user:password"),
        (":SECRET\n", "must be user:password"),
        ("SECRET:\n", "must be user:password"),
    ],
)
def test_bad_basic_auth_file(tmp_path: Any, content: str, message: str) -> None:
    from cwsctl.core.errors import InputError
    from cwsctl.sandbox.openehr import read_basic_auth_file

    path = tmp_path / "auth"
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        read_basic_auth_file(path)
    assert message in caught.value.message
    assert "SECRET" not in caught.value.message


def test_basic_auth_file_only_for_openehr(tmp_path: Any) -> None:
    secret_file = tmp_path / "auth"
    secret_file.write_text("u:p\n")
    env = {**os.environ, "CWSCTL_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "cwsctl", "sandbox", "serve", "--kind", "cws",
         "--basic-auth-file", str(secret_file)],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--basic-auth-file applies only to --kind openehr" in result.stderr
