"""The real CLI, as a subprocess, against a server that misbehaves on purpose (tests/hostile_server.py).

Every broken answer must end with its documented exit code (6 network, 7 signature), within the
exchange's deadline, with one ``cwsctl: error:`` line (and maybe a ``hint:``) on stderr, no
traceback, and nothing on stdout: a body is never printed when it could not be verified. A
slow but complete, correctly signed answer must succeed. ``patients create`` must lose nothing and
create nothing twice when the answers to its POSTs are cut off.

Two clocks bound each case: the wall clock around the subprocess (deadline + 1 s + interpreter
start-up slack, generous enough for a loaded 2-CPU machine, tight enough to catch a hang) and the
server's own clock from accepting the connection to seeing the client go away (deadline + 1 s,
with no start-up in it).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cwsctl.core import keys
from cwsctl.core.bulk.rows import REQUIRED_FIELDS, WALKTHROUGH_EXAMPLE
from cwsctl.core.profile import Config, Profile, Store
from cwsctl.protocols.cws_signature import Algorithm, TrustedKey
from cwsctl.targets.cws.settings import CwsSettings
from tests.hostile_server import SERVER_SIGNER, Answer, HostileServer

TIMEOUT = 2.0  # --timeout for `cwsctl request` in the catalogue
STARTUP_SLACK = 6.0  # starting Python and importing cwsctl, twice over, on a busy machine
SMALL_CAP = "1MiB"
DEFAULT_CAP = 64 * 1024 * 1024
MIB = 1024 * 1024


@dataclass
class Run:
    code: int
    stdout: bytes
    stderr: str
    elapsed: float


def cwsctl(home: Path, *args: str) -> Run:
    """Run ``python -m cwsctl ARGS`` as cron would (stdin closed, no terminal), timed."""
    env = {**os.environ, "CWSCTL_HOME": str(home)}
    for var in ("CWSCTL_PROFILE", "CWSCTL_TIMEOUT", "CWSCTL_DEBUG", "CWSCTL_MAX_RESPONSE_SIZE"):
        env.pop(var, None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cwsctl", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    return Run(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"), elapsed)


def assert_one_error_line(run: Run) -> None:
    """stderr is ``cwsctl: error: …`` plus at most a ``hint: …`` line; no traceback."""
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert lines and lines[0].startswith("cwsctl: error: "), run.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), run.stderr
    assert "internal error" not in run.stderr, run.stderr


def server_span(server: HostileServer, settle: float = 3.0) -> float:
    """Seconds from the first accepted connection until the last handler ended.

    The client has exited when this is called; each handler sees that within a fraction of a
    second (its waits poll every 0.25 s), so wait for them to settle first.
    """
    until = time.monotonic() + settle
    while any(c.ended_at is None for c in server.connections) and time.monotonic() < until:
        time.sleep(0.05)
    records = list(server.connections)
    assert records, "the client never connected"
    assert all(c.ended_at is not None for c in records), [c.end for c in records]
    return max(c.ended_at for c in records) - min(c.accepted_at for c in records)  # type: ignore[type-var]


def save_profile(home: Path, url: str, client_key, trusted: TrustedKey) -> None:
    """The ``default`` profile: ``url``, user ``tester`` with ``client_key``, ``trusted`` pinned."""
    store = Store(home)
    profile = Profile(
        name="default",
        url=url,
        settings=CwsSettings(username="tester", algorithm=Algorithm.SHA256, trusted=[trusted]),
    )
    store.save(Config(default_profile="default", profiles={"default": profile}))
    keys.save_private_key(store.private_key_path("default"), client_key, None, overwrite=True)


def set_profile_url(home: Path, url: str) -> None:
    store = Store(home)
    config = store.load()
    config.profiles["default"].url = url
    store.save(config)


@pytest.fixture
def hostile_profile(cwsctl_home: Path, hostile_server: HostileServer, rsa2048, hostile_signer_key):
    """A profile pointing at the hostile server, its signing key pinned as ``coremr``."""
    pem = keys.public_key_pem(hostile_signer_key.public_key()).decode("ascii")
    save_profile(cwsctl_home, hostile_server.url, rsa2048, TrustedKey(SERVER_SIGNER, pem))
    return hostile_server


# -- `cwsctl request GET /ws/` against each behaviour ------------------------------------------
# (behaviour, exit code, what the message must say)
BROKEN = [
    ("endless_chunked", 6, "larger than 1 MiB"),
    ("endless_close", 6, "larger than 1 MiB"),
    ("trickle", 6, "no complete answer within 2 s"),
    ("not_http", 6, "not valid HTTP"),
    ("ssh_banner", 6, "no complete answer within 2 s"),
    ("header_flood_big", 6, "not valid HTTP"),
    ("header_flood_wide", 6, "not valid HTTP"),
    # 10,000 five-byte headers fit h11's 100 KiB head limit: the answer is well-formed HTTP,
    # and then it carries no signature.
    ("header_flood_many", 7, "signature"),
    ("bad_chunked", 6, "not valid HTTP"),
    ("reset_mid_body", 6, "lost the connection"),
    ("short_close", 6, "cut off"),
    ("short_stall", 6, "no complete answer within 2 s"),
    ("unsigned", 7, "signature"),
    ("gzip", 6, "gzip"),
]


@pytest.mark.parametrize(("behaviour", "expected", "says"), BROKEN, ids=[b[0] for b in BROKEN])
@pytest.mark.timing
@pytest.mark.slow
def test_request_ends_cleanly_against_a_broken_answer(
    cwsctl_home, hostile_profile, behaviour, expected, says
):
    server = hostile_profile
    server.behaviour = behaviour
    args = ["request", "GET", "/ws/", "--timeout", str(TIMEOUT), "--max-response-size", SMALL_CAP]
    run = cwsctl(cwsctl_home, *args)
    span = server_span(server)
    print(f"\n{behaviour}: exit {run.code}, {run.elapsed:.2f} s wall, {span:.2f} s at the server")
    assert run.code == expected, run.stderr
    assert_one_error_line(run)
    assert says in run.stderr, run.stderr
    assert run.stdout == b""
    assert span < TIMEOUT + 1.0, f"the exchange lasted {span:.2f} s at the server"
    assert run.elapsed < TIMEOUT + 1.0 + STARTUP_SLACK
    assert server.answered, "the server never got a complete request"


@pytest.mark.timing
@pytest.mark.slow
def test_trickle_ends_by_the_deadline_not_per_read(cwsctl_home, hostile_profile):
    """One byte every 0.5 s: each read is quick, the whole exchange is not."""
    server = hostile_profile
    server.behaviour, server.trickle_interval = "trickle", 0.5
    run = cwsctl(cwsctl_home, "request", "GET", "/ws/", "--timeout", "3")
    span = server_span(server)
    print(f"\ntrickle --timeout 3: {run.elapsed:.2f} s wall, {span:.2f} s at the server")
    assert run.code == 6, run.stderr
    assert_one_error_line(run)
    assert run.stdout == b""
    trickled = sum(c.trickled for c in server.connections)
    assert trickled >= 3, "the trickle did not get going"  # several reads, each one quick
    assert span < 4.0
    assert run.elapsed < 4.0 + STARTUP_SLACK


@pytest.mark.timing
@pytest.mark.slow
def test_slow_but_complete_signed_answer_succeeds(cwsctl_home, hostile_profile):
    server = hostile_profile
    server.behaviour = "slow_complete"
    run = cwsctl(cwsctl_home, "request", "GET", "/ws/", "--timeout", "3")
    span = server_span(server)
    print(f"\nslow_complete: exit {run.code}, {run.elapsed:.2f} s wall, {span:.2f} s at the server")
    assert run.code == 0, run.stderr
    assert run.stdout == server.body  # byte for byte, as signed
    assert "Traceback" not in run.stderr
    assert span >= 1.0  # it really was slow: six pieces 0.2 s apart
    assert len(server.answered) == 1


@pytest.mark.timing
@pytest.mark.slow
def test_slow_complete_saves_the_exact_body_and_signature(cwsctl_home, hostile_profile, tmp_path):
    server = hostile_profile
    server.behaviour = "slow_complete"
    out = tmp_path / "answer.json"
    run = cwsctl(cwsctl_home, "request", "GET", "/ws/", "--timeout", "3", "-o", str(out))
    assert run.code == 0, run.stderr
    assert out.read_bytes() == server.body
    assert Path(f"{out}.sig").exists()


@pytest.mark.timing
def test_server_stops_promptly_mid_behaviour(hostile_signer_key):
    """Teardown while a client is stuck in a trickle and another in an endless body."""
    import socket

    with HostileServer(signer_key=hostile_signer_key) as server:
        clients = []
        for behaviour in ("trickle", "endless_close", "short_stall"):
            server.behaviour = behaviour
            client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(100)
            clients.append(client)
        started = time.monotonic()
    stopped = time.monotonic() - started  # __exit__ asserts every thread has ended
    for client in clients:
        client.close()
    assert stopped < 2.0
    assert [c.behaviour for c in server.connections] == ["trickle", "endless_close", "short_stall"]


# -- memory against an endless body with the default 64 MiB cap --------------------------------
RSS_WRAPPER = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, check=False)
print(json.dumps({
    "code": done.returncode,
    "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "stdout_len": len(done.stdout),
    "stderr": done.stderr.decode("utf-8", "replace"),
}))
"""


