"""Bulk-load benchmark for ``cwsctl patients create --from`` (a measurement, not a test).

In one run, with the walkthrough's client key (``openssl genrsa 4096``), against two local
sandboxes (``cwsctl sandbox serve --key-bits 4096 -q`` in subprocesses on 127.0.0.1, fresh data
dirs): one on loopback, one that delays each patients request by a uniform 0..40 ms
(``--latency-ms 40``: a remote-like CorEMR). It measures:

1. loopback: ``cwsctl -q --json patients create --from rows.csv`` (N rows, default settings, then
   ``--concurrency`` 4, 8 and 16 on other external_ids, each with a fresh journal) and the
   walkthrough's loop for the same rows, one bash script: per row ``openssl dgst -sha256 -sign |
   openssl enc -A -base64`` and ``curl -X POST``. Both are timed end to end (process start
   included), and the sandbox database is checked to hold every row created. The CPU time per row
   of each side: the client's from ``RUSAGE_CHILDREN`` around its process, the sandbox's from
   ``/proc/PID/stat``;
2. remote-like: the same cwsctl command (default settings) and the same loop against the sandbox
   with added latency;
3. the CPU of one RSA-4096 signature by ``cryptography`` (one thread; what cwsctl signs with) and
   ``openssl speed -seconds 3 rsa4096``;
4. peak RSS of ``cwsctl patients create --from big.csv --dry-run`` for 100,000 rows and 1,000.

Goals (issue 15), each with a PASS/FAIL line: (a) cwsctl's client CPU per row at most 1.6x one
cryptography signature; (b) remote-like, cwsctl at least 15x the loop; (d) the 100,000-row dry run
under 150 MiB. Context lines: the loopback ratio, the share of the RSA ceiling, the CPU cap.
Exit status: 0 whatever the figures are; 2 if the setup fails (openssl, curl, bash, cwsctl, the
key, the profiles or the sandboxes).

Run from the project's virtualenv (standard library only):
``python bench/bulk.py [--rows N] [--loop-rows N] [--big-rows N] [--latency-ms N] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from sandbox_process import Sandbox, SetupError, clean_env, free_port, remove_work_dir

GOAL_CPU_PER_SIGNATURE = 1.6  # (a) client CPU per row / CPU of one RSA-4096 signature
GOAL_REMOTE_RATIO = 15.0  # (b) remote-like: cwsctl rows/s / the loop's
GOAL_PEAK_MIB = 150.0  # (d)
REMOTE_LATENCY_MS = 40
KEY_BITS = 4096
USERNAME = "bench"
PROFILE = "bench"
CSV_HEADER = (
    "external_id,facility,agency,billing_agency,fname,lname,dob,sex,booking_no,booking_date"
)
CSV_ROW = "{eid},10000,2,1,First,Name,2000-04-12,M,B{i},2023-04-07"
CWS_BODY = (
    '{{"external_id":"{eid}","facility":10000,"agency":2,"billing_agency":1,'
    '"fname":"First","lname":"Name","dob":"2000-04-12 10:00:00.000","sex":"M",'
    '"booking_no":"B{i}","booking_date":"2023-04-07 10:00:00.000"}}'
)
# Variables that would slow Python down or change what cwsctl or the sandbox do.

LOOP_SCRIPT = """\
#!/usr/bin/env bash
# The walkthrough, once per row: sign with openssl, base64, POST with curl.
# (It does not verify the response signatures: that would be five more steps per row.)
set -u
URL={url}
USERNAME={username}
KEY={key}
for i in $(seq 1 {rows}); do
  body="{bodies}/L$i.json"
  SIG=$(openssl dgst -sha256 -sign "$KEY" "$body" | openssl enc -A -base64)
  curl -sS -o /dev/null -w '%{{http_code}}\\n' -X POST "$URL/ws/patients/" \\
    -H "Authorization: CWS-SHA256 Access=$USERNAME, Signature=$SIG" \\
    -H 'Content-Type: application/json' --data-binary @"$body"
