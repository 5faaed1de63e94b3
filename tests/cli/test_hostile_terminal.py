"""The real CLI on a pseudo-terminal against servers (and stored data) full of control sequences.

Beside the hostile-server catalogue (tests/core/test_hostile_server.py): every command that prints
what a server answered or what was stored runs as a subprocess whose stdout and stderr are the
slave side of a pty (``os.openpty``), as a person at a terminal runs it. The servers answer with
ESC/CSI/OSC/BEL sequences, C1 controls (U+009B, a one-byte CSI to many terminals) and bidi
overrides in bodies, error documents, reason phrases, header values, column names and cells.
Whatever the exit status, nothing that a terminal obeys may reach it: no ESC, no BEL, no C1, no
bidi override, no byte that is not UTF-8; and what was escaped is still recognisable
(``\\x1b[31mRED`` is shown as text).

``CATALOGUE`` is a table of (command, server answer); adding a case is one line. The profiles
run with ``NO_COLOR`` (cwsctl then writes no escape sequence of its own, so any ESC seen is the
server's); one case per shape also runs in colour, where only cwsctl's own SGR styling may appear.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cwsctl.core import keys
from cwsctl.core.profile import Config, Profile, Store
from cwsctl.core.text import printable, printable_block
from cwsctl.protocols.cws_signature import Algorithm, TrustedKey
from cwsctl.targets.cws.settings import CwsSettings
from cwsctl.targets.openehr.settings import OpenEhrSettings
from cwsctl.targets.openemr.settings import OpenEmrSettings
from tests.hostile_server import SERVER_SIGNER, Answer, HostileServer

# -- what a hostile server says -----------------------------------------------------------------
#: SGR colour, OSC window title ended by BEL, a C1 CSI (U+009B) clearing the screen, an OSC 8
#: hyperlink, a bidi override and a line separator: each a different way to drive a terminal.
HOSTILE = (
    "\x1b[31mRED\x1b[0m \x1b]0;PWNED\x07 \x9b2J \x1b]8;;http://evil.example/\x1b\\link"
    "\x1b]8;;\x1b\\ \u202eevil\u202c \u2028 \x7f end"
)
#: How the escaped ESC of HOSTILE must appear (as text, or as JSON's escape of it).
RECOGNISABLE = re.compile(r"\\(x1b|u001b)\[31mRED")
#: C1 bytes as they go in a header value or reason phrase (UTF-8 of U+009B), plus U+202E.
HOSTILE_HEADER = "\xc2\x9b2J C1 \xe2\x80\xae rtl"
EHR_ID = "7d44b88c-4199-4bad-97dc-d78268e01398"
UID = "8849182c-82ad-4088-a07f-48ead4180515"


def _json(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def ok(document: object, *, status: str = "HTTP/1.1 200 OK", **headers: str) -> Answer:
    extra = [("X-Note", HOSTILE_HEADER), *headers.items()]
    return Answer(status_line=status, headers=extra, body=_json(document))


#: The server answers, each a function of the request (paths vary by command).
ANSWERS: dict[str, Callable[..., Answer]] = {
    "json_body": lambda request: ok({"name": HOSTILE, "nested": [{"note": HOSTILE}]}),
    "raw_body": lambda request: Answer(
        headers=[("X-Note", HOSTILE_HEADER)],
        body=HOSTILE.encode("utf-8") + b"\nsecond line \x9b raw C1 byte\r\n",
        content_type="text/plain",
    ),
    "cws_error": lambda request: Answer("HTTP/1.1 400 Bad Request", body=_json({"error": HOSTILE})),
    "openemr_validation": lambda request: Answer(
        "HTTP/1.1 400 Bad Request", body=_json({"validationErrors": {"fname": HOSTILE}})
    ),
    "fhir_outcome": lambda request: Answer(
        "HTTP/1.1 422 Unprocessable Entity",
        body=_json(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": HOSTILE}],
            }
        ),
    ),
    "openehr_message": lambda request: Answer(
        "HTTP/1.1 400 Bad Request", body=_json({"error": HOSTILE, "message": HOSTILE})
    ),
    "raw_error": lambda request: Answer(
        "HTTP/1.1 500 Internal \xc2\x9bServer Error",
        headers=[("X-Note", HOSTILE_HEADER)],
        body=HOSTILE.encode("utf-8") + b"\n<html>\n" + HOSTILE.encode("utf-8"),
        content_type="text/html",
    ),
    "reason_phrase": lambda request: Answer(
        f"HTTP/1.1 418 I'm a \xc2\x9b31m teapot {HOSTILE_HEADER}",
        headers=[("X-Note", HOSTILE_HEADER)],
        body=_json({"error": HOSTILE}),
    ),
    # OAuth dynamic registration: an unusable client_id, and a usable one with hostile extras.
    "register_bad_id": lambda request: Answer(
        "HTTP/1.1 201 Created", body=_json({"client_id": HOSTILE, "scope": "openid"})
    ),
    "register_ok": lambda request: Answer(
        "HTTP/1.1 201 Created",
        body=_json(
            {
                "client_id": "-AbC_123",
                "scope": "openid " + HOSTILE,
                "client_name": HOSTILE,
                "registration_access_token": "t0ken",
            }
        ),
    ),
    # openEHR shapes: an EHR, a revision history, a template list, an AQL result set.
    "ehr": lambda request: ok(
        {
            "ehr_id": {"value": EHR_ID},
            "system_id": {"value": HOSTILE},
            "time_created": {"value": HOSTILE},
        },
        status="HTTP/1.1 201 Created",
        Location=f"/ehr/{EHR_ID}",
        ETag=f'"{EHR_ID}"',
    ),
    "ehr_status": lambda request: ok(
        {
            "_type": "EHR_STATUS",
            "uid": {"value": f"{UID}::sys::1"},
            "name": {"value": HOSTILE},
            "subject": {"external_ref": {"id": {"value": HOSTILE}, "namespace": "x"}},
        },
        ETag=f'"{UID}::sys::1"',
    ),
    "composition": lambda request: ok(
        {"_type": "COMPOSITION", "name": {"value": HOSTILE}, "uid": {"value": f"{UID}::s::1"}},
        ETag=f'"{UID}::s::1"',
    ),
    "history": lambda request: ok(
        {
            "items": [
                {
                    "version_id": {"value": f"{UID}::\x1b[31mRED::1"},
                    "audits": [
                        {
                            "time_committed": {"value": HOSTILE},
                            "change_type": {"value": HOSTILE},
                            "committer": {"name": HOSTILE},
                            "description": {"value": HOSTILE},
                        }
                    ],
                }
            ]
        }
    ),
    "templates": lambda request: ok(
        [
            {
                "template_id": "\x1b[31mRED\x9b2J",
                "concept": HOSTILE,
                "archetype_id": HOSTILE,
                "created_timestamp": HOSTILE,
            }
        ]
    ),
    "aql": lambda request: ok(
        {
            "q": "SELECT x",
            "columns": [{"name": "\x1b[31mRED col\x9b2J", "path": HOSTILE}, {"name": "n"}],
            "rows": [[HOSTILE, {"v": HOSTILE}], ["\x1b[31mRED", 1]],
        }
    ),
}


# -- running on a pseudo-terminal ---------------------------------------------------------------
@dataclass
class TtyRun:
    code: int
    output: bytes  # stdout and stderr as the terminal received them

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace").replace("\r\n", "\n")


def run_on_tty(home: Path, *args: str, color: bool = False, timeout: float = 60) -> TtyRun:
    """``python -m cwsctl ARGS`` with stdout and stderr on a pty (500 columns), stdin closed;
    everything the terminal would show, read until EOF."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 500, 0, 0))
    env = {**os.environ, "CWSCTL_HOME": str(home), "TERM": "xterm-256color", "COLUMNS": "500"}
    for var in ("CWSCTL_PROFILE", "CWSCTL_DEBUG", "CWSCTL_TIMEOUT", "NO_COLOR", "FORCE_COLOR"):
        env.pop(var, None)
    if not color:
        env["NO_COLOR"] = "1"
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "cwsctl", *args],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no EOF on the terminal within {timeout} s: {b''.join(chunks)!r}"
            readable, _, _ = select.select([master], [], [], min(left, 1.0))
            if not readable:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave descriptor is closed
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return TtyRun(code, b"".join(chunks))


