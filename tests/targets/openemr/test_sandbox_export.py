"""Bulk FHIR export in the OpenEMR flavour of the sandbox, spoken to directly with httpx.

Both export modes (``openemr``: as OpenEMR's source does it; ``spec``: the Bulk Data Access IG)
and both OpenEMR versions where they differ; every row of the "Bulk export" part of
cwsctl/sandbox/README.md's OpenEMR table has a test here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.targets.openemr.test_sandbox_openemr import (
    USER_SCOPE,
    assert_unauthorized,
    bearer,
    register,
    system_token,
    user_tokens,
)

pytest.importorskip("jwt")
pytest.importorskip("starlette")

EXPORT_SCOPES = (
    "system/*.$export system/Patient.$export system/Group.$export system/*.$bulkdata-status "
    "system/Binary.read system/Patient.read system/Observation.read"
)
KICKOFF = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
KERNEL_UNAUTHORIZED = {"error": "An error occurred", "message": "Unauthorized", "code": 0}
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

Make = Callable[..., Any]


@dataclass
class Exporter:
    """A sandbox and a client-credentials token of an enabled client with export scopes."""

    server: Any
    client_id: str
    token: str
    key: Any

    @property
    def fhir(self) -> str:
        return f"{self.server.api_url}/fhir"

    def headers(self, **extra: str) -> dict[str, str]:
        return {**bearer(self.token), **extra}

    def kickoff(
        self, path: str = "$export", params: Any = None, headers: Any = None
    ) -> httpx.Response:
        sent = self.headers(**KICKOFF) if headers is None else self.headers(**headers)
        return httpx.get(f"{self.fhir}/{path}", params=params, headers=sent, timeout=60)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(local(self.server, url), headers=self.headers(), timeout=30, **kwargs)

    def delete(self, url: str) -> httpx.Response:
        return httpx.delete(local(self.server, url), headers=self.headers(), timeout=30)

    def finish(self, location: str, limit: float = 15) -> httpx.Response:
        """Poll ``location`` as told (Retry-After) until it is no longer 202."""
        deadline = time.monotonic() + limit
        while True:
            answer = self.get(location)
            if answer.status_code != 202:
                return answer
            assert time.monotonic() < deadline, "the export never finished"
            time.sleep(float(answer.headers.get("retry-after", "1")))

    def export(self, path: str = "$export", params: Any = None) -> dict[str, Any]:
        """Kick off, wait, and return the manifest."""
        kickoff = self.kickoff(path, params)
        assert kickoff.status_code == 202, kickoff.text
        status = self.finish(kickoff.headers["content-location"])
        assert status.status_code == 200, status.text
        return dict(status.json())

    def lines(self, url: str) -> list[dict[str, Any]]:
        answer = self.get(url)
        assert answer.status_code == 200
        return [json.loads(line) for line in answer.content.split(b"\n") if line]


def local(server: Any, url: str) -> str:
    """A URL the server named (its site address) as one to send to."""
    return url.replace(server.base_url, server.url, 1)


@pytest.fixture
def exporter(make_openemr_sandbox: Make, rsa2048: Any) -> Callable[..., Exporter]:
    """Factory: ``exporter(export_mode="spec", scope=…, **server_options)``."""

    def make(*, scope: str = EXPORT_SCOPES, server: Any = None, **options: Any) -> Exporter:
        if server is None:
            options.setdefault("system_scopes", True)
            server = make_openemr_sandbox(**options)
        client_id = str(register(server, rsa2048, scope)["client_id"])
        return Exporter(server, client_id, system_token(server, rsa2048, client_id, scope), rsa2048)

    return make


def by_type(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["type"]: entry for entry in manifest["output"]}


def outcome_text(answer: httpx.Response) -> str:
    """An OperationOutcome's text: OpenEMR's ``details.text`` or a FHIR ``diagnostics``."""
    issue = answer.json()["issue"][0]
    return str(issue.get("diagnostics") or issue["details"]["text"])


# -- gates: system scopes, per-route scopes, headers ----------------------------------------------
def test_every_step_is_501_without_system_scopes(make_openemr_sandbox: Make, rsa2048: Any) -> None:
    server = make_openemr_sandbox()  # rest_system_scopes_api off
    client_id = register(server, rsa2048, USER_SCOPE)["client_id"]
    token = user_tokens(server, rsa2048, client_id)["access_token"]
    fhir = f"{server.api_url}/fhir"
    for method, url in (
        ("GET", f"{fhir}/$export"),
        ("GET", f"{fhir}/Patient/$export"),
        ("GET", f"{fhir}/Group/1/$export"),
        ("GET", f"{fhir}/$bulkdata-status?job=x"),
        ("DELETE", f"{fhir}/$bulkdata-status?job=x"),
    ):
        answer = httpx.request(method, url, headers={**bearer(token), **KICKOFF})
        assert (answer.status_code, answer.content) == (501, b""), (method, url)


@pytest.mark.parametrize("version", ["7.0.3", "7.0.4"])
def test_each_route_needs_its_own_scope(exporter: Callable[..., Exporter], version: str) -> None:
    # system/*.$export does not cover Patient/$export or Group/$export
    only_system = exporter(version=version, scope="system/*.$export system/Patient.read")
    assert only_system.kickoff().status_code == 202
    assert_unauthorized(only_system.kickoff("Patient/$export"), version)
    assert_unauthorized(
        only_system.kickoff(f"Group/{only_system.server.group_id}/$export"), version
    )
    # the status and the files need their own scopes too
    location = only_system.kickoff().headers["content-location"]
    assert_unauthorized(only_system.get(location), version)
    full = exporter(server=only_system.server)
    manifest = full.export()
    url = manifest["output"][0]["url"]
    assert_unauthorized(only_system.get(url), version)
    patient_only = exporter(server=full.server, scope="system/Patient.$export system/Patient.read")
    assert patient_only.kickoff("Patient/$export").status_code == 202
    assert_unauthorized(patient_only.kickoff(), version)


@pytest.mark.parametrize("mode", ["openemr", "spec"])
def test_accept_and_prefer_are_checked(exporter: Callable[..., Exporter], mode: str) -> None:
    emr = exporter(export_mode=mode)
    for headers, which in (
        ({"Prefer": "respond-async"}, "Accept"),
        ({"Accept": "application/json", "Prefer": "respond-async"}, "Accept"),
        ({"Accept": "application/fhir+json"}, "Prefer"),
        ({"Accept": "application/fhir+json", "Prefer": "respond-async, wait=10"}, "Prefer"),
    ):
        answer = emr.kickoff(headers=headers)
        assert answer.status_code == 400, headers
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert which in outcome_text(answer)
    bad_format = emr.kickoff(params={"_outputFormat": "text/csv"})
    assert bad_format.status_code == 400


# -- openemr mode ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["7.0.3", "7.0.4"])
def test_openemr_kickoff_runs_the_export_and_the_manifest_is_openemrs(
    exporter: Callable[..., Exporter], version: str
) -> None:
    emr = exporter(version=version)
    emr.server.seed_patients(3)
    before = time.time()
    kickoff = emr.kickoff(params={"type": "Patient"})
    assert kickoff.status_code == 202
    assert kickoff.content == b""
    assert kickoff.headers["content-type"] == "application/json"
    assert "retry-after" not in kickoff.headers and "x-progress" not in kickoff.headers
    location = kickoff.headers["content-location"]
    assert re.fullmatch(
        re.escape(f"{emr.server.fhir_url}/$bulkdata-status?job=") + r"[0-9a-f-]{36}", location
    )
    status = emr.get(location)  # done at once: the job ended inside the kick-off
    assert status.status_code == 200
    assert status.headers["content-type"] == "application/json"
    manifest = status.json()
    moment = manifest["transactionTime"]
    assert set(moment) == {"date", "timezone_type", "timezone"}
    assert (moment["timezone_type"], moment["timezone"]) == (3, "UTC")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.000000", moment["date"])
    started = time.mktime(time.strptime(moment["date"][:19], "%Y-%m-%d %H:%M:%S")) - time.timezone
    assert before - 1 <= started <= time.time()
    path = "/apis/default/fhir/$export?type=Patient"
    assert manifest["request"] == (path if version == "7.0.4" else f"{emr.server.url}{path}")
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    assert [set(entry) for entry in manifest["output"]] == [{"url", "type"}]  # no count
    assert re.fullmatch(
        re.escape(f"{emr.server.fhir_url}/Binary/") + r"\d+", manifest["output"][0]["url"]
    )
    assert "deleted" not in manifest


def test_openemr_reads_type_and_ignores__type_and__typefilter(
    exporter: Callable[..., Exporter],
) -> None:
    emr = exporter()
    emr.server.seed_patients(4)
    # no `type`: every exportable type the token reads, empty ones listed too
    everything = emr.export(params={"_type": "Observation", "_typeFilter": "Patient?gender=male"})
    assert sorted(by_type(everything)) == ["Observation", "Patient"]
    assert len(emr.lines(by_type(everything)["Patient"]["url"])) == 4  # _typeFilter ignored
    empty = emr.get(by_type(everything)["Observation"]["url"])
    assert (empty.status_code, empty.content, empty.headers["content-length"]) == (200, b"", "0")
    chosen = emr.export(params={"type": "Patient", "_type": "Observation"})
    assert list(by_type(chosen)) == ["Patient"]


@pytest.mark.parametrize("version", ["7.0.3", "7.0.4"])
def test_openemr_type_the_token_cannot_read_is_refused(
    exporter: Callable[..., Exporter], version: str
) -> None:
    emr = exporter(version=version)
    answer = emr.kickoff(params={"type": "Patient,Encounter"})
    assert answer.status_code == (400 if version == "7.0.3" else 401)
    assert outcome_text(answer) == "AccessToken does not grant access to resource Encounter"


def test_openemr_type_without_that_export_is_an_outcome_in_error(
    exporter: Callable[..., Exporter],
) -> None:
    emr = exporter(scope=f"{EXPORT_SCOPES} system/Organization.read")
    manifest = emr.export("Patient/$export", {"type": "Patient,Organization"})
    assert list(by_type(manifest)) == ["Patient"]
    [error] = manifest["error"]  # the OperationOutcome itself, not a {type, url} entry
    assert error["resourceType"] == "OperationOutcome"
    assert error["issue"][0]["details"]["text"] == "Resource does not support this export operation"


@pytest.mark.parametrize("version", ["7.0.3", "7.0.4"])
def test_openemr_since(exporter: Callable[..., Exporter], version: str) -> None:
    emr = exporter(version=version)
    emr.server.seed_patients(2, created_at="2024-01-01T00:00:00Z")
    emr.server.seed_patients(3, created_at="2024-07-01T12:00:00Z")
    for since, expected in (
        ("2024-06-01", 3),
        ("2024-07-01T12:00:00Z", 3),
        ("2024-07-01T13:00:00+02:00", 3),  # 11:00 UTC
        ("2024", 5),
        ("2024-07-02", 0),
    ):
        manifest = emr.export(params={"type": "Patient", "_since": since})
        assert len(emr.lines(by_type(manifest)["Patient"]["url"])) == expected, since
    bad = emr.kickoff(params={"_since": "2024-06-01 10:00:00"})  # a space does not parse
    assert bad.status_code == 500
    assert bad.text.startswith("Date format invalid") if version == "7.0.3" else True
    if version == "7.0.4":
        assert bad.json()["message"].startswith("Date format invalid")
        assert bad.json()["error"] == "An error occurred"


def test_binary_is_the_fhir_read_as_ndjson(exporter: Callable[..., Exporter]) -> None:
    emr = exporter()
    emr.server.seed_patients(3)
    manifest = emr.export(params={"type": "Patient"})
    url = by_type(manifest)["Patient"]["url"]
    answer = emr.get(url)
    assert answer.status_code == 200
    headers = answer.headers
    assert headers["content-type"] == "application/fhir+ndjson"
    assert int(headers["content-length"]) == len(answer.content)
    assert re.fullmatch(
        r"attachment; filename=Patient-[0-9a-f-]{36}\.ndjson", headers["content-disposition"]
    )
    assert headers["expires"].endswith(" GMT")
    assert headers["content-description"] == "File Transfer"
    assert "accept-ranges" not in headers
    assert not answer.content.endswith(b"\n") and answer.content.count(b"\n") == 2
    for line in answer.content.split(b"\n"):
        resource = json.loads(line)
        read = emr.get(f"{emr.fhir}/Patient/{resource['id']}")
        assert read.status_code == 200 and read.json() == resource
    pubpids = {p.pubpid for p in emr.server.patients()}
    assert pubpids == {"10000:P1", "10000:P2", "10000:P3"}


def test_range_is_not_supported(exporter: Callable[..., Exporter]) -> None:
    emr = exporter()
    emr.server.seed_patients(2)
    url = local(emr.server, by_type(emr.export(params={"type": "Patient"}))["Patient"]["url"])
    whole = httpx.get(url, headers=emr.headers(Range="bytes=10-"))
    assert whole.status_code == 200 and "content-range" not in whole.headers


@pytest.mark.parametrize("mode", ["openemr", "spec"])
@pytest.mark.timing
@pytest.mark.slow
def test_files_expire(exporter: Callable[..., Exporter], mode: str) -> None:
    emr = exporter(export_mode=mode, export_ttl=1.5)
    emr.server.seed_patients(1)
    manifest = emr.export(params={"type": "Patient", "_type": "Patient"})
    url = by_type(manifest)["Patient"]["url"]
    assert emr.get(url).status_code == 200
    time.sleep(1.6)
    gone = emr.get(url)
    assert gone.status_code == 404
    if mode == "openemr":
        assert gone.content == b""
    else:
        assert gone.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("version", ["7.0.3", "7.0.4"])
def test_jobs_belong_to_their_client_files_do_not(
    exporter: Callable[..., Exporter], version: str
) -> None:
    owner = exporter(version=version)
    owner.server.seed_patients(1)
    location = owner.kickoff(params={"type": "Patient"}).headers["content-location"]
    other = exporter(server=owner.server)
    for answer in (other.get(location), owner.get(location.replace("job=", "job=0"))):
        if version == "7.0.3":
            assert answer.status_code == 400
            assert outcome_text(answer) == "The job id you submitted was invalid"
        else:
            assert answer.status_code == 404
            assert outcome_text(answer) == "The job id you submitted was not found"
    # a later token of the same client (tokens live 300 s) polls the same job
    owner.server.revoke_tokens()
    assert owner.get(location).status_code == 401
    owner.token = system_token(owner.server, owner.key, owner.client_id, EXPORT_SCOPES)
    manifest = owner.get(location).json()
    # no check that a document belongs to the caller's job
    other.token = system_token(other.server, other.key, other.client_id, EXPORT_SCOPES)
    assert other.get(manifest["output"][0]["url"]).status_code == 200


@pytest.mark.parametrize(
    ("mode", "version"), [("openemr", "7.0.3"), ("openemr", "7.0.4"), ("spec", "7.0.4")]
)
def test_delete_removes_the_job_and_its_files(
    exporter: Callable[..., Exporter], mode: str, version: str
) -> None:
    emr = exporter(export_mode=mode, version=version)
    emr.server.seed_patients(2)
    kickoff = emr.kickoff(params={"type": "Patient", "_type": "Patient"})
    location = kickoff.headers["content-location"]
    url = by_type(emr.finish(location).json())["Patient"]["url"]
    cancelled = emr.delete(location)
    assert (cancelled.status_code, cancelled.content) == (202, b"")
    assert emr.get(location).status_code == (400 if version == "7.0.3" else 404)
    assert emr.get(url).status_code == 404
    again = emr.delete(location)
    assert again.status_code == 404
    if version == "7.0.3":
        assert again.content == b""
    else:
        assert again.json()["resourceType"] == "OperationOutcome"
    leftovers = list((emr.server.data_dir / "openemr-exports").iterdir())
    assert leftovers == []


def test_group_export_is_the_panel(exporter: Callable[..., Exporter]) -> None:
    emr = exporter()
    emr.server.seed_patients(3)
    panel = emr.export(f"Group/{emr.server.group_id}/$export", {"type": "Patient"})
    assert len(emr.lines(by_type(panel)["Patient"]["url"])) == 3
    unknown = emr.export("Group/no-such-group/$export", {"type": "Patient"})
    assert emr.get(by_type(unknown)["Patient"]["url"]).content == b""


def test_a_large_export_is_streamed_whole(exporter: Callable[..., Exporter]) -> None:
    emr = exporter()
    assert emr.server.seed_patients(20_000) == 20_000
    url = local(emr.server, by_type(emr.export(params={"type": "Patient"}))["Patient"]["url"])
    size = count = 0
    with httpx.stream("GET", url, headers=emr.headers()) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_bytes():
            size += len(chunk)
            count += chunk.count(b"\n")
        assert size == int(answer.headers["content-length"])
    assert count == 20_000 - 1


# -- spec mode ------------------------------------------------------------------------------------
@pytest.mark.timing
@pytest.mark.slow
def test_spec_is_asynchronous_with_progress_retry_after_and_429(
    exporter: Callable[..., Exporter],
) -> None:
    emr = exporter(export_mode="spec", export_delay=1.5)
    emr.server.seed_patients(3)
    started = time.monotonic()
    kickoff = emr.kickoff(params={"_type": "Patient", "type": "Observation"})
    assert kickoff.status_code == 202 and time.monotonic() - started < 1
    location = kickoff.headers["content-location"]
    first = emr.get(location)
    assert first.status_code == 202
    assert re.fullmatch(r"\d{1,2}% done", first.headers["x-progress"])
    wait = int(first.headers["retry-after"])
    assert wait >= 1
    early = emr.get(location)
    assert early.status_code == 429
    assert int(early.headers["retry-after"]) >= 1
    assert early.json()["issue"][0]["code"] == "throttled"
    time.sleep(wait)
    status = emr.finish(location)
    assert status.status_code == 200
    assert time.monotonic() - started >= 1.5
    manifest = status.json()
    assert INSTANT.match(manifest["transactionTime"])
    assert manifest["request"].startswith(f"{emr.server.url}/apis/default/fhir/$export?")
    assert manifest["requiresAccessToken"] is True
    # _type read, type ignored; files that would be empty are not listed
    assert manifest["output"] == [
        {"url": manifest["output"][0]["url"], "type": "Patient", "count": 3}
    ]
    assert manifest["error"] == []
    assert status.headers["expires"].endswith(" GMT")


def test_spec_type_filter_since_and_types_it_cannot_give(
    exporter: Callable[..., Exporter],
) -> None:
    emr = exporter(export_mode="spec")
    emr.server.seed_patients(4, created_at="2024-01-01T00:00:00Z")  # P1..P4: F, M, F, M
    emr.server.seed_patients(2, created_at="2024-07-01T00:00:00Z")  # P5 F, P6 M
    women = emr.export(params={"_type": "Patient", "_typeFilter": "Patient?gender=female"})
    assert by_type(women)["Patient"]["count"] == 3
    assert {r["gender"] for r in emr.lines(by_type(women)["Patient"]["url"])} == {"female"}
    recent = emr.export(params={"_type": "Patient", "_since": "2024-06-01T00:00:00Z"})
    assert by_type(recent)["Patient"]["count"] == 2
    assert emr.kickoff(params={"_since": "2024-06-01"}).status_code == 400  # not an instant
    for bad in ("Observation?code=1234", "Patient?address=Paris", "Patient"):
        refused = emr.kickoff(params={"_type": "Patient", "_typeFilter": bad})
        assert refused.status_code == 400, bad
        assert "cannot apply _typeFilter" in outcome_text(refused)
    assert emr.kickoff(params={"_type": "Nonsense"}).status_code == 400
    # a type the token cannot read: reported in an error file, the rest exported
    mixed = emr.export(params={"_type": "Patient,Encounter"})
    assert list(by_type(mixed)) == ["Patient"]
    [error] = mixed["error"]
    assert (error["type"], error["count"]) == ("OperationOutcome", 1)
    [outcome] = emr.lines(error["url"])
    assert "Encounter" in outcome["issue"][0]["diagnostics"]


# -- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["openemr", "spec"])
def test_fault_cut_file_after(exporter: Callable[..., Exporter], mode: str) -> None:
    emr = exporter(export_mode=mode)
    emr.server.seed_patients(50)
    url = local(
        emr.server,
        by_type(emr.export(params={"type": "Patient", "_type": "Patient"}))["Patient"]["url"],
    )
    emr.server.export_faults.cut_file_after = 1000
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("GET", url, headers=emr.headers()) as answer,
    ):
        assert int(answer.headers["content-length"]) > 1000
        for chunk in answer.iter_bytes():
            received += chunk
    assert len(received) == 1000
    whole = emr.get(url)  # one shot: the next download is whole
    assert whole.status_code == 200 and whole.content.startswith(received)
    assert emr.server.export_faults.cut_file_after is None


@pytest.mark.parametrize("mode", ["openemr", "spec"])
def test_fault_status_errors(exporter: Callable[..., Exporter], mode: str) -> None:
    emr = exporter(export_mode=mode)
    location = emr.kickoff(params={"type": "Patient", "_type": "Patient"}).headers[
        "content-location"
    ]
    emr.server.export_faults.status_errors = 2
    for _ in range(2):
        failed = emr.get(location)
        assert failed.status_code == 500
        if mode == "spec":
            assert failed.json()["issue"][0]["code"] == "transient"
        else:
            assert failed.json()["error"] == "An error occurred"
    assert emr.finish(location).status_code == 200


@pytest.mark.parametrize("mode", ["openemr", "spec"])
def test_fault_wrong_type(exporter: Callable[..., Exporter], mode: str) -> None:
    emr = exporter(export_mode=mode)
    emr.server.seed_patients(2)
    emr.server.export_faults.wrong_type = "Patient"
    manifest = emr.export(params={"type": "Patient", "_type": "Patient"})
    types = [r["resourceType"] for r in emr.lines(by_type(manifest)["Patient"]["url"])]
    assert types == ["Observation", "Patient", "Patient"]
    if mode == "spec":
        assert by_type(manifest)["Patient"]["count"] == 3


def test_fault_wrong_count(exporter: Callable[..., Exporter]) -> None:
    emr = exporter(export_mode="spec")
    emr.server.seed_patients(2)
    emr.server.export_faults.wrong_count = True
    manifest = emr.export(params={"_type": "Patient"})
    entry = by_type(manifest)["Patient"]
    assert entry["count"] == 3 and len(emr.lines(entry["url"])) == 2


@pytest.mark.timing
@pytest.mark.slow
def test_token_expiry_mid_export(exporter: Callable[..., Exporter]) -> None:
    emr = exporter(export_mode="spec", export_delay=1.0, token_lifetime=1)
    location = emr.kickoff(params={"_type": "Patient"}).headers["content-location"]
    time.sleep(1.1)
    assert emr.get(location).status_code == 401  # expired mid-export
    emr.token = system_token(emr.server, emr.key, emr.client_id, EXPORT_SCOPES)
    assert emr.finish(location).status_code == 200


# -- seeding --------------------------------------------------------------------------------------
def test_seed_patients_and_the_seed_command(
    exporter: Callable[..., Exporter], run_cwsctl: Callable[..., Any]
) -> None:
    from cwsctl.targets.openemr.sandbox.patients import validate_record

    emr = exporter()
    assert emr.server.seed_patients(2, facility="20000", prefix="S") == 2
    result = run_cwsctl(
        "--json",
        "sandbox",
        "openemr",
        "seed",
        "--patients",
        "3",
        "--data-dir",
        str(emr.server.data_dir),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["patients"] == 5
    seeded = emr.server.patients()
    assert [p.pubpid for p in seeded] == [
        "20000:S1",
        "20000:S2",
        "10000:P3",
        "10000:P4",
        "10000:P5",
    ]
    for patient in seeded:
        record, errors = validate_record(patient.record)
        assert errors == {} and record == patient.record
    manifest = emr.export(params={"type": "Patient"})
    assert len(emr.lines(by_type(manifest)["Patient"]["url"])) == 5
