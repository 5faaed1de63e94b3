"""`cwsctl demo`: a target's walkthrough against an in-process sandbox, in seconds.

Everything happens in a temporary directory (its own CWSCTL_HOME and sandbox data) on 127.0.0.1
and is removed at the end, whatever happens. Each target's walkthrough is its registry ``demo``
(``targets/<t>/cli/demo.py``): it gets the step printer, the directory and the key size, and
returns what it showed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from cwsctl.cli.options import KEY_BITS, with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice
from cwsctl.core.profile import KINDS
from cwsctl.registry import DEFAULT_KIND, resolve, target


@with_globals
def demo(
    out: Output,
    bits: Annotated[
        int,
        typer.Option(
            "--bits",
            metavar="BITS",
            parser=KEY_BITS,
            help="Key size for the demo keys: 2048, 3072 or 4096 (keygen defaults to 4096).",
        ),
    ] = 2048,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            metavar="|".join(KINDS),
            parser=Choice(KINDS),
            help="Which API to demonstrate: cws (CorEMR), openemr or openehr.",
        ),
    ] = DEFAULT_KIND,
) -> None:
    """Run a walkthrough end to end against a throw-away local sandbox; leaves nothing behind.

    cws: generates a key, registers it, pins the sandbox's key, creates the walkthrough's example
    patient, verifies the signed response, shows a tampered body failing verification, and
    prints the openssl/curl commands that do the same by hand. openemr: key, discovery, JWK Set,
    client registration, the administrator's enable step, a user's sign-in (PKCE), the patient
    looked up and created once, the same row found by look-up, and read back. openehr (the
    sandbox as EHRbase 2.31): the template uploaded, an EHR for the patient, a FLAT composition
    written and updated twice (a quoted If-Match refused, then sent bare), a stale update refused
    naming the latest version, an AQL query and the version history.
    """
    from cwsctl.sandbox import require_server_deps

    require_server_deps()
    steps: list[dict[str, Any]] = []

    def step(title: str, command: str, **facts: Any) -> None:
        steps.append({"step": title, "command": command, **facts})
        out.info(f"\n== {len(steps)}. {title}", "bold")
        out.info(f"   $ {command}", "cyan")
        for key, value in facts.items():
            out.info(f"   {key}: {value}")

    runner = resolve(target(kind).demo)
    with tempfile.TemporaryDirectory(prefix="cwsctl-demo-") as tmp:
        done = runner(step, Path(tmp), bits)
    if out.settings.json:
        out.json({"ok": True, "kind": kind, "steps": steps})
    out.success(f"Demo complete: {done}.")