done
"""

# Counts the private-key signatures cryptography makes in `seconds` (one thread).
PY_SPEED = """\
import sys, time
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.backends.openssl import backend
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), None)
body = sys.argv[2].encode()
seconds = float(sys.argv[3])
key.sign(body, padding.PKCS1v15(), hashes.SHA256())
n, start = 0, time.perf_counter()
while (elapsed := time.perf_counter() - start) < seconds:
    key.sign(body, padding.PKCS1v15(), hashes.SHA256())
    n += 1
print(n / elapsed, backend.openssl_version_text())
"""

# Runs one command in this fresh process and prints the children's peak RSS (KiB on Linux).
PEAK_RSS = """\
import resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
elapsed = time.perf_counter() - start
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, elapsed)
"""


# -- helpers --------------------------------------------------------------------------------
def cwsctl_prefix() -> list[str]:
    """The console script from this interpreter's bin dir if installed, else ``python -m``."""
    script = Path(sys.executable).parent / "cwsctl"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "cwsctl"]


def run(argv: list[str], env: dict[str, str], *, what: str, **kwargs: object) -> str:
    """Run a setup step; its stdout, or SetupError with its stderr."""
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, **kwargs)
    except OSError as exc:
        raise SetupError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise SetupError(f"{what}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def write_csv(path: Path, prefix: str, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(CSV_HEADER + "\n")
        for i in range(1, rows + 1):
            f.write(CSV_ROW.format(eid=f"{prefix}{i}", i=i) + "\n")


def count_patients(db: Path, prefix: str) -> int:
    """Patients in the sandbox database whose external_id starts with ``prefix``."""
    with sqlite3.connect(db, timeout=10) as conn:
        (n,) = conn.execute(
            "SELECT COUNT(*) FROM patients WHERE external_id LIKE ? || '%'", (prefix,)
        ).fetchone()
    return int(n)


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished, waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by a running process (Linux /proc; else None)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class TimedRun(NamedTuple):
    done: subprocess.CompletedProcess[str]
    wall: float
    client_cpu_ms: float  # per row: the command and everything it ran
    server_cpu_ms: float | None  # per row: the sandbox (None without /proc)


def timed_run(
    argv: list[str], sandbox: Sandbox, rows: int, env: dict[str, str] | None = None
) -> TimedRun:
    """Run a command to completion: wall time, and CPU per row on each side."""
    client_before, server_before = children_cpu(), process_cpu(sandbox.pid)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    client_after, server_after = children_cpu(), process_cpu(sandbox.pid)
    server = (
        None
        if server_before is None or server_after is None
        else 1000 * (server_after - server_before) / rows
    )
    return TimedRun(done, wall, 1000 * (client_after - client_before) / rows, server)


def mib(kib: float) -> float:
    return kib / 1024


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


# -- measurements ---------------------------------------------------------------------------
def bulk_run(
    cws: list[str],
    env: dict[str, str],
    work: Path,
    sandbox: Sandbox,
    db: Path,
    prefix: str,
    rows: int,
    concurrency: int | None,
) -> dict[str, object]:
    """One timed ``cwsctl -q --json patients create --from`` over fresh external_ids, with the
    CPU time cwsctl and the sandbox each spent on it (``concurrency`` None: default settings)."""
    csv_path = work / f"rows-{prefix.rstrip('-')}.csv"
    write_csv(csv_path, prefix, rows)
    argv = [*cws, "-q", "--json", "patients", "create", "--from", str(csv_path)]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    timed = timed_run(argv, sandbox, rows, env)
    done, wall = timed.done, timed.wall
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        summary = {}
    return {
        "concurrency": "default" if concurrency is None else concurrency,
        "rows": rows,
        "wall": wall,
        "rate": rows / wall,
        "inner_rate": summary.get("rows_per_second"),
        "created": summary.get("created"),
        "in_db": count_patients(db, prefix),
        "exit": done.returncode,
        "stderr": done.stderr.strip(),
        "client_cpu_ms": timed.client_cpu_ms,
        "server_cpu_ms": timed.server_cpu_ms,
    }


def loop_run(
    work: Path, url: str, key: Path, sandbox: Sandbox, db: Path, rows: int, name: str = "loop"
) -> dict[str, object]:
    """The walkthrough's openssl+curl loop as one bash script, timed as a whole."""
    bodies = work / f"bodies-{name}"
    bodies.mkdir()
    for i in range(1, rows + 1):
        (bodies / f"L{i}.json").write_text(CWS_BODY.format(eid=f"L{i}", i=i))
    script = work / f"{name}.sh"
    script.write_text(
        LOOP_SCRIPT.format(url=url, username=USERNAME, key=key, rows=rows, bodies=bodies)
    )
    timed = timed_run(["bash", str(script)], sandbox, rows)
    done, wall = timed.done, timed.wall
    codes = done.stdout.split()
    return {
        "rows": rows,
        "wall": wall,
        "rate": rows / wall,
        "ok": codes.count("201"),
        "codes": sorted(set(codes)),
        "in_db": count_patients(db, "L"),
        "exit": done.returncode,
        "stderr": done.stderr.strip(),
        "client_cpu_ms": timed.client_cpu_ms,
        "server_cpu_ms": timed.server_cpu_ms,
    }


def openssl_speed() -> tuple[float | None, str]:
    """Single-core RSA-4096 sign/s from ``openssl speed -seconds 3 rsa4096``."""
    done = subprocess.run(
        ["openssl", "speed", "-seconds", "3", "rsa4096"],
        capture_output=True,
        text=True,
        check=False,
    )
    text = done.stdout + done.stderr
    match = re.search(r"^rsa\s+4096 bits\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", text, re.M)
    if match is None:
        return None, text.strip()[-300:]
    return float(match.group(1)), ""


def python_speed(key: Path, seconds: float) -> tuple[float | None, str]:
    """Single-thread RSA-4096 sign/s from ``cryptography`` (and its OpenSSL version)."""
    body = CWS_BODY.format(eid="S1", i=1)
    done = subprocess.run(
        [sys.executable, "-c", PY_SPEED, str(key), body, str(seconds)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None, done.stderr.strip()[-300:]
    rate, _, lib = done.stdout.strip().partition(" ")
    return float(rate), lib


def peak_rss(cws: list[str], env: dict[str, str], csv_path: Path) -> tuple[int, float, float]:
    """(exit status, peak RSS in KiB, seconds) of a dry run, measured from a fresh process."""
    argv = [*cws, "-q", "patients", "create", "--from", str(csv_path), "--dry-run"]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *argv], env=env, capture_output=True, text=True
    )
    rc, kib, secs = done.stdout.split()
    return int(rc), float(kib), float(secs)


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="rows per cwsctl run (1000)")
    parser.add_argument(
        "--loop-rows", type=int, default=None, help="rows timed in the loop (default: --rows)"
    )
    parser.add_argument("--big-rows", type=int, default=None, help="dry-run rows (100000)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="--concurrency of the main runs (default: none given, cwsctl's default settings)",
    )
    parser.add_argument(
        "--no-sweep", action="store_true", help="skip the concurrency 4/8/16 comparison"
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=REMOTE_LATENCY_MS,
        help="the remote-like sandbox's delay per patients request, uniform 0..N ms, for both "
        f"cwsctl and the loop (default {REMOTE_LATENCY_MS}: the issue's remote-like CorEMR)",
    )
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rows = args.rows or (40 if quick else 1000)
    args.loop_rows = args.loop_rows or args.rows
    args.big_rows = args.big_rows or (5000 if quick else 100_000)
    args.small_rows = min(1000, args.big_rows)
    args.speed_seconds = 1.0 if quick else 3.0
    for name in ("rows", "loop_rows", "big_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.latency_ms < 1:
        parser.error("--latency-ms must be at least 1")
    return args


def setup(
    work: Path,
    cws: list[str],
    env: dict[str, str],
    data_dir: Path,
    url: str,
    profile: str = PROFILE,
) -> Path:
    """Key (made once), profile, registration and pinning; returns the openssl key path."""
    for tool in ("openssl", "curl", "bash", "seq"):
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} is not on PATH")
    key = work / "rsa.private"
    public = work / "rsa.public"
    if not key.exists():
        run(["openssl", "genrsa", "-out", str(key), str(KEY_BITS)], env, what="openssl genrsa")
        key.chmod(0o600)
        run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(public)],
            env,
            what="openssl rsa -pubout",
        )
    env = {**env, "CWSCTL_PROFILE": profile}
    run(
        [*cws, "profile", "init", profile, "--url", url, "--username", USERNAME],
        env,
        what="cwsctl profile init",
    )
    run([*cws, "keys", "import", str(key)], env, what="cwsctl keys import")
    dd = ["--data-dir", str(data_dir)]
    run([*cws, "sandbox", "add-key", USERNAME, str(public), *dd], env, what="sandbox add-key")
    pem = run(
        [*cws, "sandbox", "server-key", *dd, "--key-bits", str(KEY_BITS)],
        env,
        what="sandbox server-key",
    )
    server_pem = work / f"coremr-{profile}.pem"
    server_pem.write_text(pem)
    run([*cws, "profile", "trust", str(server_pem)], env, what="cwsctl profile trust")
    return key


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cws = cwsctl_prefix()
    nproc = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="cwsctl-bulk-"))
    home = work / "home"
    env = clean_env(home)
    sandboxes: dict[str, Sandbox] = {}
    results: dict[str, object] = {}
    try:
        print(f"work dir: {work}{' (kept)' if args.keep else ''}")
        try:
            for name, latency in (("loopback", 0), ("remote", args.latency_ms)):
                port = free_port()
                data_dir = work / f"sandbox-{name}"
                key = setup(work, cws, env, data_dir, f"http://127.0.0.1:{port}", name)
                one = Sandbox(
                    env,
                    data_dir,
                    port,
                    work / f"sandbox-{name}.log",
                    key_bits=KEY_BITS,
                    faults={"latency_ms": latency} if latency else None,
                    quiet=True,
                    cws=cws,
                )
                sandboxes[name] = one
                one.wait_ready()
        except SetupError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 2
        for name, one in sandboxes.items():
            print(f"sandbox {name}: {one.url} (pid {one.proc.pid}, RSA-{KEY_BITS} server key)")
        print(f"client key: openssl genrsa {KEY_BITS}; {nproc} CPUs")
        load_before = loadavg()
        print(f"load average before: {load_before}")
        results = measure(args, cws, env, work, sandboxes, key)
        results["load"] = (load_before, loadavg())
    finally:
        for name, one in sandboxes.items():
            rc = one.stop()
            print(f"sandbox {name} stopped (exit {rc})")
            log = one.log_path.read_text(errors="replace").strip()
            if log:
                print(f"sandbox {name} output (last lines):\n  {log[-800:]}")
        remove_work_dir(work, keep=args.keep)
    report(args, results, nproc)
    return 0