#: cwsctl's own sequences that may reach a terminal: the progress bar's cursor handling, and
#: (in colour only) SGR styling.
OWN_SEQUENCES = re.compile(rb"\x1b\[\?25[lh]|\x1b\[2K|\x1b\[1A|\x1b\[\d*G")
OWN_STYLES = re.compile(rb"\x1b\[[0-9;]*m")


def assert_terminal_safe(run: TtyRun, *, color: bool = False) -> str:
    """No control a terminal obeys in what it received; returns the text for further checks."""
    raw = OWN_SEQUENCES.sub(b"", run.output)
    if color:
        assert b"\x1b[31mRED" not in raw, run.output  # the server's own colour, raw
        raw = OWN_STYLES.sub(b"", raw)
    assert b"\x1b" not in raw, f"raw ESC reached the terminal: {run.output!r}"
    assert b"\x07" not in raw, f"raw BEL reached the terminal: {run.output!r}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # e.g. a raw 0x9b byte: a C1 CSI to an 8-bit terminal
        raise AssertionError(f"bytes that are not UTF-8 reached the terminal: {exc}") from exc
    bad = sorted({f"U+{ord(ch):04X}" for ch in text if 0x80 <= ord(ch) <= 0x9F})
    assert not bad, f"C1 controls reached the terminal: {bad}: {run.output!r}"
    assert not set(text) & set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028"), (
        f"bidi overrides or line separators reached the terminal: {run.output!r}"
    )
    assert "Traceback" not in text and "internal error" not in text, text
    return text.replace("\r\n", "\n")


