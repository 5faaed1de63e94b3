"""Per-call cost of cwsctl as scripts use it (issue 15, deliverables 1-2), in one run.

Against local sandboxes started as their own processes (``cwsctl sandbox serve``, and the
``--kind openemr`` / ``--kind openehr`` flavours for context), with an RSA-4096 client key:

(a) a bash loop of ``--calls`` ``cwsctl -q request POST /ws/patients/ FILE`` (a fresh body per call,
    external_id varies; real send and response verification) against the same loop written with
    the walkthrough's pipeline (``openssl dgst -sha256 -sign KEY FILE | openssl enc -A -base64``,
    then ``curl`` with ``Authorization: CWS-SHA256 Access=USER, Signature=…``). Goal <= 4x.
(b) cold ``cwsctl request POST /ws/patients/ FILE --dry-run`` against HTTPie's ``http --offline``
    with an equivalent POST (HTTPie installed with pip into its own venv under the work dir, or
    ``--httpie-venv DIR`` to reuse one; skipped with a message if it cannot be installed).
    Goal <= 0.35x.
(c) cold ``cwsctl --help``, ``cwsctl verify FILE``, ``cwsctl sign FILE`` and ``cwsctl keys show``
    against the Python floor ``python -c "from cryptography.hazmat.primitives.asymmetric import
    rsa"``. Goal <= 2.5x each.
(d) the request loop on an openemr profile (token cached by the first call, before timing) and an
    openehr profile (``--auth none``), as context.

Bytecode is cached under the work dir (``PYTHONPYCACHEPREFIX``; ``PYTHONDONTWRITEBYTECODE`` is
dropped), as an installed cwsctl runs from compiled modules; ``--no-bytecode`` keeps the
environment's setting. Commands are timed round-robin (the machine may be shared): medians of
``--reps`` loops for (a) and (d), of ``--runs`` fresh processes for (b) and (c). Exit 0 whatever
the verdicts; 2 if the setup fails. Run: ``python bench/percall.py [--calls 20] [--reps 3] [--runs 15]``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from datetime import datetime, timezone
from pathlib import Path

from openemr import register_and_sign_in
from sandbox_process import Sandbox, SetupError, clean_env, free_port, machine, remove_work_dir

USER = "bench"
FLOOR = [sys.executable, "-c", "from cryptography.hazmat.primitives.asymmetric import rsa"]
GOALS = {"loop": 4.0, "dry-run": 0.35, "cold": 2.5}
BODY = (
    '{{"external_id": "{id}", "facility": 10000, "agency": 2, "billing_agency": 1, '
    '"fname": "Ann", "lname": "Lee", "dob": "2000-04-12 10:00:00.000", "sex": "M", '
    '"booking_no": "{id}", "booking_date": "2023-04-07 10:00:00.00"}}'
)


def cwsctl() -> list[str]:
    """The console script next to this interpreter (what scripts run), else python -m cwsctl."""
    script = Path(sys.executable).with_name("cwsctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cwsctl"]


def setup(cmd: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SetupError(f"{what}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
    return done.stdout


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SetupError(
            f"{shlex.join(argv)[:200]} exited {done.returncode}: {done.stderr[-400:]!r}"
        )
    return elapsed


def loop_script(work: Path, name: str, line: str, calls: int) -> list[str]:
    """bash: for each call write a fresh body (external_id varies), then run ``line``."""
    script = work / f"{name}.sh"
    body = BODY.format(id="${RUN}-${i}").replace('"', '\\"')
    script.write_text(
        "set -e\nRUN=$1\n"
        f"for i in $(seq 1 {calls}); do\n"
        f'  printf "%s" "{body}" > "$BODY"\n  {line}\ndone\n'
    )
    return ["bash", str(script)]


def httpie(work: Path, given: Path | None) -> Path | None:
    """The ``http`` executable of a venv holding HTTPie (created with pip when needed)."""
    where = given or work / "httpie-venv"
    http = where / "bin" / "http"
    if not http.exists():
        print(f"installing httpie into {where} ...", flush=True)
        try:
            venv.create(where, with_pip=True)
            subprocess.run(
                [str(where / "bin" / "python"), "-m", "pip", "install", "-q", "httpie"],
                check=True,
                timeout=600,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"(b) SKIPPED: cannot install httpie: {exc}")
            return None
    return http


def verdict(ratio: float, goal: float) -> str:
    return f"{ratio:.2f}x (goal <= {goal}x): {'PASS' if ratio <= goal else 'FAIL'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3, help="loops of each kind, alternated")
    parser.add_argument("--runs", type=int, default=15, help="cold runs per command")
    parser.add_argument("--httpie-venv", type=Path, help="reuse (or create) HTTPie's venv here")
    parser.add_argument("--no-context", action="store_true", help="skip (d)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="keep the environment's PYTHONDONTWRITEBYTECODE (if set, every call compiles "
        "cwsctl's modules from source) instead of caching bytecode under the work dir",
    )
    args = parser.parse_args()
    for tool in ("openssl", "curl", "bash"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not on PATH", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="cwsctl-percall-"))
    sandboxes: list[Sandbox] = []
    try:
        return run(args, work, sandboxes)
    except SetupError as exc:
        print(f"error: setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        for box in sandboxes:
            box.stop()
        remove_work_dir(work, keep=args.keep)


def run(args: argparse.Namespace, work: Path, sandboxes: list[Sandbox]) -> int:
    cws = cwsctl()
    env = clean_env(work / "home")
    if not args.no_bytecode:
        # An installed cwsctl runs from bytecode (pip compiles it; Python caches it on first
        # use), as HTTPie and the floor's cryptography do. With PYTHONDONTWRITEBYTECODE set (as on
        # some CI machines) cwsctl's own modules would be compiled from source at every call
        # (~8-15 ms); cache bytecode under the work dir instead, leaving the source tree clean.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{now}; {machine()}; {shlex.join(cws)}")
    print(
        "bytecode: as the environment says (PYTHONDONTWRITEBYTECODE kept)"
        if args.no_bytecode
        else "bytecode: cached under the work dir (PYTHONPYCACHEPREFIX), as an installed cwsctl runs"
    )

    def serve(kind: str | None) -> Sandbox:
        box = Sandbox(
            env,
            work / f"data-{kind or 'cws'}",
            free_port(),
            work / f"{kind}.log",
            key_bits=4096,
            quiet=True,
            cws=cws,
            kind=kind,
        )
        sandboxes.append(box)
        box.wait_ready()
        return box

    main_box = serve(None)
    data = ["--data-dir", str(work / "data-cws")]
    setup([*cws, "profile", "init", "cws", "--url", main_box.url, "--username", USER], env, "init")
    public = work / "client.pub"
    setup([*cws, "keygen", "--bits", "4096", "--public-out", str(public)], env, "keygen")
    setup([*cws, "sandbox", "add-key", USER, str(public), *data], env, "add-key")
    server_pem = work / "coremr.pem"
    server_pem.write_text(
        setup([*cws, "sandbox", "server-key", *data, "--key-bits", "4096"], env, "server-key")
    )
    setup([*cws, "profile", "trust", str(server_pem)], env, "trust")
    key = setup([*cws, "--json", "keys", "show"], env, "keys show")
    import json

    key_path = json.loads(key)["key_path"]

    body = work / "body.json"
    loop_env = {**env, "BODY": str(body)}
    url = f"{main_box.url}/ws/patients/"
    cw_line = f'{shlex.join(cws)} -q request POST /ws/patients/ "$BODY" > /dev/null'
    pipe_line = (
        f'SIG=$(openssl dgst -sha256 -sign {shlex.quote(key_path)} "$BODY" | openssl enc -A -base64)'
        f"\n  curl -sS -f -o /dev/null -X POST -H 'Content-Type: application/json'"
        f' -H "Authorization: CWS-SHA256 Access={USER}, Signature=$SIG"'
        f' --data-binary @"$BODY" {url}'
    )
    loops = {
        "cwsctl request loop": loop_script(work, "cwsctl", cw_line, args.calls),
        "openssl+curl loop": loop_script(work, "pipeline", pipe_line, args.calls),
    }
    context: dict[str, list[str]] = {}
    if not args.no_context:
        emr = serve("openemr")
        setup([*cws, "profile", "init", "emr", "--kind", "openemr", "--url", emr.url], env, "emr")
        setup([*cws, "-p", "emr", "keygen", "--bits", "4096"], env, "emr keygen")
        register_and_sign_in(cws, env, "emr", emr)  # register, enable, sign in as a user
        get = "/apis/default/fhir/Patient?_id=none"
        setup([*cws, "-q", "-p", "emr", "request", "GET", get], env, "emr token")  # token cached
        ehr = serve("openehr")
        base = f"{ehr.url}/ehrbase/rest/openehr/v1"
        setup(
            [*cws, "profile", "init", "cdr", "--kind", "openehr", "--url", base, "--auth", "none"],
            env,
            "cdr",
        )
        context = {
            "openemr request loop (GET, cached token)": loop_script(
                work,
                "emr",
                f"{shlex.join(cws)} -q -p emr request GET {shlex.quote(get)} > /dev/null",
                args.calls,
            ),
            "openehr request loop (POST /ehr)": loop_script(
                work,
                "ehr",
                f"{shlex.join(cws)} -q -p cdr request POST /ehr > /dev/null",
                args.calls,
            ),
        }

    body = work / "cold.json"  # the loops rewrite body.json; the cold commands keep this one
    body.write_text(BODY.format(id="dry"))
    dry = [*cws, "request", "POST", "/ws/patients/", str(body), "--dry-run"]
    http = httpie(work, args.httpie_venv)
    offline = (
        [
            str(http),
            "--offline",
            "--ignore-stdin",
            "POST",
            url,
            f"Authorization:CWS-SHA256 Access={USER}, Signature=AAAA",
            f"@{body}",
        ]
        if http
        else None
    )
    sig_file = work / "cold.json.sig"
    sig_file.write_text(setup([*cws, "sign", str(body)], env, "sign"))
    cold = {
        "python floor": FLOOR,
        "cwsctl --help": [*cws, "--help"],
        "cwsctl verify": [*cws, "verify", str(body), "--key", str(public)],
        "cwsctl sign": [*cws, "sign", str(body)],
        "cwsctl keys show": [*cws, "keys", "show"],
        "cwsctl request --dry-run": dry,
    }
    if offline:
        cold["http --offline"] = offline

    times: dict[str, list[float]] = {name: [] for name in [*loops, *context, *cold]}
    rep = 0
    for _ in range(args.reps):
        for name, argv in {**loops, **context}.items():
            rep += 1
            times[name].append(timed([*argv, f"r{rep}"], loop_env, work) / args.calls)
    for argv in cold.values():  # warm-up
        timed(argv, env, work)
    for _ in range(args.runs):
        for name, argv in cold.items():
            times[name].append(timed(argv, env, work))
    med = {name: statistics.median(values) * 1000 for name, values in times.items()}

    print(
        f"\nper call (ms, median of {args.reps} loops of {args.calls}) / cold start (median of {args.runs})"
    )
    for name in times:
        print(f"  {name:<42} {med[name]:8.1f} ms")
    print()
    loop = med["cwsctl request loop"] / med["openssl+curl loop"]
    print(f"(a) request loop vs openssl+curl loop: {verdict(loop, GOALS['loop'])}")
    if offline:
        ratio = med["cwsctl request --dry-run"] / med["http --offline"]
        print(f"(b) request --dry-run vs http --offline: {verdict(ratio, GOALS['dry-run'])}")
    else:
        print("(b) request --dry-run vs http --offline: SKIPPED (no httpie)")
    for name in ("cwsctl --help", "cwsctl verify", "cwsctl sign", "cwsctl keys show"):
        print(
            f"(c) {name} vs python floor: {verdict(med[name] / med['python floor'], GOALS['cold'])}"
        )
    for name in context:
        ratio = med[name] / med["openssl+curl loop"]
        print(f"(d) {name}: {med[name]:.1f} ms/call, {ratio:.2f}x the CWS pipeline loop (context)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