def peak_rss(home: Path, *args: str) -> dict:
    """Run cwsctl under a fresh wrapper whose only child it is; its peak RSS in KiB."""
    env = {**os.environ, "CWSCTL_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, sys.executable, "-m", "cwsctl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize("behaviour", ["endless_chunked", "endless_close"])
@pytest.mark.timing
@pytest.mark.slow
def test_endless_body_memory_stays_under_the_default_cap(cwsctl_home, hostile_profile, behaviour):
    server = hostile_profile
    server.behaviour = "signed"
    baseline = peak_rss(cwsctl_home, "request", "GET", "/ws/", "--timeout", "20")
    assert baseline["code"] == 0, baseline["stderr"]
    server.behaviour = behaviour
    started = time.monotonic()
    endless = peak_rss(cwsctl_home, "request", "GET", "/ws/", "--timeout", "20")
    elapsed = time.monotonic() - started
    sent = sum(c.bytes_sent for c in server.connections if c.behaviour == behaviour)
    peak_mib = endless["maxrss_kib"] / 1024
    print(
        f"\n{behaviour}, default cap: peak RSS {peak_mib:.1f} MiB "
        f"(a verified small answer: {baseline['maxrss_kib'] / 1024:.1f} MiB), "
        f"{sent / MIB:.1f} MiB sent by the server, {elapsed:.2f} s"
    )
    assert endless["code"] == 6, endless["stderr"]
    assert "larger than 64 MiB" in endless["stderr"]
    assert endless["stdout_len"] == 0
    assert "Traceback" not in endless["stderr"]
    assert sent >= DEFAULT_CAP  # the client really read up to the cap
    assert sent < server.byte_limit  # and then stopped reading, long before the server's limit
    assert peak_mib < DEFAULT_CAP / MIB + 64


# -- patients create --------------------------------------------------------------------------
COLUMNS = list(REQUIRED_FIELDS)


def patient(i: int) -> dict:
    return {
        "external_id": f"EXT{i:05d}",
        "facility": 10000,
        "agency": 2,
        "billing_agency": 1,
        "fname": f"First{i}",
        "lname": "Name",
        "dob": "2000-04-12",
        "sex": "M",
        "booking_no": f"BK{i}",
        "booking_date": "2023-04-07T10:00:00",
    }


def patient_options(i: int) -> list[str]:
    args = []
    for name, value in patient(i).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


SINGLE_ROW = [
    "endless_chunked",
    "trickle",
    "reset_mid_body",
    "short_close",
    "bad_chunked",
    "not_http",
]


@pytest.mark.parametrize("behaviour", SINGLE_ROW)
@pytest.mark.timing
def test_single_patient_create_against_a_broken_answer(cwsctl_home, hostile_profile, behaviour):
    server = hostile_profile
    server.behaviour = behaviour
    args = ["patients", "create", *patient_options(1), "--timeout", "2"]
    run = cwsctl(cwsctl_home, *args, "--max-response-size", SMALL_CAP)
    span = server_span(server)
    print(f"\npatients create / {behaviour}: exit {run.code}, {run.elapsed:.2f} s wall")
    assert run.code == 6, run.stderr
    assert_one_error_line(run)
    assert "outcome is unknown" in run.stderr  # the POST went out: it may have been applied
    assert run.stdout == b""
    # A POST is never re-sent blindly after its answer was lost.
    assert [c.request.method for c in server.answered] == ["POST"]  # type: ignore[union-attr]
    sent = json.loads(server.answered[0].request.body)  # type: ignore[union-attr]
    assert sent["external_id"] == "EXT00001"
    assert span < 2.0 + 1.0
    assert run.elapsed < 2.0 + 1.0 + STARTUP_SLACK


def write_rows(path: Path, n: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for i in range(n):
            writer.writerow(patient(i))
    return path


def stored_once(sandbox, n: int) -> None:
    """Every one of the ``n`` patients is in the sandbox exactly once, and nothing else is."""
    for i in range(n):
        matches = sandbox.store.find_patients(f"EXT{i:05d}")
        assert len(matches) == 1, f"EXT{i:05d} stored {len(matches)} times"
    assert sandbox.store.count_patients() == n


MANGLED = {"EXT00001": "endless", "EXT00002": "trickle", "EXT00004": "reset"}
ROWS = 6


@pytest.fixture
def mangling_proxy(cwsctl_home, hostile_server, sandbox, sandbox_profile):
    """The hostile server as a proxy to the sandbox, mangling the answers to MANGLED's POSTs."""
    host, _, port = sandbox.url.removeprefix("http://").rpartition(":")
    hostile_server.behaviour = "proxy"
    hostile_server.upstream = (host, int(port))
    hostile_server.mangle = dict(MANGLED)
    hostile_server.trickle_interval = 0.5
    set_profile_url(cwsctl_home, hostile_server.url)
    return hostile_server


def bulk_args(source: Path, report: Path, *extra: str) -> list[str]:
    return [
        "patients",
        "create",
        "--from",
        str(source),
        "--report",
        str(report),
        "--timeout",
        "2",
        "--json",
        *extra,
        "--max-response-size",
        SMALL_CAP,
    ]


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    return {e["external_id"]: (e["outcome"], e["message"]) for e in json.loads(report.read_text())}


@pytest.mark.slow
def test_bulk_cut_off_answers_are_in_doubt_then_looked_up_not_resent(
    cwsctl_home, sandbox, mangling_proxy, tmp_path
):
    """The sandbox acts on every POST; the client sees three of the answers cut off.

    First run (no retries): exit 6, those three rows ``unknown`` in the journal. Resume through
    the same proxy with the mangling switched off: the three rows are looked up (GET) and found,
    none is POSTed again, the other three are skipped without being sent; exit 0. The sandbox
    then holds each patient exactly once.
    """
    proxy = mangling_proxy
    source = write_rows(tmp_path / "rows.csv", ROWS)
    report = tmp_path / "report.json"
    first = cwsctl(cwsctl_home, *bulk_args(source, report, "--retries", "0", "--concurrency", "3"))
    print(f"\nbulk, answers cut off: exit {first.code}, {first.elapsed:.2f} s")
    assert first.code == 6, first.stderr
    assert "Traceback" not in first.stderr
    summary = json.loads(first.stdout)
    assert summary["unknown"] == len(MANGLED) and summary["created"] == ROWS - len(MANGLED)
    first_outcomes = outcomes(report)
    assert {ext for ext, (outcome, _) in first_outcomes.items() if outcome == "unknown"} == set(
        MANGLED
    )
    mangled_posts = [e for e in proxy.proxy_log if e[3] is not None]
    assert sorted(e[2] for e in mangled_posts) == sorted(MANGLED)  # each cut off exactly once
    stored_once(sandbox, ROWS)  # the server did act on the cut-off POSTs

    proxy.mangle = {}
    proxy.proxy_log.clear()
    resumed = cwsctl(cwsctl_home, *bulk_args(source, report))
    assert resumed.code == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["exists"] == len(MANGLED) and summary["skipped"] == ROWS - len(MANGLED)
    assert {ext: o for ext, (o, _) in outcomes(report).items() if ext in MANGLED} == dict.fromkeys(
        MANGLED, "exists"
    )
    assert [e for e in proxy.proxy_log if e[0] == "POST"] == []  # nothing re-sent
    looked_up = sorted(e[1] for e in proxy.proxy_log if e[0] == "GET")
    assert len(looked_up) == len(MANGLED)
    assert all("external_id=EXT0000" in target for target in looked_up)
    stored_once(sandbox, ROWS)


@pytest.mark.slow
def test_bulk_retry_looks_up_a_cut_off_row_in_the_same_run(
    cwsctl_home, sandbox, mangling_proxy, tmp_path
):
    """With retries, a row whose answer was cut off is looked up before any re-send, and found."""
    proxy = mangling_proxy
    source = write_rows(tmp_path / "rows.csv", ROWS)
    report = tmp_path / "report.json"
    run = cwsctl(cwsctl_home, *bulk_args(source, report, "--retries", "1", "--concurrency", "2"))
    print(f"\nbulk with a retry: exit {run.code}, {run.elapsed:.2f} s")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["created"] == ROWS - len(MANGLED) and summary["exists"] == len(MANGLED)
    for ext in MANGLED:
        assert outcomes(report)[ext] == ("exists", "found by lookup")
        posts = [e for e in proxy.proxy_log if e[0] == "POST" and e[2] == ext]
        assert len(posts) == 1, posts  # sent once; the retry was a look-up
    stored_once(sandbox, ROWS)


# -- issue 20: redirects, hostile JSON, local header errors, secrets that cannot be sent ------
def test_a_redirect_is_exit_4_and_says_it_was_not_followed(cwsctl_home, hostile_profile, tmp_path):
    """A 3xx is not a success (a POST answered 301 created nothing): exit 4, one error line."""
    hostile_profile.behaviour = "scripted"
    hostile_profile.script = lambda request: Answer(
        status_line="HTTP/1.1 301 Moved Permanently",
        headers=[("Location", "https://elsewhere.example.org/ws/patients/")],
        body=hostile_profile.body,
    )
    body = tmp_path / "b.json"
    body.write_bytes(b"{}")
    quiet = cwsctl(cwsctl_home, "-q", "request", "POST", "/ws/patients/", str(body))
    assert quiet.code == 4, quiet.stderr
    assert_one_error_line(quiet)
    assert "redirect" in quiet.stderr and "not followed" in quiet.stderr
    loud = cwsctl(cwsctl_home, "request", "GET", "/ws/")
    assert loud.code == 4
    assert "301 Moved Permanently" in loud.stderr and "redirects are not followed" in loud.stderr
    assert len(hostile_profile.answered) == 2  # one request each: nothing followed


DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"error": ' + b'{"a": ' * 600 + b"1" + b"}" * 600 + b"}"


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["list", "object"])
@pytest.mark.parametrize("status", ["200 OK", "422 Unprocessable Entity"])
@pytest.mark.slow
def test_deeply_nested_json_never_crashes(cwsctl_home, hostile_profile, body, status):
    """A server can send JSON nested past Python's recursion limit: it is shown as non-JSON
    (--json: a string body; an error: the start of the body), never an internal error."""
    hostile_profile.behaviour = "scripted"
    hostile_profile.script = lambda request: Answer(status_line=f"HTTP/1.1 {status}", body=body)
    for extra in ([], ["--json"], ["-v"]):
        run = cwsctl(cwsctl_home, "request", "GET", "/ws/", *extra)
        assert run.code == (0 if status.startswith("200") else 4), run.stderr
        assert "Traceback" not in run.stderr and "internal error" not in run.stderr
        if extra == ["--json"]:
            assert isinstance(json.loads(run.stdout)["body"], str)
    quiet = cwsctl(cwsctl_home, "-q", "request", "GET", "/ws/")
    if status.startswith("4"):
        assert_one_error_line(quiet)


def _bad_local(run: Run, code: int = 2) -> None:
    assert run.code == code, run.stderr
    assert_one_error_line(run)
    assert "outcome" not in run.stderr and "cut off" not in run.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-H", "Bad Name: x"], "header"),
        (["-H", "X-Note: caf\u00e9"], "X-Note"),
        (["-H", "X-Note: a\r\nX-Evil: b"], "X-Note"),
        (["-H", "X-Note: a\x7fb"], "X-Note"),
        (["-H", "X-N\u00f6te: a"], "header"),
    ],
)
def test_local_header_errors_are_exit_2_and_nothing_is_sent(
    cwsctl_home, hostile_profile, args, says
):
    for method in ("GET", "POST"):
        run = cwsctl(cwsctl_home, "request", method, "/ws/", *args)
        _bad_local(run)
        assert says in run.stderr
        assert "a\r" not in run.stderr and "X-Evil" not in run.stderr
    assert hostile_profile.connections == []


