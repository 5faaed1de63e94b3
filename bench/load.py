"""Load benchmark for the sandbox: N concurrent signing, verifying clients for S seconds.

In a fresh temporary directory it makes a client key and the sandbox's key (2048 bits, or
``--key-bits 3072|4096``), registers the client key and starts the sandbox as its own process::

    python -m cwsctl sandbox serve --host 127.0.0.1 --port P --data-dir D --key-bits B -q

(no faults). Then ``--clients`` clients (default 16; each its own process, or a thread with
``--mode thread``) send signed ``POST /ws/patients/`` with unique external_ids for ``--seconds``
(default 60) through ``cwsctl.core.client.CwsClient``, which verifies every response's signature
against the pinned sandbox key (a response that does not verify counts as an error). Each
client is bounded in time and in number of requests (``--max-requests``), and talks only to
127.0.0.1.

While the load runs, the sandbox's resident memory (``VmRSS`` from ``/proc/PID/status``) is
sampled every second. Afterwards the sandbox is stopped (SIGTERM) and its database counted.

It prints total requests, errors (should be 0), 201s vs patients in the database (lost rows:
must be 0), throughput, latency p50/p90/p99, and RSS at idle, start, middle and end of the load
with its growth and a PASS/FAIL against ``--rss-goal-mib`` (20). Exit status: 0 when there were
no errors, no lost rows and the memory goal was met; 1 otherwise; 2 when the setup fails.

Run from the project's virtualenv: ``python bench/load.py [--clients 16] [--seconds 60]
[--key-bits 2048] [--mode process|thread]``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbox_process import (
    Sandbox,
    SetupError,
    clean_env,
    free_port,
    machine,
    remove_work_dir,
)

USERNAME = "load"
BODY = (
    '{{"external_id":"{eid}","facility":10000,"agency":2,"billing_agency":1,'
    '"fname":"First","lname":"Name","dob":"2000-04-12 10:00:00.000","sex":"M",'
    '"booking_no":"B{i}","booking_date":"2023-04-07 10:00:00.000"}}'
)


# -- one client -----------------------------------------------------------------------------
def client_loop(
    index: int,
    config: dict[str, Any],
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """One client: wait for ``go``, then POST until the time or request bound; report once."""
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    samples: list[str] = []
    try:
        from cwsctl.core import keys
        from cwsctl.protocols.cws_signature import Algorithm, TrustedKey
        from cwsctl.targets.cws.client import CwsClient
        from cwsctl.targets.cws.identity import SigningIdentity

        key_path = Path(config["key_path"])
        identity = SigningIdentity(
            keys.load_private_key(key_path), USERNAME, Algorithm.SHA256, key_path
        )
        trusted = [TrustedKey(config["server_username"], config["server_pem"])]
        client = CwsClient(identity, trusted, base_url=config["url"], timeout=config["timeout"])
    except Exception as exc:  # reported, never raised: the parent must get one result per client
        ready.put(index)
        results.put({"index": index, "setup_error": f"{type(exc).__name__}: {exc}"})
        return
    ready.put(index)
    go.wait(config["start_timeout"])
    deadline = time.monotonic() + config["seconds"]
    with client:
        for i in range(config["max_requests"]):
            if time.monotonic() >= deadline:
                break
            body = BODY.format(eid=f"L{config['tag']}-{index:03d}-{i:07d}", i=i).encode()
            started = time.perf_counter()
            try:
                response = client.request("POST", "/ws/patients/", body)
            except Exception as exc:  # SignatureError, NetworkError, ...: all are errors here
                counts[f"error {type(exc).__name__}"] += 1
                if len(samples) < 3:
                    samples.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            verified = response.verification is not None and response.verification.verified
            if not verified:
                counts["error unverified"] += 1
            elif response.status == 201:
                counts["201"] += 1
            else:
                counts[f"error HTTP {response.status}"] += 1
                if len(samples) < 3:
                    samples.append(f"{response.status}: {response.error_message()}"[:200])
    results.put(
        {"index": index, "counts": dict(counts), "latencies": latencies, "samples": samples}
    )


# -- memory ---------------------------------------------------------------------------------
def vm_rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            kib = vm_rss_kib(self.pid)
            if kib is not None:
                self.samples.append((time.monotonic() - self.t0, kib))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (60)")
    parser.add_argument(
        "--key-bits", type=int, default=2048, choices=(2048, 3072, 4096), help="server and client"
    )
    parser.add_argument(
        "--mode", choices=("process", "thread"), default="process", help="one client per …"
    )
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="bound per client (1000000)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (30)")
    parser.add_argument("--rss-goal-mib", type=float, default=20.0, help="max RSS growth (20)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.max_requests < 1:
        parser.error("--clients, --seconds and --max-requests must be positive")
    return args


def setup(work: Path, bits: int) -> tuple[Path, Path, str, str]:
    """Client key file, data dir (client key registered, server key made), server PEM + name."""
    from cwsctl.core import keys
    from cwsctl.targets.cws.sandbox.store import (
        SERVER_USERNAME,
        load_or_create_server_key,
        register_client_key,
    )

    data_dir = work / "sandbox"
    key_path = work / "client.pem"
    client_key = keys.generate_private_key(bits)
    key_path.write_bytes(keys.private_key_pem(client_key, None))
    key_path.chmod(0o600)
    register_client_key(data_dir, USERNAME, client_key.public_key())
    server_key = load_or_create_server_key(data_dir, bits)
    server_pem = keys.public_key_pem(server_key.public_key()).decode("ascii")
    return key_path, data_dir, server_pem, SERVER_USERNAME


def run_clients(args: argparse.Namespace, config: dict[str, Any], sandbox_pid: int) -> dict:
    """Start every client, release them together, sample RSS, collect their results."""
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers: list[Any] = []
    for index in range(args.clients):
        worker_args = (index, config, ready, go, results)
        if args.mode == "process":
            workers.append(ctx.Process(target=client_loop, args=worker_args, daemon=True))
        else:
            workers.append(threading.Thread(target=client_loop, args=worker_args, daemon=True))
    sampler = RssSampler(sandbox_pid)
    outcome: dict[str, Any] = {"results": [], "missing": 0}
    try:
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=config["start_timeout"])
        sampler.start()
        time.sleep(1.5)  # an idle sample or two before the load starts
        outcome["load_started"] = time.monotonic() - sampler.t0
        started = time.perf_counter()
        go.set()
        limit = time.monotonic() + args.seconds + config["timeout"] + 60
        for _ in workers:
            try:
                outcome["results"].append(results.get(timeout=max(1.0, limit - time.monotonic())))
            except Exception:  # queue.Empty: a client hung past every bound
                outcome["missing"] += 1
                break
        outcome["elapsed"] = time.perf_counter() - started
        outcome["load_ended"] = time.monotonic() - sampler.t0
    finally:
        go.set()
        time.sleep(1.0)  # one sample after the load
        if sampler.is_alive():
            sampler.stop()
        for worker in workers:
            worker.join(5)
            if isinstance(worker, multiprocessing.process.BaseProcess) and worker.is_alive():
                worker.kill()
                worker.join()
    outcome["rss"] = sampler.samples
    return outcome


def count_db(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        (n,) = conn.execute("SELECT count(*) FROM patients").fetchone()
    return int(n)


def rss_at(samples: list[tuple[float, int]], t: float) -> tuple[float, int]:
    """The sample nearest to time ``t``."""
    return min(samples, key=lambda s: abs(s[0] - t))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cwsctl-load-"))
    env = clean_env(work / "home")
    sandbox: Sandbox | None = None

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        print(
            f"load: {args.clients} clients ({args.mode}es), {args.seconds:g} s, "
            f"RSA-{args.key_bits}; {machine()}; work dir {work}"
        )
        try:
            key_path, data_dir, server_pem, server_username = setup(work, args.key_bits)
            port = free_port()
            sandbox = Sandbox(
                env, data_dir, port, work / "sandbox.log", key_bits=args.key_bits, quiet=True
            )
            sandbox.wait_ready()
        except SetupError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 2
        print(f"sandbox: {sandbox.url}, pid {sandbox.pid}, no faults, access log off (-q)")
        config = {
            "url": sandbox.url,
            "key_path": str(key_path),
            "server_pem": server_pem,
            "server_username": server_username,
            "seconds": args.seconds,
            "max_requests": args.max_requests,
            "timeout": args.timeout,
            "start_timeout": 120.0,
            "tag": os.getpid(),
        }
        outcome = run_clients(args, config, sandbox.pid)
        stop_rc = sandbox.stop()
        stored = count_db(data_dir / "sandbox.db")
        return report(args, outcome, stored, stop_rc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        if sandbox is not None:
            sandbox.stop()
        signal.signal(signal.SIGTERM, previous)
        remove_work_dir(work, keep=args.keep)


def report(args: argparse.Namespace, outcome: dict[str, Any], stored: int, stop_rc: Any) -> int:
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    per_client: list[int] = []
    samples: list[str] = []
    setup_errors = [r["setup_error"] for r in outcome["results"] if "setup_error" in r]
    for result in outcome["results"]:
        if "setup_error" in result:
            continue
        counts.update(result["counts"])
        latencies.extend(result["latencies"])
        per_client.append(sum(result["counts"].values()))
        samples.extend(result["samples"])
    total = sum(counts.values())
    errors = total - counts["201"]
    elapsed = outcome.get("elapsed") or args.seconds
    lost = counts["201"] - stored
    print("\nresults")
    print(
        f"  clients               {len(per_client)} of {args.clients} reported"
        + (f" ({len(setup_errors)} failed to start: {setup_errors[0]})" if setup_errors else "")
        + (f"; {outcome['missing']} never answered" if outcome["missing"] else "")
    )
    print(
        f"  requests              {total} in {elapsed:.1f} s "
        f"(per client min {min(per_client, default=0)}, max {max(per_client, default=0)})"
    )
    print(
        f"  errors                {errors}"
        + (
            "  (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "201") + ")"
            if errors
            else ""
        )
    )
    for text in samples[:3]:
        print(f"    e.g. {text}")
    print(f"  201 Created           {counts['201']} (every response signature verified)")
    print(f"  patients in DB        {stored} (sandbox stopped with exit {stop_rc})")
    print(f"  lost rows             {lost} (201s minus DB rows; DB rows without a 201: {-lost})")
    print(f"  throughput            {total / elapsed:.1f} req/s")
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        print(
            f"  latency               p50 {cuts[49]:.1f} ms, p90 {cuts[89]:.1f} ms, "
            f"p99 {cuts[98]:.1f} ms, max {max(latencies):.1f} ms"
        )
    rss = outcome["rss"]
    mem_ok = False
    if rss:
        began, ended = outcome["load_started"], outcome["load_ended"]
        idle = rss_at(rss, began - 0.5)
        start = rss_at(rss, began + 1.0)
        middle = rss_at(rss, (began + ended) / 2)
        end = rss_at(rss, ended)
        peak = max(kib for _, kib in rss)
        growth = (end[1] - start[1]) / 1024
        mem_ok = growth < args.rss_goal_mib
        print(f"  sandbox RSS samples   {len(rss)} (every 1 s, VmRSS)")
        print(
            f"  sandbox RSS (MiB)     idle {idle[1] / 1024:.1f}, start {start[1] / 1024:.1f} "
            f"(t+1 s), middle {middle[1] / 1024:.1f}, end {end[1] / 1024:.1f}, "
            f"peak {peak / 1024:.1f}"
        )
        print(
            f"  RSS growth            {growth:+.1f} MiB start→end "
            f"({(end[1] - middle[1]) / 1024:+.1f} MiB in the second half, "
            f"{(end[1] - idle[1]) / 1024:+.1f} MiB from idle): "
            f"{'PASS' if mem_ok else 'FAIL'} (goal < {args.rss_goal_mib:g} MiB)"
        )
    ok = errors == 0 and lost == 0 and mem_ok and not setup_errors and not outcome["missing"]
    print(f"\nverdict: {'PASS' if ok else 'FAIL'} (0 errors, 0 lost rows, flat memory)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
