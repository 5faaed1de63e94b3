"""Fuzz cwsctl's parsers of untrusted input for a fixed time per target; report and save crashes.

    python bench/fuzz.py                       # every target, 600 s each, cpu_count() at a time
    python bench/fuzz.py --seconds 60 --target keys --target journal
    python bench/fuzz.py --engine mutate       # force the fallback engine

Targets live in ``tests/fuzz/targets.py``. Each runs in its own subprocess:

- ``atheris`` (when importable): coverage-guided libFuzzer over the instrumented ``cwsctl``
  package, seeded with valid inputs (``tests/fuzz/seeds.py``) and a token dictionary, stopped by
  ``-max_total_time``;
- ``mutate`` (otherwise): random mutations (bit flips, inserts, deletions, splices, dictionary
  tokens) of the seeds, keeping inputs that reach a new outcome as further seeds.

A crash is any exception the target lets escape, grouped by signature (type and the cwsctl
function it escaped from); libFuzzer timeouts and out-of-memory count too. Fuzzing continues after
a crash. The first input of each signature is saved as ``tests/fuzz/crashes/<target>-<hash>.bin``
with its traceback in ``.txt`` (the directory is created only when there is something to save).
Exit status: 0 when no target crashed, 1 otherwise, 2 on a usage or worker failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CRASH_DIR = REPO / "tests" / "fuzz" / "crashes"
TARGET_NAMES = ("authorization_header", "keys", "signature_input", "read_rows", "journal")
STATS_EVERY = 2.0  # seconds between stats.json writes in a worker
# atheris's RegEx hook wraps compiled patterns in a proxy whose match() takes no `pos`, which
# readers.py uses; enable it only for targets whose code calls match/search without one.
REGEX_HOOK_TARGETS = ("authorization_header", "signature_input", "keys", "journal")


# -- worker ------------------------------------------------------------------------------------
class Recorder:
    """Counts executions and crashes of one target; writes stats.json and crash files to ``out``."""

    def __init__(self, name: str, out: Path, engine: str) -> None:
        from tests.fuzz.known import crash_signature, known

        self.name, self.out, self.engine = name, out, engine
        self.signature, self.known = crash_signature, known
        self.execs = 0
        self.crashes: dict[str, dict[str, object]] = {}
        self.start = time.monotonic()
        self.last_write = 0.0

    def run(self, target, data: bytes) -> str:
        """Run one input; return its outcome class ("ok" or a crash signature)."""
        self.execs += 1
        try:
            target(data)
            outcome = "ok"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            outcome = self.signature(exc)
            self._crash(outcome, exc, data)
        now = time.monotonic()
        if now - self.last_write >= STATS_EVERY:
            self.write()
        return outcome

    def _crash(self, signature: str, exc: BaseException, data: bytes) -> None:
        entry = self.crashes.get(signature)
        if entry is not None:
            entry["count"] = int(entry["count"]) + 1  # type: ignore[call-overload]
            return
        digest = hashlib.sha1(signature.encode()).hexdigest()[:12]
        crash_dir = self.out / "crashes"
        crash_dir.mkdir(exist_ok=True)
        (crash_dir / f"{digest}.bin").write_bytes(data)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        (crash_dir / f"{digest}.txt").write_text(
            f"target: {self.name}\nsignature: {signature}\ninput: {data[:200]!r}"
            f"{'…' if len(data) > 200 else ''} ({len(data)} bytes)\n\n{text}"
        )
        self.crashes[signature] = {"count": 1, "file": digest, "known": self.known(exc)}
        self.write()

    def write(self) -> None:
        self.last_write = time.monotonic()
        stats = {
            "target": self.name,
            "engine": self.engine,
            "execs": self.execs,
            "seconds": round(self.last_write - self.start, 1),
            "cpu": round(time.process_time(), 1),
            "crashes": self.crashes,
        }
        tmp = self.out / "stats.json.tmp"
        tmp.write_text(json.dumps(stats))
        tmp.replace(self.out / "stats.json")


def _libfuzzer_dict(tokens: tuple[bytes, ...], path: Path) -> None:
    def quote(token: bytes) -> str:
        return "".join(
            chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\x{b:02x}" for b in token
        )

    path.write_text("".join(f'"{quote(t)}"\n' for t in tokens))


def worker_atheris(name: str, seconds: int, out: Path, max_len: int) -> None:
    import atheris

    # atheris's RegEx hook cannot handle some bytes patterns compiled by cryptography at import
    # time (`.` in a bytes pattern), so third-party modules are imported before it is enabled.
    import cryptography.hazmat.primitives.asymmetric.dsa
    import cryptography.hazmat.primitives.asymmetric.ec
    import cryptography.hazmat.primitives.asymmetric.ed448
    import cryptography.hazmat.primitives.asymmetric.ed25519
    import cryptography.hazmat.primitives.asymmetric.padding
    import cryptography.hazmat.primitives.serialization  # noqa: F401

    import tests.fuzz.known
    import tests.fuzz.seeds  # noqa: F401

    if name in REGEX_HOOK_TARGETS:
        atheris.enabled_hooks.add("RegEx")
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["cwsctl"]):
        from tests.fuzz import targets
    recorder = Recorder(name, out, "atheris")
    target = targets.TARGETS[name]
    corpus_dir = out / "corpus"
    corpus_dir.mkdir()
    for i, seed in enumerate(targets.corpus(name)):
        (corpus_dir / f"seed-{i:03d}").write_bytes(seed)
    _libfuzzer_dict(targets.DICTIONARY[name], out / "tokens.dict")
    recorder.start = time.monotonic()
    recorder.write()

    def test_one_input(data: bytes) -> None:
        recorder.run(target, data)

    atheris.Setup(
        [
            sys.argv[0],
            f"-max_total_time={seconds}",
            f"-max_len={max_len}",
            "-timeout=25",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-dict={out / 'tokens.dict'}",
            f"-artifact_prefix={out}/artifact-",
            str(corpus_dir),
        ],
        test_one_input,
    )
    atheris.Fuzz()  # libFuzzer exits the process when the time is up


_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\r\n", b"\n", b'"', b",", b"=", b"-", b" ")
_INTERESTING += (b"9" * 5000, b"[" * 3000, b"{" * 3000, b"\xed\xa0\x80", b"\\ud800", b"0" * 64)


def _mutate(data: bytes, pool: list[bytes], tokens: tuple[bytes, ...], rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:  # delete a range
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 4 and buf:  # truncate
            del buf[rng.randrange(len(buf)) :]
        elif op == 5 and buf:  # duplicate a range
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 64)]
        elif op == 6:  # token
            buf[pos:pos] = rng.choice(tokens + _INTERESTING)
        else:  # splice with another input
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
    return bytes(buf)


def worker_mutate(name: str, seconds: int, out: Path, max_len: int) -> None:
    from tests.fuzz import targets

    recorder = Recorder(name, out, "mutate")
    target = targets.TARGETS[name]
    pool = list(targets.corpus(name)) or [b""]
    tokens = targets.DICTIONARY[name]
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    seen: set[str] = set()
    recorder.start = time.monotonic()
    deadline = recorder.start + seconds
    for seed in pool:
        seen.add(recorder.run(target, seed))
    while time.monotonic() < deadline:
        data = _mutate(rng.choice(pool), pool, tokens, rng)[:max_len]
        outcome = recorder.run(target, data)
        if outcome not in seen:  # a new kind of result: worth mutating further
            seen.add(outcome)
            pool.append(data)
    recorder.write()


# -- parent ------------------------------------------------------------------------------------
def _has_atheris() -> bool:
    probe = [sys.executable, "-c", "import atheris"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def _collect(name: str, out: Path, wall: float, returncode: int) -> dict[str, object]:
    stats_path = out / "stats.json"
    stats: dict = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    log = (out / "log.txt").read_text(errors="replace") if (out / "log.txt").exists() else ""
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    if done:  # libFuzzer's own count is final; stats.json may be up to STATS_EVERY old
        stats["execs"], stats["seconds"] = int(done[1]), int(done[2])
    crashes: dict = stats.get("crashes", {})
    saved = []
    for entry in crashes.values():
        saved += [
            (out / "crashes" / f"{entry['file']}{ext}", f"{entry['file']}{ext}")
            for ext in (".bin", ".txt")
        ]
    for artifact in sorted(out.glob("artifact-*")):  # libFuzzer: timeout-, oom-, crash-
        kind = artifact.name.removeprefix("artifact-").split("-")[0]
        digest = hashlib.sha1(artifact.read_bytes()).hexdigest()[:12]
        crashes[f"libFuzzer {kind}"] = {"count": 1, "file": digest, "known": None}
        saved.append((artifact, f"{digest}.bin"))
    if saved:
        CRASH_DIR.mkdir(parents=True, exist_ok=True)
        for source, base in saved:
            if source.exists():
                shutil.copyfile(source, CRASH_DIR / f"{name}-{base}")
    return {
        "target": name,
        "engine": stats.get("engine", "?"),
        "seconds": stats.get("seconds", 0),
        "wall": round(wall, 1),
        "cpu": stats.get("cpu", 0),
        "execs": stats.get("execs", 0),
        "crashes": crashes,
        "returncode": returncode,
        "log_tail": log[-2000:] if returncode else "",
    }


def run_all(args: argparse.Namespace) -> int:
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _has_atheris() else "mutate"
    names = args.target or list(TARGET_NAMES)
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen, Path, float, str]] = {}
    results: dict[str, dict[str, object]] = {}
    print(
        f"fuzzing {len(names)} target(s) for {args.seconds} s each with {engine}, "
        f"{args.jobs} at a time; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    grace = 120  # seed generation at start, final stats at the end
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            out = Path(tempfile.mkdtemp(prefix=f"cwsctl-fuzz-{name}-"))
            command = [sys.executable, __file__, "--worker", name, "--engine", engine]
            command += ["--seconds", str(args.seconds), "--max-len", str(args.max_len)]
            command += ["--out", str(out)]
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            scratch = tempfile.mkdtemp(prefix=f"cwsctl-fuzz-{name}-", dir=shm)
            env = {**os.environ, "CWSCTL_FUZZ_SCRATCH": scratch}
            with open(out / "log.txt", "wb") as log:
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
                )
            running[name] = (process, out, time.monotonic(), scratch)
        time.sleep(0.5)
        for name, (process, out, started, scratch) in list(running.items()):
            elapsed = time.monotonic() - started
            if process.poll() is None and elapsed > args.seconds + grace:
                process.kill()  # our own child, by its handle
            if process.poll() is not None:
                del running[name]
                shutil.rmtree(scratch, ignore_errors=True)
                results[name] = _collect(name, out, elapsed, process.returncode)
                _print_result(results[name])
                if args.keep:
                    print(f"  work directory kept: {out}")
                else:
                    shutil.rmtree(out, ignore_errors=True)
    return _summary([results[n] for n in names])


def _print_result(result: dict) -> None:
    crashes: dict = result["crashes"]  # type: ignore[assignment]
    rate = result["execs"] / result["seconds"] if result["seconds"] else 0
    print(
        f"{result['target']:<21} {result['engine']:<8} {result['seconds']:>6} s fuzzing "
        f"({result['wall']} s wall, {result['cpu']} s CPU)  {result['execs']:>10,} execs "
        f"({rate:,.0f}/s)  crashes: {len(crashes)}",
        flush=True,
    )
    for signature, entry in crashes.items():
        tag = f"known: {entry['known']}" if entry.get("known") else "NEW"
        print(
            f"    {entry['count']:>8,} x {signature}  [{tag}] -> {result['target']}-{entry['file']}.bin"
        )
    if result["returncode"] not in (0, None):
        print(
            f"    worker exited with status {result['returncode']}; log tail:\n{result['log_tail']}"
        )


def _summary(results: list[dict]) -> int:
    total_crashes = sum(len(r["crashes"]) for r in results)
    total_execs = sum(r["execs"] for r in results)
    print(
        f"total: {total_execs:,} executions, {total_crashes} crash signature(s)"
        + (f"; inputs saved under {CRASH_DIR.relative_to(REPO)}/" if total_crashes else "")
    )
    if any(r["returncode"] not in (0, None) and not r["crashes"] for r in results):
        return 2
    return 1 if total_crashes else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=600, help="fuzzing time per target")
    parser.add_argument("--target", action="append", choices=TARGET_NAMES, help="repeatable")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="targets at once")
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument("--max-len", type=int, default=16384, help="longest input, bytes")
    parser.add_argument("--keep", action="store_true", help="keep work dirs (corpus, logs)")
    parser.add_argument("--worker", choices=TARGET_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.jobs <= 0:
        parser.error("--seconds and --jobs must be positive")
    if args.worker:
        sys.path.insert(0, str(REPO))
        run = worker_atheris if args.engine == "atheris" else worker_mutate
        run(args.worker, args.seconds, args.out, args.max_len)
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