# -- profiles -----------------------------------------------------------------------------------
def cws_profile(home: Path, url: str, client_key, signer_key) -> None:
    pem = keys.public_key_pem(signer_key.public_key()).decode("ascii")
    store = Store(home)
    profile = Profile(
        name="default",
        url=url,
        settings=CwsSettings(
            username="tester", algorithm=Algorithm.SHA256, trusted=[TrustedKey(SERVER_SIGNER, pem)]
        ),
    )
    store.save(Config(default_profile="default", profiles={"default": profile}))
    keys.save_private_key(store.private_key_path("default"), client_key, None, overwrite=True)


def openehr_profile(home: Path, url: str) -> None:
    store = Store(home)
    profile = Profile(
        name="default", url=url, kind="openehr", settings=OpenEhrSettings(auth="none")
    )
    store.save(Config(default_profile="default", profiles={"default": profile}))


def openemr_profile(home: Path, url: str, client_key, client_id: str = "") -> None:
    store = Store(home)
    profile = Profile(
        name="default", url=url, kind="openemr", settings=OpenEmrSettings(client_id=client_id)
    )
    store.save(Config(default_profile="default", profiles={"default": profile}))
    keys.save_private_key(store.private_key_path("default"), client_key, None, overwrite=True)


def stored_profiles(home: Path, url: str, client_key, signer_key) -> None:
    """Settings as an older cwsctl, a hand edit or another user could have stored them: a cws
    profile with a hostile username and pinned-key name, an openemr one with a hostile client
    id, and an audit log whose entries quote a server."""
    from cwsctl.core.audit import AuditLog

    cws_profile(home, url, client_key, signer_key)
    store = Store(home)
    config = store.load()
    config.profiles["default"].settings.username = "tester\x1b[31mRED\x9b2J"
    config.profiles["default"].settings.trusted[0].username = "coremr\x1b]0;PWNED\x07"
    config.profiles["emr"] = Profile(
        name="emr", url=url, kind="openemr", settings=OpenEmrSettings(client_id=HOSTILE)
    )
    store.save(config)
    entry = {
        "time": "2026-01-01T00:00:00.000+00:00",
        "profile": "default",
        "method": "GET\x1b[31mRED",
        "path": "/ws/" + HOSTILE,
        "status": 200,
        "verified": False,
        "signer": None,
        "duration_ms": 1.0,
        "error": HOSTILE,
    }
    path = AuditLog(store.root, "default").path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry) + "\n")


