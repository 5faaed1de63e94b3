"""Fault-injection soak for ``cwsctl patients create --from`` (a measurement with a verdict).

One run of this script, in a fresh temporary directory:

1. makes a profile (``cwsctl profile init``, ``keygen --bits 2048``), registers its key with a
   sandbox data dir and pins the sandbox's key, all through the real CLI;
2. starts the sandbox as a separate process on 127.0.0.1 and a free port::

       python -m cwsctl sandbox serve --port P --data-dir D --key-bits 2048 \\
           --drop-rate 0.10 --error-rate 0.05 --latency-ms 20 --corrupt-rate 0.01 --seed S

   (without ``-q``: ``-q`` switches the access log off, and its ``fault=…`` notes are how the
   injected faults are counted; its stderr goes to a file per sandbox process);
3. runs ``python -m cwsctl -q --json patients create --from rows.csv`` (N rows; stdin closed)
   again and again until it exits 0. Each run resumes from the journal. On the way it
   SIGKILLs the client once mid-run, and once mid-run stops the sandbox (SIGTERM) and starts
   it again on the same port and data dir (fault seed S+1, so the dice do not replay).
   A run that receives a response with a corrupted signature exits 7 at once by design, so at
   1% corruption a 10,000-row load takes on the order of a hundred runs: that count is the
   point of the measurement, and it is bounded (``--max-runs``, ``--max-minutes``);
4. stops the sandbox and checks its SQLite database (``sandbox.db``) directly: it must hold
   exactly the input's patients, each once, each with the fields that were sent.

If the first phase cannot finish within ``--phase1-minutes`` (default: 3/4 of the budget), the
sandbox is restarted with ``--fallback-corrupt-rate`` and the runs go on; the report says so.

It prints rows, runs, exit codes per run, faults injected per kind, exit-7 runs, lost,
duplicated, wall time and rows/s. Exit status: 0 when the load completed with nothing lost,
duplicated or altered and both the SIGKILL and the sandbox restart happened; 1 otherwise;
2 when the setup fails.

Run from the project's virtualenv: ``python bench/soak.py [--rows N] [--seed S] [--quick]
[--max-minutes M]``. Standard library only (plus cwsctl itself, run as a subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_process import (
    Sandbox,
    SetupError,
    clean_env,
    cwsctl_argv,
    free_port,
    machine,
    remove_work_dir,
    run_setup,
)

USERNAME = "soak"
PROFILE = "soak"
KEY_BITS = 2048
FACILITY = "10000"
COLUMNS = [
    "external_id",
    "facility",
    "agency",
    "billing_agency",
    "fname",
    "lname",
    "dob",
    "sex",
    "booking_no",
    "booking_date",
]
LNAMES = ("Name, Jr", "O'Brien", "Müller", "Smith")  # a quoted comma, a quote, UTF-8
FAULT_KINDS = ("drop", "error", "corrupt", "unsigned")
# Variables that would change what cwsctl or the sandbox do.
ACCESS_LINE = re.compile(
    r"^cwsctl-sandbox: (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) [\d.]+ms "
    r"user=\S+(?P<rest>.*)$"
)


def setup_profile(env: dict[str, str], work: Path, data_dir: Path, url: str) -> None:
    """Profile, 2048-bit client key, registration in the sandbox data dir, pinned server key."""
    cws = cwsctl_argv()
    run_setup(
        [*cws, "profile", "init", PROFILE, "--url", url, "--username", USERNAME, "--default"],
        env,
        "cwsctl profile init",
    )
    public = work / "client.pub"
    run_setup(
        [*cws, "-q", "keygen", "--bits", str(KEY_BITS), "--public-out", str(public)],
        env,
        "cwsctl keygen",
    )
    dd = ["--data-dir", str(data_dir)]
    run_setup([*cws, "sandbox", "add-key", USERNAME, str(public), *dd], env, "sandbox add-key")
    pem = run_setup(
        [*cws, "sandbox", "server-key", *dd, "--key-bits", str(KEY_BITS)], env, "sandbox server-key"
    )
    server_pem = work / "coremr.pem"
    server_pem.write_text(pem)
    run_setup([*cws, "profile", "trust", str(server_pem)], env, "cwsctl profile trust")


# -- input and checks -----------------------------------------------------------------------
def input_row(i: int) -> dict[str, str]:
    return {
        "external_id": f"SOAK{i:06d}",
        "facility": FACILITY,
        "agency": str(1 + i % 3),
        "billing_agency": "1",
        "fname": f"First{i}",
        "lname": LNAMES[i % len(LNAMES)],
        "dob": f"{1950 + i % 50}-04-12",
        "sex": "MFU"[i % 3],
        "booking_no": f"BK{i}",
        "booking_date": "2023-04-07T10:00:00",
    }


def write_rows(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for i in range(rows):
            writer.writerow(input_row(i))


def check_database(db: Path, rows: int) -> dict[str, object]:
    """Compare the sandbox DB with the input: lost, duplicated, extra and altered patients."""
    from cwsctl.core.bulk.rows import prepare_patient

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        stored = conn.execute("SELECT external_id, facility_key, record FROM patients").fetchall()
    by_key = Counter((ext, fac) for ext, fac, _ in stored)
    by_external_id = Counter(ext for ext, _, _ in stored)
    expected = {}
    for i in range(rows):
        record = prepare_patient(input_row(i))
        expected[(record["external_id"], str(record["facility"]))] = record
    altered = 0
    for ext, fac, data in stored:
        want = expected.get((ext, fac))
        if want is not None and json.loads(data) != want:
            altered += 1
    return {
        "stored": len(stored),
        "lost": len(set(expected) - set(by_key)),
        "duplicated": sum(n - 1 for n in by_key.values() if n > 1)
        + sum(n - 1 for n in by_external_id.values() if n > 1),
        "extra": len(set(by_key) - set(expected)),
        "altered": altered,
    }


def read_access_logs(paths: list[Path]) -> dict[str, object]:
    """Requests, statuses and injected faults from the sandboxes' access-log lines."""
    faults: Counter[str] = Counter()
    faults_by_method: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    requests = 0
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            match = ACCESS_LINE.match(line)
            if match is None:
                continue
            requests += 1
            statuses[f"{match['method']} {match['status']}"] += 1
            for kind in re.findall(r"fault=(\w+)", match["rest"]):
                faults[kind] += 1
                faults_by_method[f"{match['method']} {kind}"] += 1
    return {
        "requests": requests,
        "statuses": statuses,
        "faults": faults,
        "faults_by_method": faults_by_method,
    }


