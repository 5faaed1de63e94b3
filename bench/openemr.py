"""The OpenEMR kind's goals of issue 13, measured in one run (a measurement with verdicts).

Against two local sandboxes started as their own processes on free loopback ports with fresh
data dirs — ``cwsctl sandbox serve --kind openemr --token-lifetime S`` and the CWS one
(``cwsctl sandbox serve --key-bits B``) — with one profile of each kind (``emr``: openemr,
``keygen --bits B``, ``oauth register``, the administrator's ``sandbox openemr enable-client``,
then ``oauth login --no-browser`` with this script as the browser, since OpenEMR lets only a
signed-in user write patients; ``cws``: ``keygen --bits B``, ``sandbox add-key``, ``profile
trust`` of the sandbox's server key), it measures:

1. **Token reuse**: a bash loop of ``--calls`` ``cwsctl -q -p emr request GET
   /apis/default/fhir/Patient?_id=none`` (a fresh process per call, as a shell script or cron job
   runs it). The sign-in's cached access token is dropped first (the refresh token stays), so the
   loop starts with an empty cache: its first call makes a refresh-token grant. The token
   requests the sandbox got during the loop are counted from its access log (``POST
   /oauth2/default/token``). Allowed: ``ceil(elapsed / lifetime) + 1`` — one per lifetime the
   loop spans, plus the first. PASS when the loop made at most that many. With
   ``--renewal-lifetime`` (default 2 s) a second OpenEMR sandbox with that short lifetime and a
   slower loop shows the renewals happening (context, not a verdict).
2. **Bulk**: ``cwsctl -q --json -p emr patients create --from rows.csv`` versus the same with
   ``-p cws``, ``--rows`` rows each (fresh external ids, CSV and journal per run, default
   concurrency), run alternately ``--reps`` times; wall time of the whole process gives rows/s;
   each sandbox's SQLite must hold exactly ``--rows`` new patients per run. An openemr row costs
   two requests (OpenEMR creates on every POST, so cwsctl looks each patient up by its pubpid
   first: one GET, then the POST); the per-run line counts both from the access log. PASS when
   the median openemr rows/s is at least the median CWS rows/s.

Exit status: 0 whatever the verdicts; 2 if the setup fails. Every process it starts is stopped
on the way out (also on Ctrl-C/SIGTERM). Standard library only; run from the project's
virtualenv: ``python bench/openemr.py [--rows N] [--calls N] [--token-lifetime S] [--bits B]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bulk import children_cpu, count_patients, cwsctl_prefix, loadavg, process_cpu, write_csv
from sandbox_process import (
    Sandbox,
    SetupError,
    clean_env,
    free_port,
    machine,
    remove_work_dir,
)

EMR, CWS, RENEW = "emr", "cws", "emr-renew"
USERNAME = "bench"
GET_PATH = "/apis/default/fhir/Patient?_id=none"
TOKEN_LINE = "POST /oauth2/default/token "
GET_LINE = "GET /apis/default/fhir/Patient "
POST_LINE = "POST /apis/default/fhir/Patient "
#: bench/bulk.py's rows are all in this facility (pubpid = FACILITY:EXTERNAL_ID).
FACILITY = "10000"
#: cwsctl reuses a token until min(10 s, 10 % of its lifetime) before it expires
#: (cwsctl/protocols/oauth2/tokens.py, REUSE_MARGIN_S and reuse_margin); only used to explain the figures.
REUSE_MARGIN_S = 10.0
LOOP_TIMEOUT_PER_CALL_S = 30.0
BULK_TIMEOUT_S = 900.0


def reuse_margin(lifetime: float) -> float:
    return min(REUSE_MARGIN_S, 0.1 * lifetime)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- processes ------------------------------------------------------------------------------
def run_bounded(
    argv: list[str], env: dict[str, str], timeout: float
) -> tuple[int, str, str, float]:
    """Run a command in its own process group: (exit, stdout, stderr, wall seconds).

    Past ``timeout`` the whole group (bash and the cwsctl it started) is killed (exit -9)."""
    start = time.perf_counter()
    proc = spawn(argv, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        err += f"\n[killed after {timeout:.0f} s]"
    except BaseException:  # Ctrl-C, SIGTERM: leave nothing behind
        kill_group(proc)
        proc.wait()
        raise
    return proc.returncode, out, err, time.perf_counter() - start


def spawn(
    argv: list[str], env: dict[str, str], stdout: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """Start a command in its own process group (so :func:`kill_group` stops all of it), stdin
    closed, stderr piped, text mode."""
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group this bench started for ``proc`` (by its id)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def setup_cmd(cws: list[str], env: dict[str, str], args: list[str], what: str) -> str:
    code, out, err, _ = run_bounded([*cws, *args], env, 180)
    if code != 0:
        raise SetupError(f"{what}: exit {code}: {err.strip()[-500:]}")
    return out


def start_sandbox(
    env: dict[str, str],
    cws: list[str],
    work: Path,
    name: str,
    bits: int,
    *,
    kind: str | None = None,
    token_lifetime: int | None = None,
) -> Sandbox:
    """A sandbox with its access log on (the token requests are counted from it)."""
    sandbox = Sandbox(
        env,
        work / f"data-{name}",
        free_port(),
        work / f"{name}.log",
        key_bits=bits,
        cws=cws,
        kind=kind,
        token_lifetime=token_lifetime,
    )
    try:
        sandbox.wait_ready()
    except SetupError:
        sandbox.stop()
        raise
    return sandbox


def log_size(sandbox: Sandbox) -> int:
    return sandbox.log_path.stat().st_size


def log_lines_since(sandbox: Sandbox, offset: int) -> list[str]:
    with sandbox.log_path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", "replace").splitlines()


def count_requests(sandbox: Sandbox, offset: int, expect_gets: int) -> tuple[int, int, int, int]:
    """(token requests answered 200, other token requests, FHIR Patient GETs, FHIR Patient
    POSTs) logged since ``offset``.

    Waits (at most 5 s) until the access log shows ``expect_gets`` GETs: it is written by
    another process."""
    deadline = time.monotonic() + 5
    while True:
        lines = log_lines_since(sandbox, offset)
        ok = sum(1 for x in lines if TOKEN_LINE + "200" in x)
        other = sum(1 for x in lines if TOKEN_LINE in x) - ok
        gets = sum(1 for x in lines if GET_LINE in x)
        posts = sum(1 for x in lines if POST_LINE in x)
        if gets >= expect_gets or time.monotonic() > deadline:
            return ok, other, gets, posts
        time.sleep(0.05)


# -- setup ----------------------------------------------------------------------------------
def setup_openemr_profile(
    cws: list[str], env: dict[str, str], name: str, sandbox: Sandbox, key: str | None, bits: int
) -> None:
    """``profile init NAME --kind openemr``, a key (``keygen`` or ``keys import``), ``oauth
    register``, the administrator's enable step (``sandbox openemr enable-client``: OpenEMR keeps
    a new client with user/ scopes disabled) and ``oauth login`` as a user (client credentials
    cannot write patients in OpenEMR; a user's refresh token can)."""
    p = ["-p", name]
    setup_cmd(
        cws,
        env,
        ["profile", "init", name, "--kind", "openemr", "--url", sandbox.url],
        f"profile init {name}",
    )
    if key is None:
        setup_cmd(cws, env, [*p, "keygen", "--bits", str(bits)], f"keygen ({name})")
    else:
        setup_cmd(cws, env, [*p, "keys", "import", key], f"keys import ({name})")
    register_and_sign_in(cws, env, name, sandbox)
    forget_access_token(Path(env["CWSCTL_HOME"]), name)


def register_and_sign_in(cws: list[str], env: dict[str, str], name: str, sandbox: Sandbox) -> None:
    """:func:`register_and_enable` and :func:`sign_in`. Also used by bench/percall.py."""
    register_and_enable(cws, env, name, sandbox.data_dir)
    sign_in(cws, env, name)


def register_and_enable(
    cws: list[str], env: dict[str, str], name: str, data_dir: Path, *register_args: str
) -> str:
    """``-p NAME oauth register --client-name bench [REGISTER_ARGS]`` and the administrator's
    enable step (``sandbox openemr enable-client``: OpenEMR keeps a new client with user/ scopes
    disabled) on the sandbox's ``data_dir``; the client id. Also used by bench/export.py and
    bench/export_resume.py (with ``--export-scopes``)."""
    register = [*("-p", name), "oauth", "register", "--client-name", "bench", *register_args]
    client_id = setup_cmd(cws, env, register, f"oauth register ({name})").strip()
    enable = ["sandbox", "openemr", "enable-client", "--data-dir", str(data_dir)]
    setup_cmd(cws, env, [*enable, "--", client_id], f"enable-client ({name})")
    return client_id


def forget_access_token(home: Path, name: str) -> None:
    """Drop the sign-in's cached access token (the refresh token stays), so the token loop starts
    with an empty cache as cron would after an hour: its first call makes a refresh grant.

    The file is cwsctl's token cache (``TokenStore`` in cwsctl/protocols/oauth2/tokens.py, key ``access``);
    rewritten in place, so it keeps its 0600 mode."""
    path = home / "tokens" / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.pop("access", None) is None:
        raise SetupError(f"oauth login ({name}) cached no access token in {path}")
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def sign_in(cws: list[str], env: dict[str, str], name: str, wait: float = 30.0) -> None:
    """``cwsctl -p NAME oauth login --no-browser`` with this script as the browser: GET the URL
    it prints (the sandbox's authorize page approves at once and redirects to cwsctl's loopback
    callback, which urllib follows)."""
    argv = [*cws, "-p", name, "oauth", "login", "--no-browser", "--wait", str(wait)]
    proc = spawn(argv, env, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("http"):
                with urllib.request.urlopen(line.strip(), timeout=wait) as answer:
                    answer.read()
                break
        rest = proc.communicate(timeout=wait)[1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        kill_group(proc)
        proc.wait()
        raise SetupError(f"oauth login ({name}): {exc}") from None
    except BaseException:  # Ctrl-C, SIGTERM: leave nothing behind
        kill_group(proc)
        proc.wait()
        raise
    if proc.returncode != 0:
        text = ("".join(lines) + (rest or "")).strip()[-500:]
        raise SetupError(f"oauth login ({name}): exit {proc.returncode}: {text}")


def setup_cws_profile(
    cws: list[str], env: dict[str, str], work: Path, data_dir: Path, url: str, bits: int
) -> None:
    """Profile ``cws`` with its own key, registered with the sandbox, the sandbox key trusted
    (bench/bulk.py's setup with ``keygen`` instead of ``openssl genrsa``)."""
    p = ["-p", CWS]
    public = work / "cws.public.pem"
    setup_cmd(
        cws,
        env,
        ["profile", "init", CWS, "--url", url, "--username", USERNAME],
        "profile init cws",
    )
    setup_cmd(
        cws,
        env,
        [*p, "keygen", "--bits", str(bits), "--public-out", str(public)],
        "keygen (cws)",
    )
    dd = ["--data-dir", str(data_dir)]
    setup_cmd(cws, env, ["sandbox", "add-key", USERNAME, str(public), *dd], "sandbox add-key")
    pem = setup_cmd(
        cws, env, ["sandbox", "server-key", *dd, "--key-bits", str(bits)], "sandbox server-key"
    )
    server_pem = work / "coremr.pem"
    server_pem.write_text(pem)
    setup_cmd(cws, env, [*p, "profile", "trust", str(server_pem)], "profile trust")


# -- 1. token reuse -------------------------------------------------------------------------
def token_loop(
    cws: list[str],
    env: dict[str, str],
    sandbox: Sandbox,
    profile: str,
    calls: int,
    lifetime: int,
    pause: float = 0.0,
) -> dict[str, Any]:
    """A shell loop of ``calls`` ``cwsctl -q -p PROFILE request GET``; counts token requests."""
    sleep = f"; sleep {pause}" if pause else ""
    script = (
        f"set -u; for i in $(seq {calls}); do {shlex.join(cws)} -q -p {shlex.quote(profile)} "
        f"request GET {shlex.quote(GET_PATH)} >/dev/null || exit $?{sleep}; done"
    )
    offset = log_size(sandbox)
    code, _, err, wall = run_bounded(
        ["bash", "-c", script], env, calls * (LOOP_TIMEOUT_PER_CALL_S + pause) + 60
    )
    tokens, refused, gets, _ = count_requests(sandbox, offset, calls)
    margin = reuse_margin(lifetime)
    return {
        "calls": calls,
        "pause": pause,
        "wall": wall,
        "per_call_ms": 1000 * (wall - calls * pause) / calls,
        "lifetime": lifetime,
        "tokens": tokens,
        "refused": refused,
        "gets": gets,
        "allowed": math.ceil(wall / lifetime) + 1,
        "margin": margin,
        # Every renewal comes at least lifetime - margin after the token before it.
        "expected_max": 1 + math.floor(wall / (lifetime - margin)),
        "exit": code,
        "stderr": err.strip(),
        "script": script,
    }


def token_ok(r: dict[str, Any]) -> bool:
    return (
        r["exit"] == 0
        and r["gets"] == r["calls"]
        and r["refused"] == 0
        and (r["tokens"] <= r["allowed"])
    )


def token_lines(r: dict[str, Any]) -> list[str]:
    ratio = r["tokens"] / r["allowed"]
    per_token = r["calls"] / r["tokens"] if r["tokens"] else float("inf")
    checks = []
    if r["exit"] != 0:
        checks.append(f"loop exit {r['exit']}")
    if r["gets"] != r["calls"]:
        checks.append(f"sandbox saw {r['gets']} GETs")
    if r["refused"]:
        checks.append(f"{r['refused']} token requests refused")
    note = f" [{'; '.join(checks)}]" if checks else ""
    return [
        f"token reuse: {r['calls']} calls in {r['wall']:.1f} s ({r['per_call_ms']:.0f} ms per "
        f"call), token lifetime {r['lifetime']} s: {r['tokens']} token request(s), allowed "
        f"ceil({r['wall']:.1f}/{r['lifetime']}) + 1 = {r['allowed']}",
        f"token requests / allowed: {r['tokens']}/{r['allowed']} = {ratio:.2f} (goal <= 1.00): "
        f"{verdict(token_ok(r))}{note}; calls per token request: {per_token:.1f} "
        f"(one token per call would be 1.0)",
    ]


def renewal_line(r: dict[str, Any]) -> str:
    eff = r["lifetime"] - r["margin"]
    return (
        f"renewal (context, not a verdict): token lifetime {r['lifetime']} s, {r['calls']} calls "
        f"{r['pause']:g} s apart over {r['wall']:.1f} s: {r['tokens']} token requests "
        f"(reuse until {r['margin']:g} s before expiry -> a renewal at most every {eff:g} s "
        f"-> at most 1 + floor({r['wall']:.1f}/{eff:g}) = {r['expected_max']}); "
        f"GETs {r['gets']}/{r['calls']} answered, loop exit {r['exit']}"
    )


# -- 2. bulk --------------------------------------------------------------------------------
def count_openemr(db: Path, prefix: str) -> tuple[int, int]:
    """(patients, distinct pubpids) in openemr.db whose external id starts with prefix (pubpid
    ``FACILITY:EXTERNAL_ID``, the rows' facility 10000)."""
    with sqlite3.connect(db, timeout=10) as conn:
        pids, values = conn.execute(
            "SELECT COUNT(DISTINCT pid), COUNT(DISTINCT pubpid) FROM patient_data "
            "WHERE pubpid LIKE ? || '%'",
            (f"{FACILITY}:{prefix}",),
        ).fetchone()
    return int(pids), int(values)


def bulk_run(
    cws: list[str],
    env: dict[str, str],
    work: Path,
    sandbox: Sandbox,
    kind: str,
    rep: int,
    rows: int,
) -> dict[str, Any]:
    """One timed ``cwsctl -q --json -p PROFILE patients create --from rows.csv``."""
    profile = EMR if kind == "openemr" else CWS
    prefix = f"{'O' if kind == 'openemr' else 'C'}{rep}-"
    csv_path = work / f"rows-{kind}-{rep}.csv"  # its journal: rows-….csv.journal, fresh
    write_csv(csv_path, prefix, rows)
    argv = [*cws, "-q", "--json", "-p", profile, "patients", "create", "--from", str(csv_path)]
    offset = log_size(sandbox)
    client_before, server_before = children_cpu(), process_cpu(sandbox.pid)
    code, out, err, wall = run_bounded(argv, env, BULK_TIMEOUT_S)
    client_after, server_after = children_cpu(), process_cpu(sandbox.pid)
    try:
        summary = json.loads(out)
    except ValueError:
        summary = {}
    if kind == "openemr":
        in_db, distinct = count_openemr(sandbox_db(sandbox, kind), prefix)
        tokens, _, gets, posts = count_requests(sandbox, offset, rows)
    else:
        in_db = distinct = count_patients(sandbox_db(sandbox, kind), prefix)
        tokens = gets = posts = None
    server_ms = (
        None
        if server_before is None or server_after is None
        else 1000 * (server_after - server_before) / rows
    )
    return {
        "kind": kind,
        "rep": rep,
        "rows": rows,
        "wall": wall,
        "rate": rows / wall,
        "inner_rate": summary.get("rows_per_second") if isinstance(summary, dict) else None,
        "created": summary.get("created") if isinstance(summary, dict) else None,
        "in_db": in_db,
        "distinct": distinct,
        "tokens": tokens,
        "gets": gets,
        "posts": posts,
        "exit": code,
        "stderr": err.strip(),
        "client_cpu_ms": 1000 * (client_after - client_before) / rows,
        "server_cpu_ms": server_ms,
    }


def sandbox_db(sandbox: Sandbox, kind: str) -> Path:
    return sandbox.data_dir / ("openemr.db" if kind == "openemr" else "sandbox.db")


def bulk_ok(r: dict[str, Any]) -> bool:
    return r["exit"] == 0 and r["in_db"] == r["rows"] == r["distinct"]


def show_bulk(r: dict[str, Any]) -> None:
    inner = r["inner_rate"]
    server = r["server_cpu_ms"]
    tokens = (
        ""
        if r["tokens"] is None
        else f", token requests {r['tokens']}, look-up GETs {r['gets']}, POSTs {r['posts']}"
    )
    print(
        f"    run {r['rep']} {r['kind']:>7}: {r['rows']} rows in {r['wall']:.2f} s = "
        f"{r['rate']:.1f} rows/s end to end"
        + (f" ({inner:.1f} as cwsctl reports it)" if inner else "")
        + f"; created {r['created']}, in sandbox DB {r['in_db']} (distinct ids {r['distinct']})"
        + f"{tokens}, exit {r['exit']}; CPU per row: client {r['client_cpu_ms']:.2f} ms + "
        + (f"sandbox {server:.2f} ms" if server is not None else "sandbox not measured"),
        flush=True,
    )
    if r["exit"] != 0 and r["stderr"]:
        print(f"    stderr: {r['stderr'][-400:]}")


# -- report ---------------------------------------------------------------------------------
def versions(cws: list[str], env: dict[str, str]) -> str:
    parts = []
    try:
        code, out, _, _ = run_bounded([*cws, "--version"], env, 60)
        parts.append(out.strip() if code == 0 else "cwsctl ?")
    except OSError:
        parts.append("cwsctl ?")
    try:
        head = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if head:
            parts[-1] += f" (git {head})"
    except OSError:
        pass
    for dist in ("httpx", "uvicorn", "starlette", "h11", "cryptography", "PyJWT"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(parts)


def summary(
    args: argparse.Namespace,
    loop: dict[str, Any],
    renewal: dict[str, Any] | None,
    runs: list[dict[str, Any]],
    header: list[str],
) -> None:
    print("\n== summary ==")
    for line in header:
        print(line)
    for line in token_lines(loop):
        print(line)
    if renewal is not None:
        print(renewal_line(renewal))
    by_kind = {k: [r for r in runs if r["kind"] == k] for k in ("openemr", "cws")}
    med = {k: statistics.median(r["rate"] for r in v) for k, v in by_kind.items()}
    each = {k: ", ".join(f"{r['rate']:.1f}" for r in v) for k, v in by_kind.items()}
    all_ok = all(bulk_ok(r) for r in runs)
    ratio = med["openemr"] / med["cws"]
    print(
        f"bulk, {args.rows} rows per run, concurrency default (8), runs alternated: "
        f"openemr {med['openemr']:.1f} rows/s (median of {each['openemr']}), "
        f"cws {med['cws']:.1f} rows/s (median of {each['cws']})"
    )
    rows_note = (
        "every run created exactly its rows, each once"
        if all_ok
        else "NOT every run created exactly its rows (see above)"
    )
    print(f"bulk: {rows_note}")
    print(f"bulk openemr/cws: {ratio:.2f}x (goal >= 1.00x): {verdict(ratio >= 1.0 and all_ok)}")


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows per bulk run (1000)")
    parser.add_argument("--calls", type=int, default=20, help="calls in the token loop (20)")
    parser.add_argument(
        "--token-lifetime", type=int, default=60, help="sandbox access-token lifetime, s (60)"
    )
    parser.add_argument(
        "--bits", type=int, default=4096, choices=(2048, 3072, 4096), help="RSA key size (4096)"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="bulk runs per kind, alternated; median (3)"
    )
    parser.add_argument(
        "--renewal-lifetime",
        type=int,
        default=2,
        help="token lifetime of the renewal context loop, s (2; 0 skips it)",
    )
    parser.add_argument(
        "--renewal-calls", type=int, default=10, help="calls in the renewal loop (10)"
    )
    parser.add_argument(
        "--renewal-pause", type=float, default=0.5, help="seconds between renewal calls (0.5)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    for name in ("rows", "calls", "token_lifetime", "reps", "renewal_calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.renewal_pause <= 60 or args.renewal_lifetime < 0:
        parser.error("--renewal-pause must be 0..60 and --renewal-lifetime at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cws = cwsctl_prefix()
    work = Path(tempfile.mkdtemp(prefix="cwsctl-openemr-"))
    env = clean_env(work / "home")
    sandboxes: list[Sandbox] = []

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        print(f"work dir: {work}{' (kept)' if args.keep else ''}", flush=True)
        try:
            emr = start_sandbox(
                env,
                cws,
                work,
                "openemr",
                args.bits,
                kind="openemr",
                token_lifetime=args.token_lifetime,
            )
            sandboxes.append(emr)
            setup_openemr_profile(cws, env, EMR, emr, None, args.bits)
            cws_data = work / "data-cws"
            port = free_port()
            setup_cws_profile(cws, env, work, cws_data, f"http://127.0.0.1:{port}", args.bits)
            cws_sb = Sandbox(env, cws_data, port, work / "cws.log", key_bits=args.bits, cws=cws)
            sandboxes.append(cws_sb)
            cws_sb.wait_ready()
        except (SetupError, OSError) as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 2
        print(
            f"sandboxes: openemr {emr.url} (pid {emr.pid}, --token-lifetime "
            f"{args.token_lifetime}), cws {cws_sb.url} (pid {cws_sb.pid}, RSA-{args.bits} "
            f"server key); profiles emr (openemr) and cws, RSA-{args.bits} keys; access logs on",
            flush=True,
        )
        load_before = loadavg()
        print(f"load average before: {load_before}", flush=True)

        print(f"\n[1] token reuse: {args.calls} x cwsctl -q -p emr request GET {GET_PATH}")
        loop = token_loop(cws, env, emr, EMR, args.calls, args.token_lifetime)
        for line in token_lines(loop):
            print(f"    {line}", flush=True)
        if loop["exit"] != 0:
            print(f"    loop stderr: {loop['stderr'][-400:]}")

        renewal = None
        if args.renewal_lifetime:
            print(
                f"\n[1b] renewal: {args.renewal_calls} calls {args.renewal_pause:g} s apart, "
                f"token lifetime {args.renewal_lifetime} s (a second openemr sandbox)"
            )
            try:
                short = start_sandbox(
                    env,
                    cws,
                    work,
                    "openemr-renew",
                    args.bits,
                    kind="openemr",
                    token_lifetime=args.renewal_lifetime,
                )
                sandboxes.append(short)
                key = str(work / "home" / "keys" / f"{EMR}.pem")
                setup_openemr_profile(cws, env, RENEW, short, key, args.bits)
                renewal = token_loop(
                    cws,
                    env,
                    short,
                    RENEW,
                    args.renewal_calls,
                    args.renewal_lifetime,
                    args.renewal_pause,
                )
                print(f"    {renewal_line(renewal)}", flush=True)
            except SetupError as exc:
                print(f"    renewal loop not run: {exc}")
            finally:
                if sandboxes[-1] is not emr and sandboxes[-1] is not cws_sb:
                    sandboxes.pop().stop()

        print(
            f"\n[2] bulk: {args.rows} rows per run, openemr and cws alternated, "
            f"{args.reps} runs each"
        )
        runs: list[dict[str, Any]] = []
        for rep in range(1, args.reps + 1):
            order = ("openemr", "cws") if rep % 2 else ("cws", "openemr")
            for kind in order:
                sandbox = emr if kind == "openemr" else cws_sb
                r = bulk_run(cws, env, work, sandbox, kind, rep, args.rows)
                show_bulk(r)
                runs.append(r)
        load_after = loadavg()
        header = [
            f"measured {started}; {machine()}",
            versions(cws, env),
            f"load average (1, 5, 15 min) before: {load_before}; after: {load_after}",
        ]
        summary(args, loop, renewal, runs, header)
        return 0
    except KeyboardInterrupt:
        print("interrupted: stopping the sandboxes", file=sys.stderr)
        return 130
    finally:
        for sandbox in reversed(sandboxes):
            rc = sandbox.stop()
            print(f"sandbox {sandbox.url} stopped (exit {rc})")
        signal.signal(signal.SIGTERM, previous)
        remove_work_dir(work, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