def measure(
    args: argparse.Namespace,
    cws: list[str],
    env: dict[str, str],
    work: Path,
    sandboxes: dict[str, Sandbox],
    key: Path,
) -> dict[str, object]:
    r: dict[str, object] = {}
    local, remote = sandboxes["loopback"], sandboxes["remote"]
    local_db = work / "sandbox-loopback" / "sandbox.db"
    remote_db = work / "sandbox-remote" / "sandbox.db"
    local_env = {**env, "CWSCTL_PROFILE": "loopback"}
    remote_env = {**env, "CWSCTL_PROFILE": "remote"}
    given = "default settings" if args.concurrency is None else f"concurrency {args.concurrency}"

    # 1. Loopback: cwsctl (main run, then the concurrency sweep), then the loop.
    print(f"\n[1] loopback: cwsctl bulk load, {args.rows} rows, {given} ...")
    main_run = bulk_run(cws, local_env, work, local, local_db, "C0-", args.rows, args.concurrency)
    show_bulk(main_run)
    r["bulk"] = main_run
    sweep = [main_run]
    if not args.no_sweep:
        for conc in (4, 8, 16):
            if conc == args.concurrency:
                continue
            print(f"    concurrency {conc} ...")
            one = bulk_run(cws, local_env, work, local, local_db, f"K{conc}-", args.rows, conc)
            show_bulk(one)
            sweep.append(one)
    r["sweep"] = sweep
    print(f"\n[1] loopback: openssl+curl loop (one bash script), {args.loop_rows} rows ...")
    loop = loop_run(work, local.url, key, local, local_db, args.loop_rows, "loop-loopback")
    show_loop(loop)
    r["loop"] = loop

    # 2. Remote-like: the same, against the sandbox with added latency.
    print(f"\n[2] remote-like (0-{args.latency_ms} ms added): cwsctl, {given} ...")
    remote_run = bulk_run(
        cws, remote_env, work, remote, remote_db, "R0-", args.rows, args.concurrency
    )
    show_bulk(remote_run)
    r["remote_bulk"] = remote_run
    if not args.no_sweep:
        print("    concurrency 8 (the fixed default before issue 15) ...")
        fixed = bulk_run(cws, remote_env, work, remote, remote_db, "R8-", args.rows, 8)
        show_bulk(fixed)
        r["remote_fixed8"] = fixed
    print(f"\n[2] remote-like: openssl+curl loop, {args.loop_rows} rows ...")
    remote_loop = loop_run(work, remote.url, key, remote, remote_db, args.loop_rows, "loop-remote")
    show_loop(remote_loop)
    r["remote_loop"] = remote_loop

    # 3. The RSA signature: cryptography's (one thread) and openssl speed's.
    print("\n[3] RSA-4096 sign speed (one core) ...")
    ossl, err = openssl_speed()
    print(
        f"    openssl speed rsa4096: {ossl:.1f} sign/s per core"
        if ossl
        else f"    openssl speed failed: {err}"
    )
    py, lib = python_speed(key, args.speed_seconds)
    print(
        f"    cryptography ({lib}): {py:.1f} sign/s per thread = {1000 / py:.2f} ms per signature"
        if py
        else f"    cryptography speed failed: {lib}"
    )
    r["openssl_speed"], r["py_speed"], r["py_lib"] = ossl, py, lib

    # 4. Peak RSS of dry runs.
    print(f"\n[4] peak RSS of --dry-run, {args.small_rows} and {args.big_rows} rows ...")
    peaks = {}
    for n in sorted({args.small_rows, args.big_rows}):
        csv_path = work / f"big-{n}.csv"
        write_csv(csv_path, "D", n)
        rc, kib, secs = peak_rss(cws, local_env, csv_path)
        peaks[n] = (rc, kib, secs)
        print(
            f"    {n:>7} rows: peak RSS {mib(kib):.1f} MiB, {secs:.2f} s "
            f"({n / secs:.0f} rows/s), exit {rc}"
        )
    r["peaks"] = peaks
    return r


