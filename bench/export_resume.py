"""`cwsctl export` killed and resumed in each phase at 100,000 patients (issue 21, "Done when").

Against the OpenEMR-flavour sandbox as its own process (``cwsctl sandbox serve --kind openemr
--system-scopes``, access log on), seeded with ``--patients`` patients (default 100,000;
``cwsctl sandbox openemr seed``), with profile ``emr`` set up as bench/export.py does (``keygen``,
``oauth register --export-scopes``, the administrator's ``sandbox openemr enable-client``). The
profile's URL is a throttling TCP relay in front of the sandbox (``ThrottlingProxy`` from
tests/targets/openemr/test_export.py): it passes bytes at full speed, except while a mid-download phase slows the
server's bytes down so that the client can be killed while the Patient file is being written.
cwsctl itself is not changed in any way.

Phases, each into a fresh DIR, each run ``cwsctl -q --json -p emr export --out DIR``:

- **reference** (OpenEMR's mode: the export is built inside the kick-off): one uninterrupted
  export into DIR_A; every other DIR must end up with exactly DIR_A's NDJSON lines;
- **kick-off** (OpenEMR's mode): the signal arrives while the kick-off request is in flight
  (state ``kicking-off``). No status URL has come back, so the rerun must kick off again: two
  kick-offs are expected here, and nothing else may differ;
- **download** (both modes): the relay slows the server's bytes to ``--throttle`` bytes/s; the
  signal arrives once ``Patient-*.ndjson.part`` exists and has grown past ``--kill-at`` bytes;
  then the relay goes back to full speed and the same command runs again;
- **poll** (specification mode, the sandbox restarted on the same port and data dir with
  ``--export-mode spec --export-delay S``): the signal arrives while cwsctl polls the status URL
  (state ``running``, ``--poll-kill-after`` seconds after the kick-off); then the same command.

Each of kick-off, download and poll is done with SIGKILL and with SIGINT (Ctrl-C: exit 130
expected); the specification mode also gets a reference run of its own. After each phase:
the rerun exits 0; kick-offs (``GET …/$export`` lines in the sandbox's access log during the
phase) are 1 (2 for the kick-off phase) and the state file's status URL is the same before and
after the rerun; no ``.part`` file is left; ``manifest.json`` matches the files (bytes, lines,
SHA-256); and the multiset of NDJSON lines over DIR's files equals DIR_A's (every line once: no
duplicate line or resource id, none missing).

Printed: a table (phase, mode, signal, exit codes, kick-offs, lines, identical to reference,
wall times of the interrupted run and of the rerun) and a verdict. A kick-off phase whose
kick-off ended before the signal was due (small ``--patients``) is SKIP, not a failure. Exit
status 0 when no phase fails, 1 when one does, 2 if the setup fails. Run from the project's virtualenv:
``python bench/export_resume.py [--patients N] [--keep]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from openemr import register_and_enable  # noqa: E402
from sandbox_process import (  # noqa: E402
    Sandbox,
    SetupError,
    clean_env,
    cwsctl_argv,
    free_port,
    machine,
    remove_work_dir,
    run_setup,
)
from test_export import STATE, ThrottlingProxy  # noqa: E402  (the tests' throttling relay)

KICKOFF_PATH = "/$export"


def kickoffs(log: Path) -> int:
    """``GET …/$export`` lines in the sandbox's access log ``log`` so far."""
    count = 0
    with log.open("rb") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == b"GET" and parts[2].endswith(KICKOFF_PATH.encode()):
                count += 1
    return count


def settled_kickoffs(log: Path, quiet: float = 1.0, timeout: float = 60.0) -> int:
    """The kick-off count once it has not changed for ``quiet`` seconds (a kick-off whose
    client was killed is logged when the server has built its export)."""
    deadline = time.monotonic() + timeout
    last, since = kickoffs(log), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = kickoffs(log)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


@dataclass
class Row:
    phase: str
    mode: str
    sig: str
    codes: list[int] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    kickoffs: int = 0
    expected_kickoffs: int = 1
    same_status_url: bool | None = None
    lines: int = 0
    identical: bool = False
    problems: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems


def line_digests(directory: Path) -> tuple[Counter[bytes], int, list[str]]:
    """(multiset of line digests over DIR's NDJSON files, distinct resource ids, problems)."""
    counts: Counter[bytes] = Counter()
    ids: set[tuple[str, str]] = set()
    problems = []
    for path in sorted(directory.glob("*.ndjson")):
        with path.open("rb") as handle:
            for raw in handle:
                line = raw.rstrip(b"\n")
                if not line:
                    continue
                counts[hashlib.blake2b(line, digest_size=16).digest()] += 1
                resource = json.loads(line)
                key = (str(resource.get("resourceType")), str(resource.get("id")))
                if key in ids:
                    problems.append(f"{path.name}: {key[0]}/{key[1]} twice")
                ids.add(key)
    return counts, len(ids), problems


def manifest_problems(directory: Path) -> list[str]:
    """Differences between manifest.json and the files it lists; ``.part`` files left over."""
    problems = [f"{p.name} left behind" for p in directory.glob("*.part")]
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return [*problems, f"manifest.json: {exc}"]
    for entry in manifest.get("output", []) + [e for e in manifest.get("error", []) if "url" in e]:
        path = directory / entry["path"]
        sha = hashlib.sha256()
        size = lines = 0
        last = b""
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        lines += 1 if size and last != b"\n" else 0  # the last line has no newline
        if (entry.get("bytes"), entry.get("sha256")) != (size, sha.hexdigest()):
            problems.append(f"manifest.json disagrees with {entry['path']} (bytes or SHA-256)")
        if entry.get("lines") != lines:
            problems.append(f"manifest.json: {entry['path']} {entry.get('lines')} lines, {lines}")
    return problems


