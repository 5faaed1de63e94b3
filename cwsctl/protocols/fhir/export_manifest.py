"""The export's manifest: the completed job's status answer taken into the state (the files to
fetch), and ``DIR/manifest.json`` written last with each file's local copy."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from cwsctl.core.errors import ServerFailureError
from cwsctl.core.files import atomic_write
from cwsctl.core.jsondoc import loads_json
from cwsctl.protocols.fhir.export_request import RESOURCE_TYPE
from cwsctl.protocols.fhir.export_result import Events
from cwsctl.protocols.fhir.export_state import MANIFEST_FILE, MAX_FILES, ExportState
from cwsctl.protocols.fhir.instant import now_instant
from cwsctl.protocols.fhir.outcome import outcome_text


def take_manifest(
    state: ExportState,
    content: bytes,
    transaction_instant: Callable[[Any], str | None],
    events: Events,
) -> None:
    """Take the completed job's manifest (the status answer) into ``state``: the files to fetch
    (``[error-|deleted-]<Type>-<n>.ndjson``), inline errors and the transaction time, read by
    ``transaction_instant``."""
    try:
        manifest = loads_json(content)
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        raise ServerFailureError("the completed export's status answer is not a JSON object")
    requires = manifest.get("requiresAccessToken")
    files: list[dict[str, Any]] = []
    inline: list[str] = []
    counters: dict[str, int] = {}
    for kind in ("output", "error", "deleted"):
        entries = manifest.get(kind) or []
        if not isinstance(entries, list):
            raise ServerFailureError(f"the manifest's {kind!r} is not a list")
        if len(files) + len(inline) + len(entries) > MAX_FILES:
            raise ServerFailureError(
                f"the manifest lists more than {MAX_FILES} files: not exported",
                hint="export fewer types or patients at a time (--type, --group, --since)",
            )
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and entry.get("resourceType") == "OperationOutcome":
                inline.append(outcome_text(json.dumps(entry).encode()) or "an error")
                continue  # OpenEMR puts some OperationOutcomes straight into "error"
            if not isinstance(entry, dict):
                raise ServerFailureError(f"the manifest's {kind}[{index}] is not an object")
            kind_type, url = entry.get("type"), entry.get("url")
            if not isinstance(kind_type, str) or not RESOURCE_TYPE.fullmatch(kind_type):
                raise ServerFailureError(
                    f"the manifest's {kind}[{index}] names no valid resource type"
                )
            if not isinstance(url, str) or not url:
                raise ServerFailureError(f"the manifest's {kind}[{index}] has no url")
            count = entry.get("count")
            if count is not None and (not isinstance(count, int) or count < 0):
                count = None
            prefix = {"output": "", "error": "error-", "deleted": "deleted-"}[kind]
            key = prefix + kind_type
            counters[key] = counters.get(key, 0) + 1
            files.append(
                {
                    "path": f"{key}-{counters[key]}.ndjson",
                    "kind": kind,
                    "index": index,
                    "type": kind_type,
                    "url": urljoin(str(state.data["status_url"]), url),
                    "count": count,
                    "done": False,
                }
            )
    raw_time = manifest.get("transactionTime")
    state.update(
        state="downloading",
        manifest=manifest,
        requires_access_token=requires is not False,
        transaction_time=raw_time,
        transaction_instant=transaction_instant(raw_time),
        inline_errors=inline,
        files=files,
    )
    if raw_time is not None and state.data["transaction_instant"] is None:
        events.note(
            "the manifest's transactionTime cannot be read: --since last will not work "
            "from this export"
        )


def finish(state: ExportState) -> None:
    """Write ``DIR/manifest.json`` (the server's manifest with each file's local path, size,
    lines and SHA-256) and mark the job done."""
    manifest = state.data.get("manifest")
    document = dict(manifest) if isinstance(manifest, dict) else {}
    for kind in ("output", "error", "deleted"):
        entries = document.get(kind)
        if not isinstance(entries, list):
            continue
        entries = [dict(e) if isinstance(e, dict) else e for e in entries]
        for entry in state.files:
            index = entry["index"]
            if entry["kind"] == kind and index < len(entries) and isinstance(entries[index], dict):
                entries[index].update(
                    path=entry["path"],
                    bytes=entry["bytes"],
                    lines=entry["lines"],
                    sha256=entry["sha256"],
                )
        document[kind] = entries
    document["cwsctl"] = {
        "transactionInstant": state.data.get("transaction_instant"),
        "statusUrl": state.data.get("status_url"),
        "kickoffUrl": state.data.get("kickoff_url"),
        "finishedAt": now_instant(),
    }
    atomic_write(
        state.directory / MANIFEST_FILE,
        json.dumps(document, indent=1).encode("utf-8") + b"\n",
        what="export manifest",
    )
    finished = now_instant()
    state.update(
        state="done",
        finished_at=finished,
        last_done={
            "transaction_time": state.data.get("transaction_time"),
            "transaction_instant": state.data.get("transaction_instant"),
            "finished_at": finished,
        },
    )
