"""Cold-start benchmark for ``cwsctl sign`` (a measurement, not a test).

Times fresh processes of:

* ``cwsctl sign BODY --key KEY --username bench`` (the console script next to this
  interpreter, else ``python -m cwsctl``),
* the Python floor: ``python -c "from cryptography.hazmat.primitives.asymmetric import rsa"``,
* the walkthrough's pipeline: ``openssl dgst -sha256 -sign KEY BODY | openssl enc -A -base64``,

and prints median/min wall time and the ratios cwsctl/floor (goal: at most 2.5x) and
cwsctl/openssl. It also checks once that cwsctl's signature equals openssl's, and that
``cwsctl --help`` does not import httpx.

Exit status: 0 whatever the ratios are; 1 if ``--help`` imports httpx, the signatures differ
or a command fails; 2 if the setup (openssl, key, body) cannot be made.

Run: ``python bench/startup.py [--runs N] [--warmup N]`` from the project's virtualenv.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GOAL_RATIO = 2.5
KEY_BITS = 4096
BODY = b'{"InmateId": "12345", "Action": "GetInmate", "Facility": "Main"}'
SIG_RE = re.compile(r"Signature=(\S+)")
# Variables that would slow Python down or change what cwsctl does.
DROP_ENV = ("PYTHONPROFILEIMPORTTIME", "PYTHONDEVMODE", "PYTHONTRACEMALLOC", "PYTHONMALLOC")


@dataclass
class Command:
    label: str
    argv: list[str]
    times: list[float]


def cwsctl_prefix() -> tuple[list[str], str]:
    """The console script from this interpreter's bin dir if installed, else ``python -m``."""
    bindir = Path(sys.executable).parent
    for name in ("cwsctl", "cwsctl.exe"):
        script = bindir / name
        if script.is_file() and os.access(script, os.X_OK):
            return [str(script)], str(script)
    return [sys.executable, "-m", "cwsctl"], f"{sys.executable} -m cwsctl"


def bench_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWSCTL_") and k not in DROP_ENV}
    env["CWSCTL_HOME"] = str(home)
    return env


def run_once(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{argv!r} exited {proc.returncode}: {err}")
    return elapsed


def make_fixture(tmp: Path) -> tuple[Path, Path]:
    key = tmp / "key.pem"
    body = tmp / "body.json"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(key), str(KEY_BITS)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    key.chmod(0o600)
    body.write_bytes(BODY)
    return key, body


def capture(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
    return proc.stdout.decode().strip()


def imported_modules(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[set[str], int]:
    """Modules a Python command imports, from ``-X importtime``, and its exit status."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    names = set()
    for line in proc.stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name)
    return names, proc.returncode


def has_httpx(names: set[str]) -> bool:
    return any(n == "httpx" or n.startswith("httpx.") for n in names)


def tool_version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, check=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description="Cold-start benchmark for cwsctl sign.")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    if shutil.which("openssl") is None or shutil.which("sh") is None:
        print("error: openssl and sh must be on PATH", file=sys.stderr)
        return 2

    prefix, cwsctl_shown = cwsctl_prefix()
    print(f"python:  {sys.executable} ({platform.python_version()})")
    print(f"cwsctl:  {cwsctl_shown}")
    print(f"openssl: {tool_version(['openssl', 'version'])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory(prefix="cwsctl-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            key, body = make_fixture(tmp)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"error: cannot create the {KEY_BITS}-bit key and body: {exc}", file=sys.stderr)
            return 2
        env = bench_env(tmp)
        pipeline = 'openssl dgst -sha256 -sign "$1" "$2" | openssl enc -A -base64'
        sign_args = ["sign", str(body), "--key", str(key), "--username", "bench"]
        commands = [
            Command("cwsctl sign", [*prefix, *sign_args], []),
            Command(
                "python floor",
                [sys.executable, "-c", "from cryptography.hazmat.primitives.asymmetric import rsa"],
                [],
            ),
            Command("openssl pipeline", ["sh", "-c", pipeline, "sh", str(key), str(body)], []),
        ]
        cws, floor, ossl = commands

        # Correctness first: the measured command must print openssl's signature.
        header = capture(cws.argv, env, tmp)
        expected = capture(ossl.argv, env, tmp)
        match = SIG_RE.search(header)
        sig_ok = bool(match) and match.group(1) == expected
        print(
            f"signature: cwsctl {'==' if sig_ok else '!='} openssl dgst -sha256 -sign | base64 "
            f"({KEY_BITS}-bit key, {len(BODY)}-byte body): {'OK' if sig_ok else 'MISMATCH'}"
        )
        if not sig_ok:
            print(f"  cwsctl:  {header}\n  openssl: {expected}")

        # --help must not import httpx (network code is only for commands that send).
        help_entry = prefix[-1:] if prefix[0] != sys.executable else ["-m", "cwsctl"]
        help_mods, help_rc = imported_modules([*help_entry, "--help"], env, tmp)
        sign_mods, _ = imported_modules([*help_entry, *sign_args], env, tmp)
        help_ok = help_rc == 0 and not has_httpx(help_mods)
        print(
            f"cwsctl --help imports httpx: {'yes' if has_httpx(help_mods) else 'no'} "
            f"({len(help_mods)} modules, exit {help_rc}): {'PASS' if help_ok else 'FAIL'}"
        )
        print(
            f"cwsctl sign imports httpx: {'yes' if has_httpx(sign_mods) else 'no'} "
            f"({len(sign_mods)} modules; informational)"
        )

        # Timing: warm-ups, then round-robin so drift affects every command alike.
        try:
            for _ in range(args.warmup):
                for cmd in commands:
                    run_once(cmd.argv, env, tmp)
            for _ in range(args.runs):
                for cmd in commands:
                    cmd.times.append(run_once(cmd.argv, env, tmp))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    med = {c.label: statistics.median(c.times) * 1000 for c in commands}
    low = {c.label: min(c.times) * 1000 for c in commands}
    print(f"\n{args.runs} runs each after {args.warmup} warm-up runs (wall time, ms)")
    print(f"{'command':<18} {'median':>9} {'min':>9} {'cwsctl/this':>12}")
    for c in commands:
        ratio = med[cws.label] / med[c.label]
        print(f"{c.label:<18} {med[c.label]:>9.1f} {low[c.label]:>9.1f} {ratio:>11.2f}x")

    vs_floor = med[cws.label] / med[floor.label]
    vs_ossl = med[cws.label] / med[ossl.label]
    verdict = "PASS" if vs_floor <= GOAL_RATIO else "FAIL"
    print(f"\ncwsctl sign vs openssl pipeline: {vs_ossl:.1f}x (median)")
    print(
        f"cwsctl sign cold start: {vs_floor:.1f}x the Python floor "
        f"(goal <= {GOAL_RATIO}x): {verdict}"
    )
    return 0 if help_ok and sig_ok else 1


if __name__ == "__main__":
    sys.exit(main())