def test_a_method_with_a_space_is_exit_2_and_nothing_is_sent(cwsctl_home, hostile_profile):
    run = cwsctl(cwsctl_home, "request", "GE T", "/ws/")
    _bad_local(run)
    assert "method" in run.stderr
    assert hostile_profile.connections == []


def test_a_cws_username_with_a_newline_is_exit_3_before_sending(cwsctl_home, hostile_profile):
    store = Store(cwsctl_home)
    config = store.load()
    config.profiles["default"].settings.username = "tester\r\nX-Evil: 1"
    store.save(config)
    run = cwsctl(cwsctl_home, "request", "GET", "/ws/")
    _bad_local(run, 3)
    assert "username" in run.stderr and "X-Evil" not in run.stderr
    assert hostile_profile.connections == []


SECRET = "s3cr3t-value"


def _openehr_profile(home: Path, url: str, auth: str, *extra: str) -> None:
    init = [
        "profile",
        "init",
        "ehr",
        "--kind",
        "openehr",
        "--url",
        url,
        "--auth",
        auth,
        "--default",
    ]
    done = cwsctl(home, *init, *extra)
    assert done.code == 0, done.stderr


def cwsctl_env(home: Path, env: dict[str, str], *args: str) -> Run:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return cwsctl(home, *args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CWSCTL_TOKEN", SECRET + "\r"),
        ("CWSCTL_TOKEN", SECRET + "\n" + SECRET),
        ("CWSCTL_TOKEN", "t\u00f6ken-" + SECRET),
        ("CWSCTL_PASSWORD", SECRET + "\r"),
        ("CWSCTL_PASSWORD", SECRET + "\n" + SECRET),
    ],
)
def test_a_secret_that_cannot_be_a_header_is_exit_2_naming_its_source(
    cwsctl_home, hostile_server, variable, value
):
    auth = "bearer" if variable == "CWSCTL_TOKEN" else "basic"
    _openehr_profile(
        cwsctl_home, hostile_server.url, auth, *(["--username", "u"] if auth == "basic" else [])
    )
    for args in (
        ["request", "GET", "/ehr"],
        ["request", "POST", "/ehr"],
        ["-q", "request", "GET", "/ehr"],
    ):
        run = cwsctl_env(cwsctl_home, {variable: value}, *args)
        _bad_local(run)
        assert variable in run.stderr
        assert SECRET not in run.stderr and "ken-" not in run.stderr and "ss-" not in run.stderr
    assert hostile_server.connections == []