def journal_stats(path: Path) -> Counter[str]:
    """Entries per outcome in the journal (plus how many 'exists' came from a lookup)."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for line in path.read_bytes().splitlines()[1:]:
        try:
            entry = json.loads(line)
        except ValueError:
            counts["torn"] += 1
            continue
        counts[entry.get("outcome", "?")] += 1
        if entry.get("via") == "lookup":
            counts["exists via lookup"] += 1
        if entry.get("status") == 409:
            counts["answered 409"] += 1
    return counts


# -- the soak -------------------------------------------------------------------------------
@dataclass
class Run:
    number: int
    exit: int
    seconds: float
    event: str = ""
    summary: dict[str, object] = field(default_factory=dict)
    error: str = ""


@dataclass
class Soak:
    args: argparse.Namespace
    env: dict[str, str]
    work: Path
    data_dir: Path
    port: int
    source: Path
    sandbox: Sandbox | None = None
    sandboxes: list[Sandbox] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    killed_in: int | None = None
    restarted_in: int | None = None
    restart_seconds: float = 0.0
    phase2_from: int | None = None
    client: subprocess.Popen[bytes] | None = None

    @property
    def journal(self) -> Path:
        return Path(str(self.source) + ".journal")

    def faults(self, seed: int, corrupt_rate: float) -> dict[str, float | int]:
        a = self.args
        return {
            "drop_rate": a.drop_rate,
            "error_rate": a.error_rate,
            "latency_ms": a.latency_ms,
            "corrupt_rate": corrupt_rate,
            "seed": seed,
        }

    def start_sandbox(self, seed: int, corrupt_rate: float) -> None:
        log = self.work / f"sandbox-{len(self.sandboxes) + 1}.log"
        self.sandbox = Sandbox(
            self.env, self.data_dir, self.port, log, faults=self.faults(seed, corrupt_rate)
        )
        self.sandboxes.append(self.sandbox)
        self.sandbox.wait_ready()

    def restart_sandbox(self, seed: int, corrupt_rate: float) -> int | None:
        assert self.sandbox is not None
        started = time.monotonic()
        rc = self.sandbox.stop()
        self.start_sandbox(seed, corrupt_rate)
        self.restart_seconds = time.monotonic() - started
        return rc

    def one_run(self, deadline: float) -> Run:
        number = len(self.runs) + 1
        argv = [*cwsctl_argv(), "-q", "--json", "patients", "create", "--from", str(self.source)]
        argv += ["--concurrency", str(self.args.concurrency)]
        offset = self.journal.stat().st_size if self.journal.exists() else 0
        started = time.monotonic()
        out_path, err_path = self.work / "client.out", self.work / "client.err"
        event = ""
        with out_path.open("wb") as out, err_path.open("wb") as err:
            self.client = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
            want_kill = self.killed_in is None
            want_restart = self.killed_in is not None and self.restarted_in is None
            while self.client.poll() is None:
                time.sleep(0.02)
                now = time.monotonic()
                if now > deadline or now - started > self.args.run_timeout:
                    self.client.kill()
                    event = "stopped: time limit"
                    break
                if not (want_kill or want_restart):
                    continue
                progress = _new_lines(self.journal, offset)
                if progress < self.args.event_after:
                    continue
                if want_kill:
                    self.client.send_signal(signal.SIGKILL)
                    self.killed_in, want_kill = number, False
                    event = f"SIGKILL after {progress} journal entries"
                elif want_restart:
                    rc = self.restart_sandbox(self.args.seed + 1, self.args.corrupt_rate)
                    self.restarted_in, want_restart = number, False
                    event = (
                        f"sandbox SIGTERM (exit {rc}) + restart after {progress} journal "
                        f"entries, {self.restart_seconds:.1f} s down"
                    )
            rc = self.client.wait()
            if self.killed_in == number and rc != -signal.SIGKILL:
                self.killed_in, event = None, "ended before the SIGKILL landed"
        self.client = None
        seconds = time.monotonic() - started
        try:
            summary = json.loads(out_path.read_text() or "{}")
        except ValueError:
            summary = {}
        lines = err_path.read_text(errors="replace").strip().splitlines()
        # The error line, or a traceback's last line (exit 1: a crash, e.g. a broken import).
        error = (lines[-1] if lines[0].startswith("Traceback") else lines[0]) if lines else ""
        return Run(number, rc, seconds, event, summary, error[:200])

    def drive(self) -> bool:
        """Run until exit 0 (True) or a bound is hit (False)."""
        a = self.args
        begin = time.monotonic()
        deadline = begin + a.max_minutes * 60
        phase1_end = begin + a.phase1_minutes * 60
        while len(self.runs) < a.max_runs and time.monotonic() < deadline:
            if (
                self.phase2_from is None
                and time.monotonic() > phase1_end
                and a.fallback_corrupt_rate < a.corrupt_rate
            ):
                self.phase2_from = len(self.runs) + 1
                self.restart_sandbox(a.seed + 2, a.fallback_corrupt_rate)
                print(
                    f"  phase 2 from run {self.phase2_from}: corrupt rate "
                    f"{a.fallback_corrupt_rate:g} (phase 1 did not finish in "
                    f"{a.phase1_minutes:g} min)",
                    flush=True,
                )
            run = self.one_run(deadline)
            self.runs.append(run)
            if a.verbose or run.event or run.number % 25 == 0 or run.exit not in (0, 7):
                done = run.summary.get("skipped", 0)
                print(
                    f"  run {run.number:>4}: exit {run.exit:>3} in {run.seconds:5.1f} s"
                    f"  (done earlier {done}, created {run.summary.get('created', '-')},"
                    f" exists {run.summary.get('exists', '-')})"
                    + (f"  [{run.event}]" if run.event else ""),
                    flush=True,
                )
            if run.exit == 0:
                # (With a tiny --rows the load may end before the SIGKILL and the restart
                # both happened: the verdict then reports the missing event.)
                return True
        return False

    def cleanup(self) -> None:
        if self.client is not None and self.client.poll() is None:
            self.client.kill()
            self.client.wait()
        for sandbox in self.sandboxes:
            sandbox.stop()


def _new_lines(path: Path, offset: int) -> int:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="rows to load (10000; quick 500)")
    parser.add_argument("--seed", type=int, default=20261123, help="fault seed (restart: +1)")
    parser.add_argument("--quick", action="store_true", help="500 rows, for a smoke run")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="time budget (20)")
    parser.add_argument(
        "--phase1-minutes",
        type=float,
        default=None,
        help="after this, lower the corrupt rate (default: 3/4 of --max-minutes)",
    )
    parser.add_argument("--max-runs", type=int, default=5000, help="bound on client runs (5000)")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="seconds per run (600)")
    parser.add_argument("--concurrency", type=int, default=8, help="client --concurrency (8)")
    parser.add_argument("--drop-rate", type=float, default=0.10)
    parser.add_argument("--error-rate", type=float, default=0.05)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--corrupt-rate", type=float, default=0.01)
    parser.add_argument(
        "--fallback-corrupt-rate",
        type=float,
        default=0.001,
        help="corrupt rate of phase 2, if phase 1 runs out of time (0.001)",
    )
    parser.add_argument(
        "--event-after",
        type=int,
        default=None,
        help="journal entries a run must write before the SIGKILL / restart (quick 10, else 30)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = parser.parse_args(argv)
    args.rows = args.rows or (500 if args.quick else 10_000)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    if args.phase1_minutes is None:
        args.phase1_minutes = args.max_minutes * 0.75
    if args.event_after is None:
        args.event_after = 10 if args.quick or args.rows < 2000 else 30
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cwsctl-soak-"))
    home, data_dir = work / "home", work / "sandbox"
    env = clean_env(home)
    source = work / "rows.csv"
    soak: Soak | None = None

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    began = time.monotonic()
    finished = False
    try:
        print(f"soak: {args.rows} rows, seed {args.seed}, {machine()}; work dir {work}")
        try:
            port = free_port()
            setup_profile(env, work, data_dir, f"http://127.0.0.1:{port}")
            write_rows(source, args.rows)
            soak = Soak(args, env, work, data_dir, port, source)
            soak.start_sandbox(args.seed, args.corrupt_rate)
        except SetupError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 2
        faults = soak.faults(args.seed, args.corrupt_rate)
        print(
            "sandbox: "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in faults.items())
            + f" (pid {soak.sandbox.pid if soak.sandbox else '?'}, port {port})",
            flush=True,
        )
        began = time.monotonic()
        try:
            finished = soak.drive()
        except KeyboardInterrupt:
            print("interrupted: cleaning up", file=sys.stderr)
        wall = time.monotonic() - began
        soak.cleanup()  # the sandbox must be stopped before its database is read
        report(args, soak, finished, wall, data_dir / "sandbox.db")
        return 0 if verdict(soak, finished, data_dir / "sandbox.db", args.rows) else 1
    finally:
        if soak is not None:
            soak.cleanup()
        signal.signal(signal.SIGTERM, previous)
        remove_work_dir(work, keep=args.keep)


_DB_CHECK: dict[str, object] = {}


def database(db: Path, rows: int) -> dict[str, object]:
    if not _DB_CHECK:
        _DB_CHECK.update(check_database(db, rows))
    return _DB_CHECK


def verdict(soak: Soak, finished: bool, db: Path, rows: int) -> bool:
    check = database(db, rows)
    return (
        finished
        and bool(soak.runs)
        and soak.runs[-1].exit == 0
        and soak.killed_in is not None
        and soak.restarted_in is not None
        and check["stored"] == rows
        and check["lost"] == check["duplicated"] == check["extra"] == check["altered"] == 0
    )


def report(args: argparse.Namespace, soak: Soak, finished: bool, wall: float, db: Path) -> None:
    logs = read_access_logs([s.log_path for s in soak.sandboxes])
    check = database(db, args.rows)
    codes = Counter(run.exit for run in soak.runs)
    faults: Counter[str] = logs["faults"]  # type: ignore[assignment]
    by_method: Counter[str] = logs["faults_by_method"]  # type: ignore[assignment]
    statuses: Counter[str] = logs["statuses"]  # type: ignore[assignment]
    journal = journal_stats(soak.journal)
    client_seconds = sum(run.seconds for run in soak.runs)
    print("\nresults")
    print(f"  rows                 {args.rows}")
    print(
        f"  runs                 {len(soak.runs)} (bound {args.max_runs}, "
        f"{args.max_minutes:g} min); finished: {'yes' if finished else 'NO'}"
    )
    print(
        "  exit codes per run   "
        + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()))
        + "  (-9 = the SIGKILL)"
    )
    print(f"  exit-7 runs          {codes.get(7, 0)}")
    print(f"  SIGKILL of client    run {soak.killed_in or 'NOT DONE'}")
    print(
        f"  sandbox restart      run {soak.restarted_in or 'NOT DONE'}"
        + (
            f" ({soak.restart_seconds:.1f} s from SIGTERM to listening)"
            if soak.restarted_in
            else ""
        )
    )
    if soak.phase2_from is not None:
        print(
            f"  phase 2              from run {soak.phase2_from}: corrupt rate lowered to "
            f"{args.fallback_corrupt_rate:g}"
        )
    print(
        f"  requests (access log) {logs['requests']} over {len(soak.sandboxes)} sandbox processes: "
        + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    )
    print(
        "  faults injected      "
        + ", ".join(f"{kind} {faults.get(kind, 0)}" for kind in FAULT_KINDS)
        + f"  (latency 0–{args.latency_ms} ms on every patient request)"
    )
    print("  faults by method     " + ", ".join(f"{k} {v}" for k, v in sorted(by_method.items())))
    print(
        "  journal entries      "
        + ", ".join(f"{k} {v}" for k, v in sorted(journal.items()))
        + "  (a line torn by the SIGKILL is cut on reopen)"
    )
    print(
        f"  re-sent POSTs        {statuses.get('POST 409', 0)} answered 409 (a patient sent "
        f"again after it was created); {journal.get('exists via lookup', 0)} in-doubt rows "
        "were found by lookup instead"
    )
    print(
        f"  sandbox DB           {check['stored']} patients; lost {check['lost']}, "
        f"duplicated {check['duplicated']}, extra {check['extra']}, altered {check['altered']}"
    )
    print(
        f"  wall time            {wall:.1f} s ({client_seconds:.1f} s inside client runs, "
        f"{client_seconds / max(len(soak.runs), 1):.2f} s per run)"
    )
    print(f"  rows/s               {args.rows / wall:.1f} (rows / wall time, all runs)")
    ok = verdict(soak, finished, db, args.rows)
    print(f"\nverdict: {'PASS' if ok else 'FAIL'} (exactly the input, none lost, none twice)")
    odd = [run for run in soak.runs if run.exit not in (0, 5, 6, 7, -9)]
    for run in odd[:5]:
        print(f"  unexpected: run {run.number} exit {run.exit}: {run.error}")


if __name__ == "__main__":
    sys.exit(main())
