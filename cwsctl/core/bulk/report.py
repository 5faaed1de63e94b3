"""Per-row reports of a bulk load, as CSV or JSON (chosen by the file extension), streamed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cwsctl.core.bulk.runner import RowResult
from cwsctl.core.errors import InputError
from cwsctl.core.files import AtomicFile

COLUMNS = ("row", "external_id", "facility", "outcome", "status", "id", "message")


#: Bytes gathered before they are written to the temporary file.
_CHUNK = 64 * 1024


class ReportWriter:
    """Writes one line per row to a temporary file, renamed into place on close.

    The report holds PHI (external ids, server ids, messages): it is written like every output
    file (:class:`~cwsctl.core.files.AtomicFile`): mode 0600 less the umask, a temporary file
    that follows no symlink, the target checked (not a directory, a link, or another user's)
    when the writer is made, before anything is sent.
    """

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".json"):
            raise InputError(f"report {path} must end in .csv or .json")
        self.path = path
        self.as_json = suffix == ".json"
        self._out = AtomicFile(path, what="report")
        self._file = io.StringIO(newline="")
        self._count = 0
        if self.as_json:
            self._file.write("[")
        else:
            self._csv = csv.writer(self._file)
            self._csv.writerow(COLUMNS)

    def write(self, result: RowResult) -> None:
        """Add one row's outcome."""
        values = (
            result.number,
            result.external_id,
            result.facility,
            result.outcome,
            result.status,
            result.patient_id,
            result.message,
        )
        if self.as_json:
            prefix = "\n" if self._count == 0 else ",\n"
            self._file.write(
                prefix + json.dumps(dict(zip(COLUMNS, values, strict=True)), ensure_ascii=False)
            )
        else:
            self._csv.writerow(["" if v is None else v for v in values])
        self._count += 1
        if self._file.tell() >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        self._out.write(self._file.getvalue().encode("utf-8"))
        self._file.seek(0)
        self._file.truncate()

    def close(self) -> None:
        """Finish the file and move it into place."""
        if self._out.closed:
            return
        if self.as_json:
            self._file.write("\n]\n")
        self._flush()
        self._out.commit()