class Bench:
    def __init__(self, options: argparse.Namespace, work: Path) -> None:
        self.options = options
        self.work = work
        self.env = clean_env(work / "home")
        self.cws = cwsctl_argv()
        self.sandbox: Sandbox | None = None
        self.relay: ThrottlingProxy | None = None
        self.reference: Counter[bytes] | None = None
        self.rows: list[Row] = []
        self.dirs = 0

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> float:
        data = self.work / "data"
        data.mkdir(mode=0o700)
        started = time.perf_counter()
        seed = ["sandbox", "openemr", "seed", "--patients", str(self.options.patients)]
        run_setup([*self.cws, *seed, "--data-dir", str(data)], self.env, "seed")
        seeded = time.perf_counter() - started
        self.start_sandbox(data, free_port())
        assert self.sandbox is not None
        self.relay = ThrottlingProxy(("127.0.0.1", self.sandbox.port))
        cws, env = self.cws, self.env
        init = ["profile", "init", "emr", "--kind", "openemr", "--url", self.relay.url]
        run_setup([*cws, *init], env, "init")
        run_setup([*cws, "-p", "emr", "keygen", "--bits", "2048"], env, "keygen")
        register_and_enable(cws, env, "emr", data, "--export-scopes")
        return seeded

    def start_sandbox(self, data: Path, port: int, *extra: str) -> None:
        """``cwsctl sandbox serve --kind openemr --system-scopes`` on ``port`` as ``self.sandbox``
        (set before the wait, so that a failed start is still stopped), access log on (appended
        to sandbox.log, so that a restart keeps counting)."""
        self.sandbox = Sandbox(
            self.env,
            data,
            port,
            self.work / "sandbox.log",
            cws=self.cws,
            kind="openemr",
            extra=("--system-scopes", *extra),
            append=True,
        )
        self.sandbox.wait_ready()

    # -- runs ---------------------------------------------------------------------------------
    def new_dir(self) -> Path:
        self.dirs += 1
        return self.work / f"DIR_{chr(ord('A') + self.dirs - 1)}"

    def start(self, out: Path) -> subprocess.Popen[str]:
        argv = [*self.cws, "-q", "--json", "-p", "emr", "export", "--out", str(out)]
        return subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, proc: subprocess.Popen[str], started: float) -> tuple[int, float, str, str]:
        out, err = proc.communicate(timeout=self.options.run_timeout)
        return proc.returncode, time.perf_counter() - started, out, err

    @staticmethod
    def state(out: Path) -> dict[str, Any]:
        try:
            data = json.loads((out / STATE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def wait_for(self, proc: subprocess.Popen[str], condition: Any, what: str) -> None:
        deadline = time.monotonic() + self.options.run_timeout
        while not condition():
            if proc.poll() is not None:
                raise PhaseError(f"cwsctl ended (exit {proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise PhaseError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def check_dir(self, row: Row, out: Path) -> None:
        counts, distinct, problems = line_digests(out)
        row.problems += problems + manifest_problems(out)
        row.lines = sum(counts.values())
        if self.reference is None:
            self.reference = counts
        row.identical = counts == self.reference and all(n == 1 for n in counts.values())
        if not row.identical:
            missing = sum((self.reference - counts).values())
            extra = sum((counts - self.reference).values())
            row.problems.append(f"lines differ from DIR_A: {missing} missing, {extra} extra")
        if distinct != row.lines:
            row.problems.append(f"{row.lines} lines but {distinct} distinct resources")
        if row.lines != self.options.patients:
            row.problems.append(f"{row.lines} lines, {self.options.patients} patients seeded")

    def uninterrupted(self, mode: str) -> Row:
        assert self.sandbox is not None
        row = Row("reference", mode, "-")
        out = self.new_dir()
        before = kickoffs(self.sandbox.log_path)
        code, wall, _, err = self.finish(self.start(out), time.perf_counter())
        row.codes.append(code)
        row.walls.append(wall)
        if code != 0:
            row.problems.append(f"exit {code}: {err.strip()[-300:]}")
        row.kickoffs = settled_kickoffs(self.sandbox.log_path) - before
        if row.kickoffs != 1:
            row.problems.append(f"{row.kickoffs} kick-offs, expected 1")
        self.check_dir(row, out)
        self.close_dir(out)
        return row

    def interrupted(self, phase: str, mode: str, sig: signal.Signals) -> Row:
        assert self.sandbox is not None and self.relay is not None
        row = Row(phase, mode, sig.name, expected_kickoffs=2 if phase == "kick-off" else 1)
        out = self.new_dir()
        before = kickoffs(self.sandbox.log_path)
        started = time.perf_counter()
        proc = self.start(out)
        try:
            if phase == "kick-off":
                self.wait_for(
                    proc, lambda: self.state(out).get("state") == "kicking-off", "the kick-off"
                )
                time.sleep(self.options.kickoff_kill_after)
                if self.state(out).get("state") != "kicking-off":
                    return self.skip(row, proc, "the kick-off ended before the signal was due")
            elif phase == "poll":
                self.wait_for(
                    proc, lambda: self.state(out).get("state") == "running", "the first poll"
                )
                time.sleep(self.options.poll_kill_after)
                if self.state(out).get("state") != "running":
                    row.problems.append("cwsctl was no longer polling when the signal went")
            else:  # download
                self.relay.rate = self.options.throttle

                def grown() -> bool:
                    parts = list(out.glob("Patient-*.ndjson.part"))
                    try:
                        return bool(parts) and parts[0].stat().st_size > self.options.kill_at
                    except OSError:
                        return False

                self.wait_for(proc, grown, "the Patient file to grow")
            proc.send_signal(sig)
        except PhaseError as exc:
            row.problems.append(str(exc))
            proc.kill()
        code, wall, _, err = self.finish(proc, started)
        self.relay.rate = None
        row.codes.append(code)
        row.walls.append(wall)
        expected = 130 if sig == signal.SIGINT else -signal.SIGKILL
        if code != expected:
            row.problems.append(f"interrupted run: exit {code}, expected {expected}: {err[-300:]}")
        state = self.state(out)
        if phase == "download":
            if state.get("state") != "downloading":
                row.problems.append(f"state after the signal: {state.get('state')!r}")
            if any(f.get("done") for f in state.get("files", []) if f.get("type") == "Patient"):
                row.problems.append("the Patient file was already done when the signal went")
        status_before = state.get("status_url")
        code, wall, stdout, err = self.finish(self.start(out), time.perf_counter())
        row.codes.append(code)
        row.walls.append(wall)
        if code != 0:
            row.problems.append(f"rerun: exit {code}: {err.strip()[-300:]}")
        else:
            summary = json.loads(stdout)
            if phase != "kick-off" and (summary.get("kicked_off") or not summary.get("resumed")):
                row.problems.append("the rerun did not resume the job")
        status_after = self.state(out).get("status_url")
        if phase != "kick-off":
            row.same_status_url = bool(status_before) and status_before == status_after
            if not row.same_status_url:
                row.problems.append(f"status URL {status_before!r} -> {status_after!r}")
        row.kickoffs = settled_kickoffs(self.sandbox.log_path) - before
        if row.kickoffs != row.expected_kickoffs:
            row.problems.append(f"{row.kickoffs} kick-offs, expected {row.expected_kickoffs}")
        self.check_dir(row, out)
        self.close_dir(out)
        return row

    def skip(self, row: Row, proc: subprocess.Popen[str], why: str) -> Row:
        """A phase whose moment passed too fast at this size: let the run end, no verdict."""
        proc.communicate(timeout=self.options.run_timeout)
        row.skipped = f"{why} (raise --patients)"
        return row

    def close_dir(self, out: Path) -> None:
        if not self.options.keep:
            for path in out.iterdir():
                path.unlink()
            out.rmdir()

    def run(self) -> None:
        assert self.sandbox is not None
        phases: list[tuple[str, str, signal.Signals | None]] = [
            ("reference", "openemr", None),
            ("kick-off", "openemr", signal.SIGKILL),
            ("kick-off", "openemr", signal.SIGINT),
            ("download", "openemr", signal.SIGKILL),
            ("download", "openemr", signal.SIGINT),
            ("reference", "spec", None),
            ("poll", "spec", signal.SIGKILL),
            ("poll", "spec", signal.SIGINT),
            ("download", "spec", signal.SIGKILL),
            ("download", "spec", signal.SIGINT),
        ]
        mode = "openemr"
        for phase, phase_mode, sig in phases:
            if phase_mode != mode:  # the same port and data dir: the profile stays as it is
                self.sandbox.stop()
                delay = str(self.options.export_delay)
                spec = ("--export-mode", "spec", "--export-delay", delay)
                self.start_sandbox(self.sandbox.data_dir, self.sandbox.port, *spec)
                mode = phase_mode
            row = self.uninterrupted(mode) if sig is None else self.interrupted(phase, mode, sig)
            self.rows.append(row)
            print(f"{format_row(row)}  {'; '.join(row.problems) or row.skipped}", flush=True)


class PhaseError(Exception):
    """A phase could not reach its moment (cwsctl ended first, or a timeout)."""


HEADER = (
    f"{'phase':<10} {'mode':<8} {'signal':<8} {'exit codes':<11} {'kick-offs':>9} "
    f"{'lines':>8}  {'identical':<9} {'wall (s)':<14} verdict"
)


def verdict(row: Row) -> str:
    return "SKIP" if row.skipped else "PASS" if row.passed else "FAIL"


def format_row(row: Row) -> str:
    codes = " -> ".join(str(c) for c in row.codes)
    walls = " + ".join(f"{w:.1f}" for w in row.walls)
    kicks = f"{row.kickoffs}/{row.expected_kickoffs}"
    return (
        f"{row.phase:<10} {row.mode:<8} {row.sig:<8} {codes:<11} {kicks:>9} {row.lines:>8}  "
        f"{'yes' if row.identical else 'NO':<9} {walls:<14} {verdict(row)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--export-delay", type=float, default=6.0, help="spec mode (seconds)")
    parser.add_argument("--poll-kill-after", type=float, default=1.5, help="seconds into polling")
    parser.add_argument(
        "--kickoff-kill-after", type=float, default=0.5, help="seconds into the kick-off"
    )
    parser.add_argument("--throttle", type=int, default=2_000_000, help="bytes/s mid-download")
    parser.add_argument("--kill-at", type=int, default=1 << 20, help=".part bytes before the kill")
    parser.add_argument("--run-timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args()
    # A Ctrl-C must reach cwsctl as KeyboardInterrupt: children of a shell's background job
    # inherit SIGINT ignored, which a Python handler here resets to the default on exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="cwsctl-bench-export-resume-"))
    bench = Bench(options, work)
    try:
        seeded = bench.setup()
        print(f"machine: {machine()}")
        print(f"measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"patients: {options.patients} (seeded in {seeded:.1f} s)", flush=True)
        print(HEADER, flush=True)
        bench.run()
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if bench.relay is not None:
            bench.relay.close()
        if bench.sandbox is not None:
            bench.sandbox.stop()
        remove_work_dir(work, keep=options.keep)
    print()
    print(HEADER)
    for row in bench.rows:
        print(format_row(row))
    failed = [row for row in bench.rows if not row.passed]
    skipped = [row for row in bench.rows if row.skipped]
    for row in failed + skipped:
        why = "; ".join(row.problems) or row.skipped
        print(f"{verdict(row)} {row.phase} {row.mode} {row.sig}: {why}")
    passed = len(bench.rows) - len(failed) - len(skipped)
    print(
        f"verdict: {'PASS' if not failed else 'FAIL'} ({passed} passed, {len(failed)} failed, "
        f"{len(skipped)} skipped of {len(bench.rows)} phases)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