def show_loop(loop: dict[str, object]) -> None:
    print(
        f"    {loop['rows']} rows in {loop['wall']:.1f} s = {loop['rate']:.1f} rows/s; "
        f"HTTP 201: {loop['ok']}/{loop['rows']}, in sandbox DB: {loop['in_db']}, "
        f"codes {loop['codes']}, bash exit {loop['exit']}; CPU per row: {cpu_text(loop)}"
    )
    if loop["stderr"]:
        print(f"    loop stderr: {str(loop['stderr'])[-300:]}")


def show_bulk(run_: dict[str, object]) -> None:
    inner = run_["inner_rate"]
    print(
        f"    concurrency {run_['concurrency']:>2}: {run_['rows']} rows in {run_['wall']:.2f} s "
        f"= {run_['rate']:.1f} rows/s end to end"
        + (f" ({inner:.1f} rows/s as cwsctl reports it, without start-up)" if inner else "")
        + f"; created {run_['created']}, in sandbox DB {run_['in_db']}, exit {run_['exit']}"
        + f"; CPU per row: {cpu_text(run_)}"
    )
    if run_["stderr"]:
        print(f"    cwsctl stderr: {str(run_['stderr'])[-300:]}")


def cpu_text(run_: dict[str, object]) -> str:
    server = run_["server_cpu_ms"]
    sandbox = f"sandbox {server:.2f} ms" if server is not None else "sandbox not measured"
    return f"client {run_['client_cpu_ms']:.2f} ms + {sandbox}"


