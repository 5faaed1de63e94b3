"""`cwsctl ehr`, `composition` and `query` end to end, through the real CLI, against the openEHR
flavour of the sandbox: optimistic locking (a race with exactly one winner, --if-match, reading
first), versions by uid and by time, delete and history, AQL paging with --all, and basic auth
whose password never shows.
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

import pytest

from cwsctl.core.errors import InputError
from cwsctl.core.openehr import VersionUid, column_names, parse_query_parameter

pytest.importorskip("starlette")

NS = "urn:cwsctl:external-id:facility:10000"
PASSWORD = "s3cret-Pa55word-x9"
REQUEST_LINE = re.compile(r"^> (GET|POST|PUT|DELETE) http")


def composition(name: str) -> bytes:
    """A canonical-JSON composition, written with deliberate spacing (bytes are sent as is)."""
    template = (
        '{"_type": "COMPOSITION",  "name": {"value": "NAME"},\n'
        ' "archetype_node_id": "openEHR-EHR-COMPOSITION.encounter.v1",\n'
        ' "archetype_details": {"template_id": {"value": "vitals.v1"}}}\n'
    )
    return template.replace("NAME", name).encode()


@pytest.fixture
def cdr(make_openehr_sandbox, cli):
    """An openEHR sandbox (no auth) and a default ``cdr`` profile pointing at it."""
    server = make_openehr_sandbox()
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


def create_composition(cli, tmp_path: Path, ehr_id: str, name: str = "one") -> VersionUid:
    source = tmp_path / f"{name}.json"
    source.write_bytes(composition(name))
    result = cli("composition", "create", ehr_id, str(source), "--template-id", "vitals.v1")
    assert result.exit_code == 0, result.stderr
    return VersionUid.parse(result.stdout.strip())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cwsctl: error:")]


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


# -- compositions -------------------------------------------------------------------------------


def test_if_match_round_trip_and_a_stale_one_names_the_latest(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id)
    assert v1.version == "1"
    (tmp_path / "two.json").write_bytes(composition("two"))
    updated = cli(
        "composition", "update", ehr_id, v1.object_id, str(tmp_path / "two.json"),
        "--if-match", str(v1),
    )  # fmt: skip
    assert updated.exit_code == 0, updated.stderr
    v2 = VersionUid.parse(updated.stdout.strip())
    assert (v2.object_id, v2.version) == (v1.object_id, "2")

    latest = cli("composition", "get", ehr_id, v1.object_id)
    assert json.loads(latest.stdout)["name"]["value"] == "two"

    stale = cli(
        "composition", "update", ehr_id, v1.object_id, str(tmp_path / "two.json"),
        "--if-match", str(v1),
    )  # fmt: skip
    assert stale.exit_code == 4
    assert error_lines(stale.stderr) == [
        f"cwsctl: error: changed since it was read: latest is {v2}"
    ]
    assert f"--if-match {v2}" in stale.stderr
    history = json.loads(cli("--json", "composition", "history", ehr_id, v1.object_id).stdout)
    assert [v["version_uid"] for v in history["versions"]] == [str(v1), str(v2)]


def test_update_without_if_match_reads_the_latest_first(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id)
    (tmp_path / "two.json").write_bytes(composition("two"))
    (tmp_path / "three.json").write_bytes(composition("three"))
    first = cli("-v", "composition", "update", ehr_id, v1.object_id, str(tmp_path / "two.json"))
    assert first.exit_code == 0, first.stderr
    methods = [line.split()[1] for line in first.stderr.splitlines() if REQUEST_LINE.match(line)]
    assert methods == ["GET", "PUT"]
    assert f'if-match: "{v1}"' in first.stderr.lower()
    assert "the latest, read first" in first.stderr

    second = cli(
        "--json", "composition", "update", ehr_id, v1.object_id, str(tmp_path / "three.json")
    )
    assert second.exit_code == 0, second.stderr
    document = json.loads(second.stdout)
    assert document["preceding_version_uid"] == f"{v1.object_id}::{v1.system_id}::2"
    assert document["read_first"] is True
    assert document["version_uid"] == f"{v1.object_id}::{v1.system_id}::3"


def test_a_uid_naming_a_version_is_the_version_the_update_is_based_on(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id)
    (tmp_path / "two.json").write_bytes(composition("two"))
    assert cli("composition", "update", ehr_id, str(v1), str(tmp_path / "two.json")).exit_code == 0
    stale = cli("composition", "update", ehr_id, str(v1), str(tmp_path / "two.json"))
    assert stale.exit_code == 4 and "changed since it was read: latest is" in stale.stderr


def test_two_updaters_race_and_exactly_one_wins(cli, ehr_id, tmp_path, cwsctl_home):
    v1 = create_composition(cli, tmp_path, ehr_id)
    processes = []
    for name in ("alice", "bob"):
        source = tmp_path / f"{name}.json"
        source.write_bytes(composition(name))
        args = ["composition", "update", ehr_id, v1.object_id, str(source), "--if-match", str(v1)]
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
    stored = json.loads(cli("composition", "get", ehr_id, v1.object_id).stdout)["name"]["value"]
    assert stored in ("alice", "bob")
    history = json.loads(cli("--json", "composition", "history", ehr_id, v1.object_id).stdout)
    assert len(history["versions"]) == 2


def test_older_versions_by_uid_and_by_time_come_back_exactly(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id, "original")
    v1_latest = cli("composition", "get", ehr_id, v1.object_id).stdout_bytes
    (tmp_path / "new.json").write_bytes(composition("changed"))
    assert (
        cli("composition", "update", ehr_id, v1.object_id, str(tmp_path / "new.json")).exit_code
        == 0
    )
    history = json.loads(cli("--json", "composition", "history", ehr_id, v1.object_id).stdout)
    committed_v1 = history["versions"][0]["time_committed"]

    by_uid = cli("composition", "get", ehr_id, v1.object_id, "--version", str(v1))
    assert by_uid.exit_code == 0, by_uid.stderr
    assert by_uid.stdout_bytes == v1_latest  # the same bytes the server gave when v1 was latest
    assert f"version {v1}" in by_uid.stderr
    by_time = cli("composition", "get", ehr_id, v1.object_id, "--at", committed_v1)
    assert by_time.stdout_bytes == v1_latest
    original = json.loads(composition("original"))
    answered = json.loads(by_time.stdout)
    assert answered.pop("uid")["value"] == str(v1)
    assert answered == original

    saved = tmp_path / "saved.json"
    to_file = cli("composition", "get", ehr_id, str(v1), "--output", str(saved))
    assert to_file.exit_code == 0 and to_file.stdout_bytes == b""
    assert saved.read_bytes() == v1_latest
    envelope = json.loads(cli("--json", "composition", "get", ehr_id, str(v1)).stdout)
    assert envelope["status"] == 200 and envelope["body"]["name"]["value"] == "original"

    too_early = cli("composition", "get", ehr_id, v1.object_id, "--at", "2000-01-01T00:00:00Z")
    assert too_early.exit_code == 4 and "no composition" in too_early.stderr
    other = "0b6b8f5e-0000-4000-8000-000000000000::cwsctl-sandbox::1"
    mismatch = cli("composition", "get", ehr_id, v1.object_id, "--version", other)
    assert mismatch.exit_code == 2 and "is not a version of composition" in mismatch.stderr
    both = cli(
        "composition", "get", ehr_id, v1.object_id, "--version", str(v1), "--at", committed_v1
    )
    assert both.exit_code == 2


def test_delete_reads_first_then_history_shows_the_deletion(cli, ehr_id, tmp_path):
    v1 = create_composition(cli, tmp_path, ehr_id)
    (tmp_path / "two.json").write_bytes(composition("two"))
    assert (
        cli("composition", "update", ehr_id, v1.object_id, str(tmp_path / "two.json")).exit_code
        == 0
    )

    stale = cli("composition", "delete", ehr_id, v1.object_id, "--if-match", str(v1))
    assert stale.exit_code == 4
    v2 = f"{v1.object_id}::{v1.system_id}::2"
    assert error_lines(stale.stderr) == [
        f"cwsctl: error: changed since it was read: latest is {v2}"
    ]

    deleted = cli("composition", "delete", ehr_id, v1.object_id)
    assert deleted.exit_code == 0, deleted.stderr
    assert deleted.stdout.strip() == f"{v1.object_id}::{v1.system_id}::3"
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


def test_composition_errors(cli, ehr_id, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    assert cli("composition", "create", ehr_id, str(empty)).exit_code == 2
    assert cli("composition", "create", ehr_id, str(tmp_path / "missing.json")).exit_code == 2
    unknown_ehr = "0b6b8f5e-0000-4000-8000-000000000000"
    (tmp_path / "c.json").write_bytes(composition("c"))
    result = cli("composition", "create", unknown_ehr, str(tmp_path / "c.json"))
    assert result.exit_code == 4 and f"no EHR {unknown_ehr}" in result.stderr
    unknown = cli("composition", "update", ehr_id, unknown_ehr, str(tmp_path / "c.json"))
    assert unknown.exit_code == 4 and f"no composition {unknown_ehr}" in unknown.stderr
    bad = cli("composition", "update", ehr_id, "a::b::1", str(tmp_path / "c.json"))
    assert bad.exit_code == 4  # the server's own words, and no hint that does not fit
    assert error_lines(bad.stderr)[0].startswith("cwsctl: error: 400 Bad Request: PUT takes")
    assert "hint:" not in bad.stderr
    mixed = cli(
        "composition", "update", ehr_id, f"{unknown_ehr}::h::2", str(tmp_path / "c.json"),
        "--if-match", f"{unknown_ehr}::h::1",
    )  # fmt: skip
    assert mixed.exit_code == 2 and "names version" in error_lines(mixed.stderr)[0]


def test_composition_from_stdin_is_sent_as_is(cli, ehr_id):
    result = cli("composition", "create", ehr_id, "-", input=composition("piped"))
    assert result.exit_code == 0, result.stderr
    uid = VersionUid.parse(result.stdout.strip())
    read = json.loads(cli("composition", "get", ehr_id, uid.object_id).stdout)
    assert read["name"]["value"] == "piped"


# -- AQL ----------------------------------------------------------------------------------------


def test_query_all_pages_stream_every_row_and_csv_header_is_the_columns(cdr, cli):
    ids = []
    for n in range(7):
        result = cli("ehr", "create", "--subject-id", f"Q-{n}", "--namespace", NS)
        assert result.exit_code == 0, result.stderr
        ids.append(result.stdout.strip())
    aql = "SELECT e/ehr_id/value AS ehr_id, e/time_created/value AS created FROM EHR e"

    paged = cli("-v", "query", aql, "--all", "--limit", "3", "--format", "csv")
    assert paged.exit_code == 0, paged.stderr
    table = list(csv.reader(io.StringIO(paged.stdout)))
    assert table[0] == ["ehr_id", "created"]
    assert [row[0] for row in table[1:]] == ids
    posts = [line for line in paged.stderr.splitlines() if line.startswith("> POST")]
    assert len(posts) == 3  # 3 + 3 + 1 rows: the short page ends it
    assert "7 row(s) in 3 page(s)" in paged.stderr

    one_page = cli("query", aql, "--limit", "3")  # not a terminal: ndjson
    rows = [json.loads(line) for line in one_page.stdout.splitlines()]
    assert [r["ehr_id"] for r in rows] == ids[:3] and set(rows[0]) == {"ehr_id", "created"}
    skipped = cli("query", aql, "--offset", "5")
    assert [json.loads(line)["ehr_id"] for line in skipped.stdout.splitlines()] == ids[5:]

    document = json.loads(cli("--json", "query", aql, "--all", "--limit", "2").stdout)
    assert document["row_count"] == 7 and [r["ehr_id"] for r in document["rows"]] == ids
    assert [c["name"] for c in document["columns"]] == ["ehr_id", "created"]

    with_param = cli(
        "query", "SELECT e/ehr_id/value AS id FROM EHR e WHERE e/ehr_id/value = $id",
        "--param", f"id={ids[4]}", "--format", "json",
    )  # fmt: skip
    assert json.loads(with_param.stdout)["rows"] == [{"id": ids[4]}]


def test_query_all_goes_past_the_servers_default_page(make_openehr_sandbox, cli, tmp_path):
    server = make_openehr_sandbox(default_fetch=2)
    assert (
        cli("profile", "init", "small", "--kind", "openehr", "--url", server.base_url).exit_code
        == 0
    )
    for n in range(5):
        assert (
            cli(
                "-p", "small", "ehr", "create", "--subject-id", f"S{n}", "--namespace", NS
            ).exit_code
            == 0
        )
    aql = "SELECT e/ehr_id/value FROM EHR e"
    default = cli("-p", "small", "query", aql)
    assert len(default.stdout.splitlines()) == 2  # the server's own fetch
    everything = cli("-p", "small", "query", aql, "--all", "--limit", "2", "--format", "ndjson")
    assert len(everything.stdout.splitlines()) == 5
    query_file = tmp_path / "q.aql"
    query_file.write_text(aql)
    from_file = cli("-p", "small", "query", "--file", str(query_file), "--all")
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


def test_basic_auth_profile_works_and_the_password_never_shows(
    make_openehr_sandbox, run_cwsctl, tmp_path, cwsctl_home
):
    server = make_openehr_sandbox(basic_auth=("loader", PASSWORD))
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
    source.write_bytes(composition("auth"))
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
