"""`cwsctl export` against curl by hand, in one run (issue 21 item 6): wall time and peak RSS.

Against the OpenEMR-flavour sandbox as its own process (``cwsctl sandbox serve --kind openemr
--system-scopes``, OpenEMR's export mode: the export runs inside the kick-off request), seeded with
``--patients`` patients (default 100,000; ``cwsctl sandbox openemr seed``), with one profile
registered the way a user does it (``keygen``, ``oauth register --export-scopes``, the
administrator's ``sandbox openemr enable-client``), it runs alternately ``--reps`` times:

1. **cwsctl**: ``cwsctl -q --json -p emr export --out DIR`` into a fresh DIR; wall time of the
   process, and its peak RSS from ``wait4`` (the child's own ``ru_maxrss``);
2. **curl by hand**, the walkthrough cwsctl replaces: a token from ``cwsctl oauth token``, then
   ``curl`` for the kick-off (``Accept: application/fhir+json``, ``Prefer: respond-async``, the
   ``Content-Location`` read from the headers), one ``curl`` for the status URL, and one ``curl``
   fetching every file of the manifest (``-o`` per URL); wall time from the kick-off to the last
   byte (the token's own time is left out: a script keeps one for five minutes).

Both do the same server work (the synchronous kick-off builds the NDJSON), so the ratio compares
the client side: cwsctl also checks every line (JSON, resourceType), hashes the files and writes
its state and manifest atomically. The files of each side are compared (same bytes).

Printed: median wall times, the ratio cwsctl/curl (medians), cwsctl's largest peak RSS, and the
verdict: RSS under 100 MiB. Exit status 0 whatever the figures; 2 if the setup fails. Run from
the project's virtualenv: ``python bench/export.py [--patients N] [--reps N] [--keep]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from openemr import register_and_enable
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

RSS_LIMIT_MIB = 100


def timed_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str, str]:
    """Run ``argv``; (wall seconds, peak RSS MiB, exit status, stdout, stderr)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, out, err


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise SetupError(f"curl {args[-1]}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def curl_by_hand(fhir: str, token: str, out: Path) -> float:
    """The walkthrough: kick-off, status, every file; wall seconds."""
    auth = f"Authorization: Bearer {token}"
    out.mkdir()
    started = time.perf_counter()
    kick = curl(
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        auth,
        "-H",
        "Accept: application/fhir+json",
        "-H",
        "Prefer: respond-async",
        f"{fhir}/$export",
    )
    location = next(
        line.split(":", 1)[1].strip()
        for line in kick.stdout.splitlines()
        if line.lower().startswith("content-location:")
    )
    manifest = json.loads(curl("-H", auth, location).stdout)
    fetch: list[str] = []
    for index, entry in enumerate(manifest["output"]):
        fetch += ["-o", str(out / f"{entry['type']}-{index}.ndjson"), entry["url"]]
    if fetch:
        curl("-H", auth, *fetch)
    return time.perf_counter() - started


def digest(paths: list[Path]) -> list[str]:
    result = []
    for path in sorted(paths):
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
        result.append(sha.hexdigest())
    return sorted(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args()
    if shutil.which("curl") is None:
        print("bench/export.py needs curl on PATH", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cwsctl-bench-export-"))
    server: Sandbox | None = None
    try:
        home, data = work / "home", work / "data"
        data.mkdir(mode=0o700)
        env = clean_env(home)
        cws = cwsctl_argv()
        started = time.perf_counter()
        run_setup(
            [
                *cws,
                "sandbox",
                "openemr",
                "seed",
                "--patients",
                str(options.patients),
                "--data-dir",
                str(data),
            ],
            env,
            "seed",
        )
        seeded = time.perf_counter() - started
        server = Sandbox(
            env,
            data,
            free_port(),
            work / "sandbox.log",
            quiet=True,
            cws=cws,
            kind="openemr",
            extra=("--system-scopes",),
        )
        server.wait_ready()
        url = server.url
        run_setup([*cws, "profile", "init", "emr", "--kind", "openemr", "--url", url], env, "init")
        run_setup([*cws, "-p", "emr", "keygen", "--bits", "2048"], env, "keygen")
        register_and_enable(cws, env, "emr", data, "--export-scopes")
        fhir = f"{url}/apis/default/fhir"
        walls: list[float] = []
        rss: list[float] = []
        curls: list[float] = []
        same = True
        for rep in range(options.reps):
            out = work / f"cwsctl-{rep}"
            wall, peak, status, stdout, err = timed_child(
                [
                    *cws,
                    "-q",
                    "--json",
                    "-p",
                    "emr",
                    "export",
                    "--out",
                    str(out),
                    "--parallel",
                    str(options.parallel),
                ],
                env,
            )
            if status != 0:
                raise SetupError(f"cwsctl export: exit {status}: {err.strip()[-500:]}")
            summary = json.loads(stdout)
            if summary["resources"] != options.patients:
                raise SetupError(f"cwsctl exported {summary['resources']} resources")
            walls.append(wall)
            rss.append(peak)
            token = run_setup([*cws, "-q", "-p", "emr", "oauth", "token"], env, "token").strip()
            by_hand = work / f"curl-{rep}"
            curls.append(curl_by_hand(fhir, token, by_hand))
            same = same and digest(list(out.glob("*.ndjson"))) == digest(
                list(by_hand.glob("*.ndjson"))
            )
            print(
                f"rep {rep + 1}: cwsctl {wall:.2f} s (peak RSS {peak:.1f} MiB), "
                f"curl {curls[-1]:.2f} s",
                flush=True,
            )
            shutil.rmtree(out)
            shutil.rmtree(by_hand)
        size = summary["bytes"]
        print(f"machine: {machine()}")
        print(
            f"patients: {options.patients} (seeded in {seeded:.1f} s), export "
            f"{size / (1 << 20):.1f} MiB in {len(summary['files'])} file(s), reps {options.reps}"
        )
        print(f"cwsctl export: median {statistics.median(walls):.2f} s")
        print(f"curl by hand:  median {statistics.median(curls):.2f} s")
        print(f"ratio cwsctl/curl: {statistics.median(walls) / statistics.median(curls):.2f}")
        print(f"same files: {'yes' if same else 'NO'}")
        peak = max(rss)
        verdict = "PASS" if peak < RSS_LIMIT_MIB else "FAIL"
        print(f"cwsctl peak RSS: {peak:.1f} MiB (limit {RSS_LIMIT_MIB} MiB): {verdict}")
        return 0
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
        remove_work_dir(work, keep=options.keep)


if __name__ == "__main__":
    sys.exit(main())