def cpu_budget(bulk: dict[str, Any], loop: dict[str, Any], nproc: int) -> list[str]:
    """Why the loop ratio is what it is: the CPU each side spent per row, and the cap it sets."""
    client, server, loop_client = (
        bulk["client_cpu_ms"],
        bulk["server_cpu_ms"],
        loop["client_cpu_ms"],
    )
    if server is None:
        return ["CPU budget: not measured (the sandbox's CPU time needs Linux /proc)"]
    per_row = client + server
    cap = 1000 * nproc / per_row
    return [
        f"CPU per row, cwsctl run: cwsctl {client:.2f} ms + sandbox {server:.2f} ms = "
        f"{per_row:.2f} ms on {nproc} shared CPUs -> at most {cap:.0f} rows/s "
        f"= {cap / loop['rate']:.1f}x the loop, were every CPU busy all the time",
        f"client CPU per row: loop (bash, openssl x2, curl) {loop_client:.2f} ms vs cwsctl "
        f"{client:.2f} ms = {loop_client / client:.1f}x less CPU on the client's machine",
    ]


def all_created(run_: dict[str, Any]) -> bool:
    return bool(run_["in_db"] == run_["rows"] and run_["exit"] == 0)


def loop_ok(loop: dict[str, Any]) -> bool:
    return bool(loop["ok"] == loop["rows"])