# -- the catalogue ------------------------------------------------------------------------------
@dataclass
class Case:
    """One command against one server answer; ``shows``: the text must still be recognisable."""

    kind: str  # the profile: cws, openehr, openemr or stored (see _prepare)
    args: tuple[str, ...]
    answer: str | None  # a key of ANSWERS; None: the command asks no server
    shows: bool = True
    files: dict[str, str] = field(default_factory=dict)  # name -> content, made in the cwd
    written: tuple[str, ...] = ()  # files the command writes for people: no controls either


PATIENT = (
    *("--external-id", "X1", "--facility", "10000", "--agency", "1", "--billing-agency", "1"),
    *("--fname", "A", "--lname", "B", "--dob", "2000-04-12", "--sex", "M"),
    *("--booking-no", "B1", "--booking-date", "2023-04-07"),
)
PATIENT_CSV = (
    "external_id,facility,agency,billing_agency,fname,lname,dob,sex,booking_no,booking_date\n"
    "X1,10000,1,1,A,B,2000-04-12,M,B1,2023-04-07\nX2,10000,1,1,C,D,2000-04-12,M,B2,2023-04-07\n"
)

CATALOGUE: dict[str, Case] = {
    # request: the body on a terminal (pretty JSON, raw text), -v headers, --json, errors
    "request-json-body": Case("cws", ("request", "GET", "/ws/"), "json_body"),
    "request-raw-body": Case("cws", ("request", "GET", "/ws/"), "raw_body"),
    "request-v-headers": Case("cws", ("-v", "request", "GET", "/ws/"), "json_body"),
    "request-v-show-body": Case("cws", ("-v", "request", "--show-body", "GET", "/ws/"), "raw_body"),
    "request-json": Case("cws", ("--json", "request", "GET", "/ws/"), "json_body"),
    "request-json-raw": Case("cws", ("--json", "request", "GET", "/ws/"), "raw_body"),
    "request-cws-error": Case("cws", ("request", "GET", "/ws/"), "cws_error"),
    "request-openemr-validation": Case("cws", ("request", "GET", "/ws/"), "openemr_validation"),
    "request-fhir-outcome": Case("cws", ("request", "GET", "/ws/"), "fhir_outcome"),
    "request-openehr-message": Case("cws", ("request", "GET", "/ws/"), "openehr_message"),
    "request-raw-error": Case("cws", ("request", "GET", "/ws/"), "raw_error"),
    "request-reason-phrase": Case("cws", ("request", "GET", "/ws/"), "reason_phrase"),
    "request-v-raw-error": Case("cws", ("-v", "request", "GET", "/ws/"), "raw_error"),
    # patients create: one row, and a bulk load's summary on a terminal
    "patients-create-created": Case("cws", ("patients", "create", *PATIENT), "json_body"),
    "patients-create-error": Case("cws", ("patients", "create", *PATIENT), "cws_error"),
    "patients-create-validation": Case(
        "cws", ("patients", "create", *PATIENT), "openemr_validation"
    ),
    "patients-bulk-error": Case(
        "cws",
        ("patients", "create", "--from", "rows.csv", "--report", "report.csv"),
        "cws_error",
        shows=False,  # the summary counts rows; the server's words are in the report
        files={"rows.csv": PATIENT_CSV},
        written=("report.csv",),
    ),
    "patients-bulk-raw-error": Case(
        "cws",
        ("patients", "create", "--retries", "0", "--from", "rows.csv", "--report", "r.json"),
        "raw_error",
        shows=False,
        files={"rows.csv": PATIENT_CSV},
        written=("r.json",),
    ),
    "patients-bulk-created": Case(
        "cws",
        ("patients", "create", "--from", "rows.csv"),
        "json_body",
        shows=False,
        files={"rows.csv": PATIENT_CSV},
    ),
    # stored settings and logs
    "profile-list": Case("stored", ("profile", "list"), None),
    "profile-show": Case("stored", ("profile", "show"), None, shows=False),
    "profile-show-openemr": Case("stored", ("profile", "show", "emr"), None),
    "profile-list-json": Case("stored", ("--json", "profile", "list"), None),
    "audit": Case("stored", ("audit",), None),
    "audit-json": Case("stored", ("--json", "audit"), None),
    "oauth-token-stored-client-id": Case(
        "stored", ("-p", "emr", "oauth", "token"), None, shows=False
    ),
    # verify: the signer's name comes from the answer's header, kept in FILE.sig
    "verify-signer-name": Case(
        "cws",
        ("verify", "body.json"),
        None,
        shows=False,
        files={
            "body.json": "{}",
            "body.json.sig": "CWS-SHA256 Access=coremr\x1b[31mRED\x9b2J, Signature=AAAA\n",
        },
    ),
    # oauth register: what the registration endpoint answers
    "oauth-register-hostile-client-id": Case("openemr", ("oauth", "register"), "register_bad_id"),
    "oauth-register-answer": Case("openemr", ("oauth", "register"), "register_ok", shows=False),
    "oauth-register-answer-json": Case("openemr", ("--json", "oauth", "register"), "register_ok"),
    # doctor's checks quote the server
    "doctor-error": Case("cws", ("doctor",), "cws_error"),
    "doctor-raw-error": Case("cws", ("doctor",), "raw_error"),
    "doctor-reason": Case("cws", ("doctor",), "reason_phrase", shows=False),
    # openEHR commands
    "ehr-create": Case(
        "openehr", ("ehr", "create", "--subject-id", "s1", "--namespace", "ns"), "ehr"
    ),
    "ehr-create-json": Case(
        "openehr", ("--json", "ehr", "create", "--subject-id", "s1", "--namespace", "ns"), "ehr"
    ),
    "ehr-create-error": Case(
        "openehr", ("ehr", "create", "--subject-id", "s1", "--namespace", "ns"), "openehr_message"
    ),
    "ehr-show": Case("openehr", ("ehr", "show", EHR_ID), "ehr"),
    "ehr-status": Case("openehr", ("ehr", "status", EHR_ID), "ehr_status"),
    "composition-get": Case("openehr", ("composition", "get", EHR_ID, UID), "composition"),
    "composition-get-error": Case(
        "openehr", ("composition", "get", EHR_ID, UID), "openehr_message"
    ),
    "composition-history": Case("openehr", ("composition", "history", EHR_ID, UID), "history"),
    "template-list": Case("openehr", ("template", "list"), "templates"),
    "query-table": Case("openehr", ("query", "SELECT x"), "aql"),
    "query-csv": Case("openehr", ("query", "SELECT x", "--format", "csv"), "aql"),
    "query-json": Case("openehr", ("query", "SELECT x", "--format", "json"), "aql"),
    "query-ndjson": Case("openehr", ("query", "SELECT x", "--format", "ndjson"), "aql"),
    "query-error": Case("openehr", ("query", "SELECT x"), "openehr_message"),
}