def test_a_stored_token_that_cannot_be_a_header_is_exit_3(cwsctl_home, hostile_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_bytes(b"ab\x00" + SECRET.encode() + b"\n")
    _openehr_profile(
        cwsctl_home, hostile_server.url, "bearer", "--token-file", str(token_file), "--store-secret"
    )
    run = cwsctl(cwsctl_home, "request", "GET", "/ehr")
    _bad_local(run, 3)
    assert "stored" in run.stderr and SECRET not in run.stderr
    assert hostile_server.connections == []


def test_a_bulk_load_with_a_bad_token_sends_nothing_and_reports_no_secret(
    cwsctl_home, hostile_server, tmp_path
):
    _openehr_profile(cwsctl_home, hostile_server.url, "bearer")
    rows = tmp_path / "rows.csv"
    with rows.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(WALKTHROUGH_EXAMPLE))
        writer.writeheader()
        writer.writerow(WALKTHROUGH_EXAMPLE)
    report = tmp_path / "report.csv"
    run = cwsctl_env(
        cwsctl_home,
        {"CWSCTL_TOKEN": SECRET + "\r"},
        "patients",
        "create",
        "--from",
        str(rows),
        "--report",
        str(report),
    )
    assert run.code == 2, run.stderr
    assert SECRET not in run.stderr
    assert not report.exists() or SECRET not in report.read_text()
    assert hostile_server.connections == []