def report(args: argparse.Namespace, r: dict[str, Any], nproc: int) -> None:
    if not r:
        return
    bulk, loop = r["bulk"], r["loop"]
    remote, remote_loop = r["remote_bulk"], r["remote_loop"]
    print("\n== summary ==")
    print("loopback: concurrency   rows/s (end to end)   rows/s (cwsctl's own)   created/rows")
    for one in r["sweep"]:
        inner = one["inner_rate"]
        print(
            f"{one['concurrency']!s:>21}   {one['rate']:>19.1f}   "
            f"{(f'{inner:.1f}' if inner else '-'):>21}   {one['in_db']}/{one['rows']}"
        )
    for label, lp in (("loopback", loop), ("remote-like", remote_loop)):
        sampled = lp["rows"] != bulk["rows"]
        note = f" (timed on {lp['rows']} rows, per-row rate extrapolated)" if sampled else ""
        print(
            f"openssl+curl loop, {label}: {lp['rate']:.1f} rows/s{note}; 201s {lp['ok']}/{lp['rows']}"
        )
    lines = []
    given = "default settings" if args.concurrency is None else f"--concurrency {args.concurrency}"

    # (a) client CPU per row against one signature.
    py = r["py_speed"]
    client = float(bulk["client_cpu_ms"])
    if py:
        signature_ms = 1000 / float(py)
        ratio_a = client / signature_ms
        lines.append(
            f"(a) client CPU per row (loopback, {bulk['rows']} rows, {given}, start-up included): "
            f"{client:.2f} ms = {ratio_a:.2f}x one RSA-4096 signature by cryptography "
            f"({signature_ms:.2f} ms) (goal <= {GOAL_CPU_PER_SIGNATURE}x): "
            f"{verdict(ratio_a <= GOAL_CPU_PER_SIGNATURE and all_created(bulk))}"
        )
        remote_client = float(remote["client_cpu_ms"])
        lines.append(
            f"    same, remote-like run: {remote_client:.2f} ms = "
            f"{remote_client / signature_ms:.2f}x (context)"
        )
    else:
        lines.append("(a) client CPU per row: not judged (cryptography's sign speed failed)")

    # (b) remote-like wall time against the loop.
    ratio_b = float(remote["rate"]) / float(remote_loop["rate"])
    ok_b = all_created(remote) and loop_ok(remote_loop)
    lines.append(
        f"(b) remote-like (sandbox --latency-ms {args.latency_ms}), {given}: "
        f"{remote['rate']:.1f} vs {remote_loop['rate']:.1f} rows/s = {ratio_b:.1f}x the loop "
        f"(goal >= {GOAL_REMOTE_RATIO:.0f}x): {verdict(ratio_b >= GOAL_REMOTE_RATIO and ok_b)}"
        + ("" if ok_b else " [rows not all created: see above]")
    )
    fixed = r.get("remote_fixed8")
    if fixed is not None:
        lines.append(
            f"    same with --concurrency 8 (the old fixed default): {fixed['rate']:.1f} rows/s "
            f"= {float(fixed['rate']) / float(remote_loop['rate']):.1f}x (context)"
        )

    # (c) context: loopback ratio, the RSA ceiling, the CPU cap.
    ratio_c = float(bulk["rate"]) / float(loop["rate"])
    lines.append(
        f"(c) loopback: {bulk['rate']:.1f} vs {loop['rate']:.1f} rows/s = {ratio_c:.1f}x the "
        "loop (context; the sandbox shares this machine's CPUs)"
    )
    lines += ["    " + line for line in cpu_budget(bulk, loop, nproc)]
    ossl = r["openssl_speed"]
    for label, speed in (("openssl speed", ossl), ("cryptography", py)):
        if not speed:
            continue
        ceiling = float(speed) * nproc / 2
        pct = 100 * float(bulk["rate"]) / ceiling
        lines.append(
            f"    loopback vs RSA-4096 ceiling ({label}): {pct:.0f}% of {ceiling:.0f} rows/s "
            f"= {float(speed):.0f} sign/s x {nproc} CPUs / 2 (context)"
        )

    # (d) memory.
    peaks = r["peaks"]
    rc_big, kib_big, _ = peaks[args.big_rows]
    _, kib_small, _ = peaks[args.small_rows]
    lines.append(
        f"(d) peak RSS {args.big_rows}-row dry run: {mib(kib_big):.0f} MiB "
        f"(goal < {GOAL_PEAK_MIB:.0f} MiB): {verdict(mib(kib_big) < GOAL_PEAK_MIB and rc_big == 0)}"
        f"  [{args.small_rows} rows: {mib(kib_small):.0f} MiB]"
    )
    print("\n" + "\n".join(lines))
    before, after = r["load"]
    print(f"\nload average (1, 5, 15 min) before: {before}; after: {after}")
    if float(str(before).split()[0]) > 0.5 * nproc:
        print("warning: the machine was busy before the run; rows/s figures are low and noisy")
    print(
        f"\n{platform.machine()}, {nproc} CPUs, Python {platform.python_version()}, "
        f"{version(['openssl', 'version'])}, cryptography's {r['py_lib']}, "
        f"{' '.join(version(['curl', '--version']).split()[:2])}"
    )


if __name__ == "__main__":
    sys.exit(main())
