"""The job's state on disk: ``DIR/.cwsctl-export.json`` (:class:`ExportState`), its validation,
and what ``--status`` shows of it."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from cwsctl.core.errors import InputError
from cwsctl.core.files import atomic_write
from cwsctl.protocols.fhir.export_request import RESOURCE_TYPE, ExportRequest
from cwsctl.protocols.fhir.instant import now_instant

STATE_FILE = ".cwsctl-export.json"
MANIFEST_FILE = "manifest.json"
STATE_VERSION = 1
#: Most file entries (output, error, deleted) a manifest may list: each is a file in DIR and an
#: entry in the state file, rewritten after every download.
MAX_FILES = 10_000
#: States of a job in DIR: running ones are continued, finished ones reported or replaced (--new).
RUNNING_STATES = ("kicking-off", "running", "downloading")
ENDED_STATES = ("done", "cancelled", "failed", "expired")


class ExportState:
    """The job's state in ``DIR/.cwsctl-export.json``: read once, replaced atomically on change."""

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self.data = data
        self.lock = threading.Lock()

    @classmethod
    def load(cls, directory: Path) -> ExportState | None:
        """The state in ``directory`` (None when there is none; InputError when damaged)."""
        path = directory / STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InputError(
                f"{path} is not a cwsctl export state (damaged, or another version)",
                hint="export into another directory, or remove the file to start over",
            )
        problem = _state_problem(data)
        if problem is not None:
            raise InputError(
                f"{path} is damaged: {problem}",
                hint="export into another directory, or remove the file to start over",
            )
        return cls(directory, data)

    @property
    def state(self) -> str:
        """``kicking-off``, ``running``, ``downloading``, ``done``, ``cancelled``, ``failed``
        or ``expired``."""
        return str(self.data.get("state", ""))

    @property
    def files(self) -> list[dict[str, Any]]:
        """The planned files (empty until the manifest came)."""
        value = self.data.get("files")
        return value if isinstance(value, list) else []

    def save(self) -> None:
        """Write the state atomically (mode 0600)."""
        self.data["updated_at"] = now_instant()
        document = json.dumps(self.data, indent=1, sort_keys=True).encode("utf-8")
        atomic_write(self.path, document, what="export state file")

    def update(self, **values: Any) -> None:
        """Set ``values`` and save, under the state's lock (download threads share it)."""
        with self.lock:
            self.data.update(values)
            self.save()


#: A file name the exporter gives: ``[error-|deleted-]<Type>-<n>.ndjson`` (nothing else is ever
#: opened, written or removed in DIR on a state file's word).
_FILE_NAME = re.compile(r"(?:error-|deleted-)?[A-Z][A-Za-z0-9]{0,63}-[1-9][0-9]{0,5}\.ndjson")
_FILE_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "index": (int,),
    "type": (str,),
    "url": (str,),
    "done": (bool,),
}


def _state_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a state file's contents (None when it is usable)."""
    if not isinstance(data.get("state"), str):
        return "no state"
    for name in ("status_url", "kickoff_url", "kicked_off_at", "transaction_instant"):
        if data.get(name) is not None and not isinstance(data[name], str):
            return f"{name} is not text"
    try:
        ExportRequest.from_json(data.get("request"))
    except InputError as exc:
        return exc.message
    for name in ("last_done", "manifest"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            return f"{name} is not an object"
    files = data.get("files", [])
    if not isinstance(files, list) or len(files) > MAX_FILES:
        return f"files is not a list of at most {MAX_FILES}"
    seen: set[str] = set()
    for number, entry in enumerate(files):
        if not isinstance(entry, dict):
            return f"files[{number}] is not an object"
        path = entry.get("path")
        if not isinstance(path, str) or not _FILE_NAME.fullmatch(path) or path in seen:
            return f"files[{number}] names no file cwsctl writes"
        seen.add(path)
        for name, kinds in _FILE_FIELDS.items():
            value = entry.get(name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                return f"files[{number}].{name} is missing or of the wrong kind"
        if entry["kind"] not in ("output", "error", "deleted") or entry["index"] < 0:
            return f"files[{number}] is not an output, error or deleted entry"
        if not RESOURCE_TYPE.fullmatch(entry["type"]):
            return f"files[{number}] names no valid resource type"
        for name in ("count", "bytes", "lines"):
            value = entry.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return f"files[{number}].{name} is not a number"
        if entry["done"] and not (
            isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)
        ):
            return f"files[{number}] is done without its size and digest"
    return None


def status_document(state: ExportState) -> dict[str, Any]:
    """What ``--status`` shows of the export kept in a directory (no server asked)."""
    files = state.files
    done = [f for f in files if f.get("done")]
    return {
        "directory": str(state.directory),
        "state": state.state,
        "request": state.data.get("request"),
        "status_url": state.data.get("status_url"),
        "kicked_off_at": state.data.get("kicked_off_at"),
        "transaction_time": state.data.get("transaction_time"),
        "transaction_instant": state.data.get("transaction_instant"),
        "files": len(files),
        "files_done": len(done),
        "bytes_done": sum(int(f.get("bytes") or 0) for f in done),
        "finished_at": state.data.get("finished_at"),
        "last_done": state.data.get("last_done"),
    }