@pytest.fixture
def terminal_server(hostile_server: HostileServer) -> HostileServer:
    hostile_server.behaviour = "scripted"
    return hostile_server


def _prepare(case: Case, home: Path, server: HostileServer, client_key, tmp_path: Path) -> None:
    server.script = ANSWERS[case.answer] if case.answer else None
    if case.kind == "cws":
        cws_profile(home, server.url, client_key, server.signer_key)
    elif case.kind == "openehr":
        openehr_profile(home, server.url)
    elif case.kind == "openemr":
        openemr_profile(home, server.url, client_key)
    else:
        stored_profiles(home, server.url, client_key, server.signer_key)
    for name, content in case.files.items():
        (tmp_path / name).write_text(content)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_nothing_a_terminal_obeys_reaches_it(
    name, cwsctl_home, terminal_server, rsa2048, tmp_path, monkeypatch
):
    case = CATALOGUE[name]
    _prepare(case, cwsctl_home, terminal_server, rsa2048, tmp_path)
    monkeypatch.chdir(tmp_path)
    run = run_on_tty(cwsctl_home, *case.args)
    text = assert_terminal_safe(run)
    if case.answer is not None:
        assert terminal_server.answered, "the command never asked the server"
    if case.shows:
        assert RECOGNISABLE.search(text), text
    for name in case.written:
        written = (tmp_path / name).read_bytes()
        assert b"\x1b" not in written and b"\x07" not in written, written
        assert not re.search(rb"\xc2[\x80-\x9f]", written), written


