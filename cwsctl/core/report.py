"""Per-row reports of a bulk load, as CSV or JSON (chosen by the file extension), streamed."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO

from cwsctl.core.bulk import RowResult
from cwsctl.core.errors import InputError

COLUMNS = ("row", "external_id", "facility", "outcome", "status", "id", "message")


class ReportWriter:
    """Writes one line per row to a temporary file, renamed into place on close."""

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".json"):
            raise InputError(f"report {path} must end in .csv or .json")
        self.path = path
        self.as_json = suffix == ".json"
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self._file: IO[str] = open(self._tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"cannot write report {path}: {exc.strerror}") from None
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

    def close(self) -> None:
        """Finish the file and move it into place."""
        if self._file.closed:
            return
        if self.as_json:
            self._file.write("\n]\n")
        self._file.close()
        os.replace(self._tmp, self.path)
