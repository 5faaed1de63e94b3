"""`cwsctl ehr`, `composition` and `query` end to end, through the real CLI, against the openEHR
flavour of the sandbox in each of its modes: EHRbase 2.0-2.31 (a quoted If-Match is refused),
a server that follows the specification (quotes accepted), and a maximum fetch of 500. Optimistic
locking (a race with exactly one winner, --if-match, reading first, stale writes naming the
latest with one more read), versions by uid and by time, delete and history, AQL by the
server's paging rules, inputs EHRbase refuses refused first, and basic auth whose password
never shows.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from cwsctl.core.errors import InputError
from cwsctl.targets.openehr.aql import column_names, paging_clauses, parse_query_parameter
from cwsctl.targets.openehr.data import VITAL_SIGNS_TEMPLATE_ID, vital_signs_opt
from cwsctl.targets.openehr.ids import VersionUid, check_timestamp

pytest.importorskip("starlette")

NS = "urn:cwsctl:external-id:facility:10000"
PASSWORD = "s3cret-Pa55word-x9"
REQUEST_LINE = re.compile(r"^> (GET|POST|PUT|DELETE) http")
#: The sandbox's modes: EHRbase 2.0-2.31 (quoted If-Match refused), the specification, and a
#: server whose maximum fetch is 500 (EHRbase's ehrbase.rest.aql.max-fetch).
MODES = {
    "ehrbase": {"if_match": "ehrbase"},
    "spec": {"if_match": "spec"},
    "max-fetch-500": {"if_match": "ehrbase", "max_fetch": 500},
}


def composition(systolic: int) -> bytes:
    """A canonical-JSON vital signs composition (the shipped template), written with deliberate
    spacing (bytes are sent as is); ``systolic`` tells versions apart."""
    document = {
        "_type": "COMPOSITION",
        "name": {"_type": "DV_TEXT", "value": "Vital signs"},
        "archetype_node_id": "openEHR-EHR-COMPOSITION.encounter.v1",
        "archetype_details": {
            "archetype_id": {"value": "openEHR-EHR-COMPOSITION.encounter.v1"},
            "template_id": {"value": VITAL_SIGNS_TEMPLATE_ID},
            "rm_version": "1.0.4",
        },
        "language": {"terminology_id": {"value": "ISO_639-1"}, "code_string": "en"},
        "territory": {"terminology_id": {"value": "ISO_3166-1"}, "code_string": "US"},
        "category": {
            "value": "event",
            "defining_code": {"terminology_id": {"value": "openehr"}, "code_string": "433"},
        },
        "composer": {"_type": "PARTY_SELF"},
        "content": [
            {
                "_type": "OBSERVATION",
                "name": {"_type": "DV_TEXT", "value": "Blood pressure"},
                "archetype_node_id": "openEHR-EHR-OBSERVATION.blood_pressure.v2",
                "language": {"terminology_id": {"value": "ISO_639-1"}, "code_string": "en"},
                "encoding": {
                    "terminology_id": {"value": "IANA_character-sets"},
                    "code_string": "UTF-8",
                },
                "subject": {"_type": "PARTY_SELF"},
                "data": {
                    "_type": "HISTORY",
                    "name": {"_type": "DV_TEXT", "value": "History"},
                    "archetype_node_id": "at0001",
                    "origin": {"_type": "DV_DATE_TIME", "value": "2024-01-01T12:00:00Z"},
                    "events": [
                        {
                            "_type": "POINT_EVENT",
                            "name": {"_type": "DV_TEXT", "value": "Any event"},
                            "archetype_node_id": "at0006",
                            "time": {"_type": "DV_DATE_TIME", "value": "2024-01-01T12:00:00Z"},
                            "data": {
                                "_type": "ITEM_TREE",
                                "name": {"_type": "DV_TEXT", "value": "blood pressure"},
                                "archetype_node_id": "at0003",
                                "items": [
                                    {
                                        "_type": "ELEMENT",
                                        "name": {"_type": "DV_TEXT", "value": "Systolic"},
                                        "archetype_node_id": "at0004",
                                        "value": {
                                            "_type": "DV_QUANTITY",
                                            "magnitude": systolic,
                                            "units": "mm[Hg]",
                                        },
                                    }
                                ],
                            },
                        }
                    ],
                },
            }
        ],
    }
    return json.dumps(document, indent=1).encode() + b"\n"


def systolic(document: Any) -> Any:
    """The systolic magnitude of a composition :func:`composition` wrote."""
    events = document["content"][0]["data"]["events"]
    return events[0]["data"]["items"][0]["value"]["magnitude"]


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cdr(make_openehr_sandbox, cli, mode):
    """An openEHR sandbox in ``mode`` (no auth) holding the vital signs template, and a default
    ``cdr`` profile pointing at it."""
    server = make_openehr_sandbox(templates=[vital_signs_opt()], **MODES[mode])
    result = cli(
        "profile", "init", "cdr", "--kind", "openehr", "--url", server.base_url, "--default"
    )
    assert result.exit_code == 0, result.stderr
    return server


@pytest.fixture
def ehr_id(cdr, cli):
    result = cli("ehr", "create", "--subject-id", "P-1", "--namespace", NS)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def create_composition(cli, tmp_path: Path, ehr_id: str, value: int = 120) -> VersionUid:
    source = tmp_path / f"c{value}.json"
    source.write_bytes(composition(value))
    result = cli("composition", "create", ehr_id, str(source))
    assert result.exit_code == 0, result.stderr
    return VersionUid.parse(result.stdout.strip())


def write(tmp_path: Path, value: int) -> str:
    path = tmp_path / f"c{value}.json"
    path.write_bytes(composition(value))
    return str(path)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cwsctl: error:")]


def requests_sent(stderr: str) -> list[str]:
    """``METHOD`` of each request -v showed, in order."""
    return [line.split()[1] for line in stderr.splitlines() if REQUEST_LINE.match(line)]


def if_match_sent(stderr: str) -> list[str]:
    """Each If-Match header value -v showed, in order."""
    return [
        line.split(":", 1)[1].strip()
        for line in stderr.splitlines()
        if line.lower().startswith("> if-match:")
    ]


# -- the library's value types ------------------------------------------------------------------


def test_version_uid_parses_and_prints_the_same_text():
    text = "8849182c-82ad-4088-a07f-48ead4180515::local.ehrbase.org::12"
    uid = VersionUid.parse(text)
    assert (uid.object_id, uid.system_id, uid.version, uid.trunk) == (
        "8849182c-82ad-4088-a07f-48ead4180515",
        "local.ehrbase.org",
        "12",
        12,
    )
    assert str(uid) == text
    assert VersionUid.from_header(f'W/"{text}"') == uid
    assert VersionUid.from_header(f"http://h/ehr/e/composition/{text}") == uid
    # A server's ETag naming a version past any integer is no version (int() would raise).
    assert VersionUid.from_header('"a::b::' + "9" * 5000 + '"') is None
    assert VersionUid.parse("a::b::" + "9" * 18).trunk == int("9" * 18)


@pytest.mark.parametrize(
    "bad",
    [
        "abc",
        "a::b",
        "a::b::c::d",
        "a::b::0",
        "a::b::x",
        "::b::1",
        "a::::1",
        "a b::c::1",
        "a::b::1.",
        "a::b::1" + "0" * 18,
    ],
)
def test_malformed_version_uids_are_input_errors(bad):
    with pytest.raises(InputError) as caught:
        VersionUid.parse(bad)
    assert "object_id::system_id::version" in (caught.value.message + (caught.value.hint or ""))


def test_query_parameters_stay_strings_unless_typed():
    assert parse_query_parameter("n=5") == ("n", "5")
    assert parse_query_parameter("$n:=5") == ("n", 5)
    assert parse_query_parameter("ids:=[1,2]") == ("ids", [1, 2])
    assert parse_query_parameter("q=a=b") == ("q", "a=b")
    for bad in ("novalue", "1x=2", "n:=notjson"):
        with pytest.raises(InputError):
            parse_query_parameter(bad)


def test_repeated_and_missing_column_names_become_unique_keys():
    columns = [{"name": "x"}, {"name": "x"}, {"path": "/a/b"}, {}]
    assert column_names(columns) == ["x", "x_2", "/a/b", "#4"]


# -- EHRs ---------------------------------------------------------------------------------------


def test_ehr_create_show_by_subject_and_a_second_create_is_refused(cdr, cli):
    created = cli("ehr", "create", "--subject-id", "P-7", "--namespace", NS)
    assert created.exit_code == 0, created.stderr
    ehr_id = created.stdout.strip()
    assert [e.ehr_id for e in cdr.ehrs()] == [ehr_id]

    shown = cli("--json", "ehr", "show", "--subject-id", "P-7", "--namespace", NS)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["ehr_id"]["value"] == ehr_id
    by_id = cli("ehr", "show", ehr_id)
    assert json.loads(by_id.stdout)["ehr_id"]["value"] == ehr_id

    again = cli("ehr", "create", "--subject-id", "P-7", "--namespace", NS)
    assert again.exit_code == 4
    assert error_lines(again.stderr) == [
        f"cwsctl: error: subject 'P-7' in namespace '{NS}' already has an EHR"
    ]
    assert "ehr show --subject-id P-7" in again.stderr
    assert cdr.count_ehrs() == 1

    missing = cli("ehr", "show", "--subject-id", "P-8", "--namespace", NS)
    assert missing.exit_code == 4
    assert error_lines(missing.stderr) == [
        f"cwsctl: error: no EHR for subject 'P-8' in namespace '{NS}'"
    ]
    unknown = cli("ehr", "show", "0b6b8f5e-0000-4000-8000-000000000000")
    assert unknown.exit_code == 4 and "no EHR 0b6b8f5e" in unknown.stderr


def test_ehr_create_json_is_the_ehr_and_status_reads_versions(cli, ehr_id):
    status = cli("--json", "ehr", "status", ehr_id)
    assert status.exit_code == 0, status.stderr
    document = json.loads(status.stdout)
    uid = VersionUid.parse(document["version_uid"])
    assert document["ehr_status"]["subject"]["external_ref"]["id"]["value"] == "P-1"
    assert document["ehr_status"]["subject"]["external_ref"]["namespace"] == NS

    by_uid = cli("--json", "ehr", "status", ehr_id, "--version", str(uid))
    assert json.loads(by_uid.stdout)["version_uid"] == str(uid)
    at = cli("--json", "ehr", "status", ehr_id, "--at", "2999-01-01T00:00:00Z")
    assert json.loads(at.stdout)["version_uid"] == str(uid)
    before = cli("ehr", "status", ehr_id, "--at", "2000-01-01T00:00:00Z")
    assert before.exit_code == 4 and "no EHR_STATUS at 2000-01-01" in before.stderr


@pytest.mark.slow
def test_usage_errors_are_one_line_and_exit_2(cdr, cli, run_cwsctl):
    for args in (
        ("ehr", "create", "--subject-id", "P-1"),
        ("ehr", "show"),
        ("ehr", "show", "x", "--subject-id", "P-1", "--namespace", NS),
        ("ehr", "status", "x", "--version", "not-a-version"),
        ("ehr", "status", "x", "--at", "yesterday"),
        ("composition", "get", "x", "y", "--version", "a::b::0"),
        ("query", "x", "--limit", "0"),
    ):
        result = run_cwsctl(*args)
        stderr = result.stderr.decode()
        assert result.returncode == 2, (args, stderr)
        assert len(error_lines(stderr)) == 1, stderr
        assert "Traceback" not in stderr
    bad_uid = run_cwsctl("ehr", "status", "x", "--version", "not-a-version").stderr.decode()
    assert "'not-a-version' is not object_id::system_id::version" in bad_uid


# -- item 2: updates that work on every server, never blind ----------------------------------------


def test_if_match_round_trip_and_a_stale_one_names_the_latest(cli, ehr_id, tmp_path, mode):
    v1 = create_composition(cli, tmp_path, ehr_id)
    assert v1.version == "1"
    updated = cli(
        "-v", "composition", "update", ehr_id, v1.object_id, write(tmp_path, 130),
        "--if-match", str(v1),
    )  # fmt: skip
    assert updated.exit_code == 0, updated.stderr
    v2 = VersionUid.parse(updated.stdout.strip())
    assert (v2.object_id, v2.version) == (v1.object_id, "2")
    # Quoted first, as the specification says; EHRbase 2.0-2.31 refuses that (400, nothing
    # written) and gets the bare uid once. Never without If-Match.
    if MODES[mode]["if_match"] == "ehrbase":
        assert requests_sent(updated.stderr) == ["PUT", "PUT"]
        assert if_match_sent(updated.stderr) == [f'"{v1}"', str(v1)]
        assert "< 400 Bad Request" in updated.stderr  # "UUID string too large" (masked by -v)
    else:
        assert requests_sent(updated.stderr) == ["PUT"]
        assert if_match_sent(updated.stderr) == [f'"{v1}"']

    latest = cli("composition", "get", ehr_id, v1.object_id)
    assert systolic(json.loads(latest.stdout)) == 130

    stale = cli(
        "-v", "composition", "update", ehr_id, v1.object_id, write(tmp_path, 140),
        "--if-match", str(v1),
    )  # fmt: skip
    assert stale.exit_code == 4
    assert error_lines(stale.stderr) == [
        f"cwsctl: error: changed since it was read: latest is {v2}"
    ]
    assert f"--if-match {v2}" in stale.stderr
    # The 412 names no version (EHRbase's has no ETag): one more read found it.
    assert requests_sent(stale.stderr)[-1] == "GET"
    history = json.loads(cli("--json", "composition", "history", ehr_id, v1.object_id).stdout)
    assert [v["version_uid"] for v in history["versions"]] == [str(v1), str(v2)]


def test_update_without_if_match_reads_the_latest_first(cli, ehr_id, tmp_path, mode):
    v1 = create_composition(cli, tmp_path, ehr_id)
    first = cli("-v", "composition", "update", ehr_id, v1.object_id, write(tmp_path, 130))
    assert first.exit_code == 0, first.stderr
    retried = ["PUT"] if MODES[mode]["if_match"] == "ehrbase" else []
    assert requests_sent(first.stderr) == ["GET", "PUT", *retried]
    assert if_match_sent(first.stderr)[0] == f'"{v1}"'
    assert "the latest, read first" in first.stderr

    second = cli("--json", "composition", "update", ehr_id, v1.object_id, write(tmp_path, 140))
    assert second.exit_code == 0, second.stderr
    document = json.loads(second.stdout)
    assert document["preceding_version_uid"] == f"{v1.object_id}::{v1.system_id}::2"
    assert document["read_first"] is True
    assert document["version_uid"] == f"{v1.object_id}::{v1.system_id}::3"


def test_a_client_remembers_a_refused_quote_for_the_rest_of_the_run(cdr, ehr_id, mode):
    """Through one client (one run), only the first write pays for EHRbase's refusal."""
    from cwsctl.targets.openehr import compositions, ehr
    from cwsctl.targets.openehr.kind import OpenEhrClient

    class Recording:
        """The real client; each If-Match it sends is noted."""

        def __init__(self, client: OpenEhrClient) -> None:
            self.client = client
            self.sent: list[str] = []

        def request(self, method, path, body=b"", headers=None):
            if headers and "If-Match" in headers:
                self.sent.append(headers["If-Match"])
            return self.client.request(method, path, body, headers)

    with OpenEhrClient(None, base_url=cdr.base_url, allow_http=True) as real:
        client = Recording(real)
        created = compositions.create_composition(client, ehr_id, composition(120))  # type: ignore[arg-type]
        uid = created.version_uid
        assert uid is not None
        for value in (121, 122, 123):
            written = compositions.update_composition(
                client, ehr_id, uid.object_id, composition(value)
            )  # type: ignore[arg-type]
            assert written.version_uid is not None and written.version_uid.version == str(
                value - 119
            )
        status = ehr.update_ehr_status(
            client,  # type: ignore[arg-type]
            ehr_id,
            json.dumps(ehr.get_ehr_status(client, ehr_id).document).encode(),  # type: ignore[arg-type]
        )
        assert status.version_uid is not None and status.version_uid.version == "2"
    bare = [value for value in client.sent if not value.startswith('"')]
    quoted = [value for value in client.sent if value.startswith('"')]
    if MODES[mode]["if_match"] == "ehrbase":
        assert len(quoted) == 1 and len(bare) == 4  # one refusal, then bare at once
    else:
        assert len(quoted) == 4 and bare == []