#: One case per way of printing, again in colour (rich styles, the JSON highlighter).
IN_COLOUR = [
    "request-json-body",
    "request-raw-body",
    "request-v-headers",
    "request-cws-error",
    "ehr-show",
    "composition-history",
    "template-list",
    "query-table",
    "doctor-error",
]


@pytest.mark.parametrize("name", IN_COLOUR)
def test_in_colour_only_cwsctl_styles_reach_the_terminal(
    name, cwsctl_home, terminal_server, rsa2048, tmp_path, monkeypatch
):
    case = CATALOGUE[name]
    _prepare(case, cwsctl_home, terminal_server, rsa2048, tmp_path)
    monkeypatch.chdir(tmp_path)
    run = run_on_tty(cwsctl_home, *case.args, color=True)
    text = assert_terminal_safe(run, color=True)
    if case.shows:
        assert RECOGNISABLE.search(OWN_STYLES.sub("", text) if False else text) or re.search(
            r"\\(x1b|u001b)", text
        ), text


# -- the sanitiser itself -----------------------------------------------------------------------
def test_printable_escapes_every_control_and_keeps_one_line():
    text = printable(HOSTILE + "\r\nnext\tline")
    assert "\n" not in text and "\r" not in text and "\t" not in text
    assert "\\x1b[31mRED" in text and "\\x07" in text and "\\u009b2J" in text
    assert "\\u202e" in text and "\\u007f" in text
    assert all(ch.isprintable() for ch in text)
    assert printable("é 中文 ok") == "é 中文 ok"
    assert printable("x" * 500).endswith("…") and len(printable("x" * 500)) == 200
    assert len(printable("x" * 500, limit=None)) == 500


def test_printable_block_keeps_lines_and_stays_json():
    document = json.dumps({"a": HOSTILE}, ensure_ascii=False, indent=2)
    shown = printable_block(document)
    assert json.loads(shown) == {"a": HOSTILE}  # the escapes are JSON's own
    assert "\n" in shown and all(ch.isprintable() for ch in shown.replace("\n", ""))
    assert printable_block("a\r\nb\rc") == "a\r\nb\\x0dc"


# -- item 18: one rule for an OAuth client id ---------------------------------------------------
BAD_CLIENT_IDS = {
    "escape": "abc\x1b[31m",
    "c1": "abc\x9bdef",
    "newline": "abc\ndef",
    "space": "abc def",
    "non-ascii": "abcé",
    "too-long": "a" * 256,
    "empty": "",
}