def test_a_uid_naming_a_version_is_the_version_the_update_is_based_on(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id)
    assert cli("composition", "update", ehr_id, str(v1), write(tmp_path, 130)).exit_code == 0
    stale = cli("composition", "update", ehr_id, str(v1), write(tmp_path, 131))
    assert stale.exit_code == 4
    assert error_lines(stale.stderr) == [
        f"cwsctl: error: changed since it was read: latest is {v1.object_id}::{v1.system_id}::2"
    ]


def test_two_updaters_race_and_exactly_one_wins(cli, ehr_id, tmp_path, cwsctl_home):
    v1 = create_composition(cli, tmp_path, ehr_id)
    processes = []
    for value in (150, 160):
        args = [
            "composition", "update", ehr_id, v1.object_id, write(tmp_path, value),
            "--if-match", str(v1),
        ]  # fmt: skip
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "cwsctl", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "CWSCTL_HOME": str(cwsctl_home)},
            )
        )
    outcomes = [(p.wait(timeout=30), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 4], outcomes
    winner = next(out.decode().strip() for code, out, _ in outcomes if code == 0)
    loser = next(err.decode() for code, _, err in outcomes if code == 4)
    assert winner == f"{v1.object_id}::{v1.system_id}::2"
    assert error_lines(loser) == [f"cwsctl: error: changed since it was read: latest is {winner}"]
    stored = systolic(json.loads(cli("composition", "get", ehr_id, v1.object_id).stdout))
    assert stored in (150, 160)
    history = json.loads(cli("--json", "composition", "history", ehr_id, v1.object_id).stdout)
    assert len(history["versions"]) == 2


def test_ehr_status_update_reads_first_and_a_stale_one_names_the_latest(
    cli, ehr_id, tmp_path, mode
):
    current = json.loads(cli("--json", "ehr", "status", ehr_id).stdout)
    v1 = VersionUid.parse(current["version_uid"])
    changed = dict(current["ehr_status"], is_queryable=False)
    source = tmp_path / "status.json"
    source.write_text(json.dumps(changed))

    first = cli("-v", "ehr", "status-update", ehr_id, str(source))
    assert first.exit_code == 0, first.stderr
    v2 = VersionUid.parse(first.stdout.strip())
    assert (v2.object_id, v2.version) == (v1.object_id, "2")
    retried = ["PUT"] if MODES[mode]["if_match"] == "ehrbase" else []
    assert requests_sent(first.stderr) == ["GET", "PUT", *retried]
    assert if_match_sent(first.stderr)[0] == f'"{v1}"'
    assert "the latest, read first" in first.stderr
    now = json.loads(cli("--json", "ehr", "status", ehr_id).stdout)
    assert now["version_uid"] == str(v2) and now["ehr_status"]["is_queryable"] is False

    stale = cli("ehr", "status-update", ehr_id, str(source), "--if-match", str(v1))
    assert stale.exit_code == 4
    assert error_lines(stale.stderr) == [
        f"cwsctl: error: changed since it was read: latest is {v2}"
    ]
    assert f"cwsctl ehr status {ehr_id}" in stale.stderr
    explicit = cli("--json", "ehr", "status-update", ehr_id, str(source), "--if-match", str(v2))
    assert explicit.exit_code == 0, explicit.stderr
    assert json.loads(explicit.stdout)["read_first"] is False


def test_older_versions_by_uid_and_by_time_come_back_exactly(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id, 110)
    v1_latest = cli("composition", "get", ehr_id, v1.object_id).stdout_bytes
    assert cli("composition", "update", ehr_id, v1.object_id, write(tmp_path, 111)).exit_code == 0
    history = json.loads(cli("--json", "composition", "history", ehr_id, v1.object_id).stdout)
    committed_v1 = history["versions"][0]["time_committed"]

    by_uid = cli("composition", "get", ehr_id, v1.object_id, "--version", str(v1))
    assert by_uid.exit_code == 0, by_uid.stderr
    assert by_uid.stdout_bytes == v1_latest  # the same bytes the server gave when v1 was latest
    assert f"version {v1}" in by_uid.stderr
    by_time = cli("composition", "get", ehr_id, v1.object_id, "--at", committed_v1)
    assert by_time.stdout_bytes == v1_latest
    assert systolic(json.loads(by_time.stdout)) == 110

    saved = tmp_path / "saved.json"
    to_file = cli("composition", "get", ehr_id, str(v1), "--output", str(saved))
    assert to_file.exit_code == 0 and to_file.stdout_bytes == b""
    assert saved.read_bytes() == v1_latest
    envelope = json.loads(cli("--json", "composition", "get", ehr_id, str(v1)).stdout)
    assert envelope["status"] == 200 and systolic(envelope["body"]) == 110

    too_early = cli("composition", "get", ehr_id, v1.object_id, "--at", "2000-01-01T00:00:00Z")
    assert too_early.exit_code == 4 and "no composition" in too_early.stderr
    other = "0b6b8f5e-0000-4000-8000-000000000000::cwsctl-sandbox::1"
    mismatch = cli("composition", "get", ehr_id, v1.object_id, "--version", other)
    assert mismatch.exit_code == 2 and "is not a version of composition" in mismatch.stderr
    both = cli(
        "composition", "get", ehr_id, v1.object_id, "--version", str(v1), "--at", committed_v1
    )
    assert both.exit_code == 2


def test_delete_stale_then_read_first_then_deleted_again(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id)
    assert cli("composition", "update", ehr_id, v1.object_id, write(tmp_path, 130)).exit_code == 0

    # EHRbase: 409 "If-Match version_uid does not match latest version", no ETag: one more read.
    stale = cli("-v", "composition", "delete", ehr_id, v1.object_id, "--if-match", str(v1))
    assert stale.exit_code == 4
    v2 = f"{v1.object_id}::{v1.system_id}::2"
    assert error_lines(stale.stderr) == [
        f"cwsctl: error: changed since it was read: latest is {v2}"
    ]
    assert requests_sent(stale.stderr)[:2] == ["DELETE", "GET"]
    assert not if_match_sent(stale.stderr)  # the precondition is the uid in the path

    deleted = cli("composition", "delete", ehr_id, v1.object_id)
    assert deleted.exit_code == 0, deleted.stderr
    assert deleted.stdout.strip() in ("", f"{v1.object_id}::{v1.system_id}::3")
    assert f"based on {v2}" in deleted.stderr

    history = json.loads(cli("--json", "composition", "history", ehr_id, v1.object_id).stdout)
    assert [v["change_type"] for v in history["versions"]] == [
        "creation",
        "modification",
        "deleted",
    ]
    plain = cli("composition", "history", ehr_id, v1.object_id)
    assert [line.split("\t")[0] for line in plain.stdout.splitlines()] == [
        v["version_uid"] for v in history["versions"]
    ]
    gone = cli("composition", "get", ehr_id, v1.object_id)
    assert gone.exit_code == 4 and gone.stdout == ""
    assert "is deleted" in error_lines(gone.stderr)[0]
    again = cli("composition", "delete", ehr_id, v1.object_id)
    assert again.exit_code == 4 and "is deleted" in again.stderr
    # Naming the version it had: EHRbase answers 404 to a deleted composition; one read says so.
    named = cli("composition", "delete", ehr_id, v1.object_id, "--if-match", v2)
    assert named.exit_code == 4
    assert error_lines(named.stderr) == [
        f"cwsctl: error: composition {v1.object_id} is already deleted"
    ]


def test_composition_errors(cli, ehr_id, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    assert cli("composition", "create", ehr_id, str(empty)).exit_code == 2
    assert cli("composition", "create", ehr_id, str(tmp_path / "missing.json")).exit_code == 2
    unknown_ehr = "0b6b8f5e-0000-4000-8000-000000000000"
    body = write(tmp_path, 120)
    result = cli("composition", "create", unknown_ehr, body)
    assert result.exit_code == 4 and f"no EHR {unknown_ehr}" in result.stderr
    unknown = cli("composition", "update", ehr_id, unknown_ehr, body)
    assert unknown.exit_code == 4 and f"no composition {unknown_ehr}" in unknown.stderr
    mixed = cli(
        "composition", "update", ehr_id, f"{unknown_ehr}::h::2", body,
        "--if-match", f"{unknown_ehr}::h::1",
    )  # fmt: skip
    assert mixed.exit_code == 2 and "names version" in error_lines(mixed.stderr)[0]


def test_composition_from_stdin_is_sent_as_is(cli, ehr_id):
    result = cli("composition", "create", ehr_id, "-", input=composition(99))
    assert result.exit_code == 0, result.stderr
    uid = VersionUid.parse(result.stdout.strip())
    read = json.loads(cli("composition", "get", ehr_id, uid.object_id).stdout)
    assert systolic(read) == 99


# -- item 5: AQL by the server's paging rules ---------------------------------------------------


def make_ehrs(cli, count: int, prefix: str = "Q") -> list[str]:
    ids = []
    for n in range(count):
        result = cli("ehr", "create", "--subject-id", f"{prefix}-{n}", "--namespace", NS)
        assert result.exit_code == 0, result.stderr
        ids.append(result.stdout.strip())
    return ids


AQL = "SELECT e/ehr_id/value AS ehr_id, e/time_created/value AS created FROM EHR e"


def sent_queries(stderr: str) -> int:
    return len([line for line in stderr.splitlines() if line.startswith("> POST")])


def test_query_all_pages_stream_every_row_and_csv_header_is_the_columns(cdr, cli):
    ids = make_ehrs(cli, 7)
    paged = cli("-v", "query", AQL, "--all", "--limit", "3", "--format", "csv")
    assert paged.exit_code == 0, paged.stderr
    table = list(csv.reader(io.StringIO(paged.stdout)))
    assert table[0] == ["ehr_id", "created"]
    assert [row[0] for row in table[1:]] == ids
    assert sent_queries(paged.stderr) == 3  # 3 + 3 + 1 rows: the short page ends it
    assert "7 row(s) in 3 page(s)" in paged.stderr

    one_page = cli("query", AQL, "--limit", "3")  # not a terminal: ndjson
    rows = [json.loads(line) for line in one_page.stdout.splitlines()]
    assert [r["ehr_id"] for r in rows] == ids[:3] and set(rows[0]) == {"ehr_id", "created"}
    skipped = cli("query", AQL, "--offset", "5", "--limit", "100")
    assert [json.loads(line)["ehr_id"] for line in skipped.stdout.splitlines()] == ids[5:]

    document = json.loads(cli("--json", "query", AQL, "--all", "--limit", "2").stdout)
    assert document["row_count"] == 7 and [r["ehr_id"] for r in document["rows"]] == ids
    assert [c["name"] for c in document["columns"]] == ["ehr_id", "created"]
    everything = cli("query", AQL, "--all", "--format", "ndjson")  # pages of 1000, or 500
    assert everything.exit_code == 0, everything.stderr
    assert [json.loads(line)["ehr_id"] for line in everything.stdout.splitlines()] == ids

    with_param = cli(
        "query", "SELECT e/ehr_id/value AS id FROM EHR e WHERE e/ehr_id/value = $id",
        "--param", f"id={ids[4]}", "--format", "json",
    )  # fmt: skip
    assert json.loads(with_param.stdout)["rows"] == [{"id": ids[4]}]


def test_offset_without_limit_is_refused_before_sending(cdr, cli):
    make_ehrs(cli, 3)
    refused = cli("-v", "query", AQL, "--offset", "2")
    assert refused.exit_code == 2 and sent_queries(refused.stderr) == 0
    assert error_lines(refused.stderr) == [
        "cwsctl: error: --offset needs --limit: openEHR servers refuse an offset without a fetch"
    ]
    from_offset = cli("query", AQL, "--offset", "2", "--all")  # --all sends a fetch
    assert from_offset.exit_code == 0, from_offset.stderr
    assert len(from_offset.stdout.splitlines()) == 1


def test_aql_with_its_own_limit_is_never_paged(cdr, cli):
    ids = make_ehrs(cli, 5)
    limited = AQL + " LIMIT 2"
    once = cli("-v", "query", limited, "--all", "--format", "ndjson")
    assert once.exit_code == 0, once.stderr
    assert [json.loads(line)["ehr_id"] for line in once.stdout.splitlines()] == ids[:2]
    assert sent_queries(once.stderr) == 1 and "run once, not paged" in once.stderr
    plain = cli("query", limited)
    assert plain.exit_code == 0 and len(plain.stdout.splitlines()) == 2
    for extra in (("--all", "--limit", "1"), ("--limit", "1"), ("--offset", "1", "--limit", "1")):
        refused = cli("-v", "query", limited, *extra)
        assert refused.exit_code == 2, (extra, refused.stderr)
        assert sent_queries(refused.stderr) == 0
        assert error_lines(refused.stderr) == [
            "cwsctl: error: the AQL has its own LIMIT: --limit and --offset do not go with it"
        ]


def test_max_fetch_refusal_pages_with_the_largest_page_allowed(make_openehr_sandbox, cli):
    server = make_openehr_sandbox(max_fetch=2)
    init = ("profile", "init", "small", "--kind", "openehr", "--url", server.base_url)
    assert cli(*init).exit_code == 0
    ids = make_ehrs(_as(cli, "small"), 5)
    everything = cli("-p", "small", "-v", "query", AQL, "--all", "--format", "ndjson")
    assert everything.exit_code == 0, everything.stderr
    assert [json.loads(line)["ehr_id"] for line in everything.stdout.splitlines()] == ids
    assert "the server returns at most 2 rows per request: pages of 2" in everything.stderr
    assert sent_queries(everything.stderr) == 1 + 3  # the refused page of 1000, then 2 + 2 + 1

    too_many = cli("-p", "small", "query", AQL, "--limit", "3")
    assert too_many.exit_code == 4
    assert error_lines(too_many.stderr) == [
        "cwsctl: error: 422 Unprocessable Entity: Fetch parameter 3 exceeds maximum fetch 2"
    ]
    assert "hint: the server returns at most 2 rows per request: use --limit 2" in (too_many.stderr)


def _as(cli, profile: str):
    """``cli`` run as ``profile``."""
    return lambda *args, **kw: cli("-p", profile, *args, **kw)


def test_query_all_stops_at_max_rows_and_exits_4(cdr, cli):
    ids = make_ehrs(cli, 7)
    capped = cli("-v", "query", AQL, "--all", "--limit", "2", "--max-rows", "5", "--format", "json")
    assert capped.exit_code == 4
    document = json.loads(capped.stdout)  # a complete document of the rows written
    assert [r["ehr_id"] for r in document["rows"]] == ids[:5] and document["row_count"] == 5
    assert error_lines(capped.stderr) == [
        "cwsctl: error: stopped at 5 rows (--max-rows): the result set has more"
    ]
    assert "--offset 5" in capped.stderr
    assert sent_queries(capped.stderr) == 3  # 2 + 2 + (1 of the 2 asked: one more row exists)

    exact = cli("query", AQL, "--all", "--limit", "3", "--max-rows", "7", "--format", "ndjson")
    assert exact.exit_code == 0, exact.stderr
    assert len(exact.stdout.splitlines()) == 7
    alone = cli("query", AQL, "--max-rows", "3")
    assert alone.exit_code == 2 and "--max-rows goes with --all" in alone.stderr


def test_query_all_goes_past_the_servers_default_limit(make_openehr_sandbox, cli, tmp_path):
    server = make_openehr_sandbox(default_limit=2)  # EHRbase's default-limit: silent
    init = ("profile", "init", "small", "--kind", "openehr", "--url", server.base_url)
    assert cli(*init).exit_code == 0
    make_ehrs(_as(cli, "small"), 5)
    aql = "SELECT e/ehr_id/value FROM EHR e"
    default = cli("-p", "small", "query", aql)
    assert len(default.stdout.splitlines()) == 2  # the server's own limit
    query_file = tmp_path / "q.aql"
    query_file.write_text(aql)
    from_file = cli("-p", "small", "query", "--file", str(query_file), "--all")
    assert from_file.exit_code == 0, from_file.stderr
    assert len(from_file.stdout.splitlines()) == 5


def test_query_errors_are_one_line(cdr, cli):
    unsupported = cli("query", "SELECT o FROM OBSERVATION o")
    assert unsupported.exit_code == 4
    assert (
        len(error_lines(unsupported.stderr)) == 1
        and "not supported by the sandbox" in unsupported.stderr
    )
    for args in (
        ("query",),
        ("query", "SELECT 1", "--file", "x"),
        ("query", "x", "--param", "bad"),
    ):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert len(error_lines(result.stderr)) == 1


def test_aql_paging_clauses_outside_strings_and_comments():
    assert paging_clauses("SELECT e FROM EHR e LIMIT 10 OFFSET 5") == ["LIMIT", "OFFSET"]
    assert paging_clauses("select top 5 e from EHR e") == ["TOP"]
    assert paging_clauses("SELECT e FROM EHR e LIMIT $n") == ["LIMIT"]
    assert paging_clauses("SELECT e FROM EHR e WHERE e/x = 'LIMIT 5'") == []
    assert paging_clauses("SELECT c/limit FROM COMPOSITION c") == []
    assert paging_clauses("SELECT e FROM EHR e -- LIMIT 3\n") == []
    assert paging_clauses("SELECT e FROM EHR e /* OFFSET 3 */") == []


# -- item 6: inputs EHRbase refuses are refused first ---------------------------------------------


@pytest.mark.parametrize("namespace", ["urn:oid:2.16.840.1", "my ns", "1abc", "ns#1"])
def test_a_namespace_ehrbase_refuses_is_refused_before_sending(cdr, cli, namespace):
    for command in ("create", "show"):
        result = cli("-v", "ehr", command, "--subject-id", "P-1", "--namespace", namespace)
        assert result.exit_code == 2, result.stderr
        assert requests_sent(result.stderr) == []
        [line] = error_lines(result.stderr)
        assert line.startswith(
            f"cwsctl: error: --namespace {namespace!r} is not a subject namespace EHRbase accepts"
        )
        assert "[a-zA-Z][a-zA-Z0-9-_:/&+?]*" in result.stderr
    assert cdr.count_ehrs() == 0
    fine = cli("ehr", "create", "--subject-id", "P-1", "--namespace", "urn:oid:2-16-840-1")
    assert fine.exit_code == 0, fine.stderr


def test_at_takes_a_space_and_sends_iso_8601_with_an_offset(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id)
    status = cli("-v", "ehr", "status", ehr_id, "--at", "2999-01-01 00:00:00")
    assert status.exit_code == 0, status.stderr
    [line] = [x for x in status.stderr.splitlines() if x.startswith("> GET")]
    sent = httpx.URL(line.split()[2]).params["version_at_time"]
    assert sent.startswith("2999-01-01T00:00:00") and re.search(r"[+-]\d\d:\d\d$", sent)
    got = cli("composition", "get", ehr_id, v1.object_id, "--at", "2999-01-01 00:00:00")
    assert got.exit_code == 0, got.stderr
    assert systolic(json.loads(got.stdout)) == 120
    early = cli("composition", "get", ehr_id, v1.object_id, "--at", "2000-01-01 00:00:00")
    assert early.exit_code == 4 and "no composition" in early.stderr


def test_timestamps_become_what_ehrbase_parses():
    assert check_timestamp("2024-05-01T10:00:00Z") == "2024-05-01T10:00:00Z"
    assert check_timestamp("2024-05-01T10:00:00+02:00") == "2024-05-01T10:00:00+02:00"
    assert check_timestamp("2024-05-01 10:00:00+02:00") == "2024-05-01T10:00:00+02:00"
    local = check_timestamp("2024-05-01 10:00:00")
    assert re.fullmatch(r"2024-05-01T10:00:00[+-]\d\d:\d\d", local)
    assert check_timestamp(local) == local
    for bad in ("2024-05-01", "yesterday", "2024-13-01T00:00:00Z"):
        with pytest.raises(InputError):
            check_timestamp(bad)


def test_network_failure_is_exit_6(cli):
    cli(
        "profile",
        "init",
        "gone",
        "--kind",
        "openehr",
        "--url",
        "http://127.0.0.1:9/ehrbase/rest/openehr/v1",
    )
    result = cli(
        "-p", "gone", "ehr", "show", "0b6b8f5e-0000-4000-8000-000000000000", "--timeout", "5"
    )
    assert result.exit_code == 6 and len(error_lines(result.stderr)) == 1


# -- basic auth: works, and the password never shows -----------------------------------------------


@pytest.mark.slow
def test_basic_auth_profile_works_and_the_password_never_shows(
    make_openehr_sandbox, run_cwsctl, tmp_path, cwsctl_home
):
    server = make_openehr_sandbox(basic_auth=("loader", PASSWORD), templates=[vital_signs_opt()])
    password_file = tmp_path / "pw.txt"
    password_file.write_text(PASSWORD + "\n")
    init = run_cwsctl(
        "profile", "init", "cdr", "--kind", "openehr", "--url", server.base_url,
        "--auth", "basic", "--username", "loader", "--password-file", str(password_file),
        "--store-secret", "--default",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    secrets = {PASSWORD.encode(), base64.b64encode(f"loader:{PASSWORD}".encode())}

    outputs = []
    created = run_cwsctl("-v", "ehr", "create", "--subject-id", "B-1", "--namespace", NS)
    assert created.returncode == 0, created.stderr
    ehr = created.stdout.decode().strip()
    outputs.append(created)
    source = tmp_path / "c.json"
    source.write_bytes(composition(120))
    for args in (
        ("--json", "ehr", "show", ehr),
        ("-v", "--json", "composition", "create", ehr, str(source)),
        ("-v", "query", "SELECT e/ehr_id/value FROM EHR e", "--all"),
    ):
        result = run_cwsctl(*args)
        assert result.returncode == 0, (args, result.stderr)
        outputs.append(result)
    assert ehr in outputs[-1].stdout.decode()

    wrong = run_cwsctl("-v", "ehr", "show", ehr, env={"CWSCTL_PASSWORD": "wrong-Guess-77"})
    assert wrong.returncode == 4
    assert len(error_lines(wrong.stderr.decode())) == 1 and "401" in wrong.stderr.decode()
    assert "credentials" in wrong.stderr.decode()
    assert b"wrong-Guess-77" not in wrong.stdout + wrong.stderr
    outputs.append(wrong)

    audit_files = list((cwsctl_home / "audit").rglob("*"))
    assert any(f.is_file() for f in audit_files)
    for secret in secrets:
        for result in outputs:
            assert secret not in result.stdout + result.stderr
        for path in audit_files:
            if path.is_file():
                assert secret not in path.read_bytes()
                assert b"wrong-Guess-77" not in path.read_bytes()