@pytest.mark.parametrize("bad", list(BAD_CLIENT_IDS))
def test_a_bad_client_id_from_the_user_is_refused_before_anything_is_stored(
    bad, run_cwsctl, cwsctl_home, rsa2048
):
    value = BAD_CLIENT_IDS[bad]
    init = run_cwsctl(
        "profile", "init", "emr", "--kind", "openemr", "--url", "http://127.0.0.1:9",
        "--client-id", value, "--timeout", "0.5",
    )  # fmt: skip
    assert init.returncode == 2, init.stderr
    assert b"--client-id" in init.stderr and b"\x1b" not in init.stderr
    assert "emr" not in Store(cwsctl_home).load().profiles
    openemr_profile(cwsctl_home, "http://127.0.0.1:9", rsa2048)
    register = run_cwsctl("oauth", "register", "--client-id", value)
    assert register.returncode == 2, register.stderr
    assert b"--client-id" in register.stderr and b"\x1b" not in register.stderr
    assert Store(cwsctl_home).load().profiles["default"].settings.client_id == ""


def test_a_client_id_may_begin_with_a_dash_and_be_255_long(run_cwsctl, cwsctl_home, rsa2048):
    openemr_profile(cwsctl_home, "http://127.0.0.1:9", rsa2048)
    for value in ("-AbC_123~.", "x" * 255):
        done = run_cwsctl("oauth", "register", f"--client-id={value}")
        assert done.returncode == 0, done.stderr
        assert Store(cwsctl_home).load().profiles["default"].settings.client_id == value
    init = run_cwsctl(
        "profile", "init", "emr", "--kind", "openemr", "--url", "http://127.0.0.1:9",
        "--client-id=-Zz9", "--timeout", "0.5",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert Store(cwsctl_home).load().profiles["emr"].settings.client_id == "-Zz9"


@pytest.mark.parametrize("answered", ["\x1b[31mRED", "a\nb", "x" * 100_000, "a b"])
def test_an_unusable_client_id_from_the_server_is_exit_5_and_not_stored(
    answered, run_cwsctl, cwsctl_home, terminal_server, rsa2048
):
    terminal_server.script = lambda request: Answer(
        "HTTP/1.1 201 Created",
        body=_json({"client_id": answered, "registration_access_token": "t0ken"}),
    )
    openemr_profile(cwsctl_home, terminal_server.url, rsa2048)
    done = run_cwsctl("oauth", "register")
    assert done.returncode == 5, done.stderr
    assert b"unusable client_id" in done.stderr
    assert b"\x1b[31m" not in done.stderr and len(done.stderr) < 2000
    assert Store(cwsctl_home).load().profiles["default"].settings.client_id == ""
    assert not (cwsctl_home / "tokens" / "default.json").exists()
    assert terminal_server.answered[0].request.target.endswith("/registration")


# -- stored clinical data: what another user wrote into a real (sandbox) server -----------------
SUBJECT = "\x1b[31mRED\x1b]0;PWNED\x07\u009b2J"
SUBJECT_AQL = (
    "SELECT e/ehr_id/value AS ehr_id, e/ehr_status/subject/external_ref/id/value AS subject "
    "FROM EHR e"
)
STORED = {
    "ehr-status": ("ehr", "status", "{ehr_id}"),
    "query-table": ("query", SUBJECT_AQL),
    "query-csv": ("query", SUBJECT_AQL, "--format", "csv"),
    "query-json": ("query", SUBJECT_AQL, "--format", "json"),
}


@pytest.mark.parametrize("name", list(STORED))
def test_stored_clinical_data_reaches_the_terminal_escaped(name, cwsctl_home, openehr_sandbox):
    """Another client (cwsctl refuses such a subject id) stored an EHR whose subject id holds
    control sequences; every command that shows it escapes them."""
    import httpx

    from cwsctl.targets.openehr.subject import ehr_create_request

    made = ehr_create_request(SUBJECT, "ns")
    answer = httpx.post(
        openehr_sandbox.base_url + made.path, content=made.body, headers=made.headers
    )
    assert answer.status_code == 201, answer.text
    ehr_id = answer.json()["ehr_id"]["value"]
    openehr_profile(cwsctl_home, openehr_sandbox.base_url)
    run = run_on_tty(cwsctl_home, *(a.format(ehr_id=ehr_id) for a in STORED[name]))
    text = assert_terminal_safe(run)
    assert run.code == 0, text
    assert RECOGNISABLE.search(text), text
