"""The bulk export's constants and resource tables, its test faults (:class:`ExportFaults`), the
streamed file answer (:class:`FileAnswer`) and OpenEMR's outcome and PHP/instant time helpers.

``EXP:n`` is line n of OpenEMR's ``FhirOperationExportRestController.php`` (see
:mod:`.export_routes`).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO, Any

from cwsctl.sandbox.envelope import Answer
from cwsctl.targets.openemr.sandbox.scopes import FHIR_READ_RESOURCES

OPENEMR_MODE = "openemr"
SPEC_MODE = "spec"
EXPORT_MODES = (OPENEMR_MODE, SPEC_MODE)
#: OpenEMR's MAX_DOCUMENT_ACCESS_TIME: documents expire an hour after the job started (EXP:49).
DEFAULT_EXPORT_TTL_S = 3600.0
EXPORTS_DIR = "openemr-exports"
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
ACCEPT = "application/fhir+json"
PREFER = "respond-async"
CHUNK = 64 * 1024
#: FHIR resources OpenEMR reads but has no export service for (FhirExportServiceLocator); every
#: other readable one is exportable. Outside the patient compartment (SYSTEM_ONLY) only the
#: system-level export operation supports a type.
NOT_EXPORTABLE = frozenset(
    {"Appointment", "Binary", "OperationDefinition", "Questionnaire", "ValueSet"}
)
EXPORTABLE = tuple(r for r in FHIR_READ_RESOURCES if r not in NOT_EXPORTABLE)
SYSTEM_ONLY = frozenset(
    {
        "Group",
        "Location",
        "Medication",
        "Organization",
        "Person",
        "Practitioner",
        "PractitionerRole",
    }
)
#: FHIR resource types a spec-mode ``_type`` may name (unknown ones are a 400).
KNOWN_TYPES = frozenset(FHIR_READ_RESOURCES) - {"OperationDefinition"}
#: Patient search parameters a spec-mode ``_typeFilter`` may use.
TYPE_FILTER_PARAMS = ("_id", "gender", "birthdate", "family", "given", "name")
NOT_FOUND_704 = "The job id you submitted was not found"
NOT_FOUND_703 = "The job id you submitted was invalid"
NO_EXPORT_OPERATION = "Resource does not support this export operation"
_DATE_SEARCH = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?$"
)
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@dataclass
class ExportFaults:
    """Export fault switches; set them on a running server (``server.export_faults``).

    - ``cut_file_after``: the next download of a file longer than this many bytes sends only
      that many bytes of its full ``Content-Length``, then closes the connection (one shot);
    - ``status_errors``: the next N status polls answer 500 (openemr: the kernel's body; spec:
      an OperationOutcome with code ``transient``), counting down;
    - ``wrong_type``: a resource type; while set, new jobs write that type's file with a first
      line of another ``resourceType`` (counted in the spec manifest's ``count``);
    - ``wrong_count``: spec mode, while set: every manifest ``count`` is one more than the lines.
    """

    cut_file_after: int | None = None
    status_errors: int = 0
    wrong_type: str | None = None
    wrong_count: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take_cut(self, size: int) -> int | None:
        """The byte count to cut a ``size``-byte download at (using the switch up), or None."""
        with self._lock:
            cut = self.cut_file_after
            if cut is None or cut >= size:
                return None
            self.cut_file_after = None
            return max(cut, 0)

    def take_status_error(self) -> bool:
        """Whether this status poll answers 500 (counting the switch down)."""
        with self._lock:
            if self.status_errors > 0:
                self.status_errors -= 1
                return True
            return False


class FileAnswer(Answer):
    """A Binary download: the envelope streams ``file`` (``size`` bytes, or ``cut`` of them)."""

    __slots__ = ("cut", "file", "size")

    def __init__(
        self, file: IO[bytes], size: int, headers: list[tuple[bytes, bytes]], cut: int | None
    ) -> None:
        super().__init__(200, b"", headers, content_type=NDJSON.encode("ascii"))
        self.file = file
        self.size = size
        self.cut = cut

    def chunks(self) -> Iterator[bytes]:
        """The bytes to send, in chunks (closing the file at the end)."""
        limit = self.size if self.cut is None else self.cut
        try:
            sent = 0
            while sent < limit:
                chunk = self.file.read(min(CHUNK, limit - sent))
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
        finally:
            self.file.close()


def emr_outcome(text: str) -> dict[str, Any]:
    """OpenEMR's ``createOperationOutcomeError``: code processing, the text in details."""
    return {
        "resourceType": "OperationOutcome",
        "id": str(uuid.uuid4()),
        "issue": [{"severity": "error", "code": "processing", "details": {"text": text}}],
    }


def php_datetime(moment: float) -> dict[str, Any]:
    """``json_encode`` of a PHP DateTime in UTC: ``{"date", "timezone_type": 3, "timezone"}``."""
    stamp = datetime.fromtimestamp(moment, timezone.utc)
    return {
        "date": stamp.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "timezone_type": 3,
        "timezone": "UTC",
    }


def openemr_since(text: str) -> str | None:
    """``DateSearchField``'s formats → UTC ``YYYY-MM-DDThh:mm:ssZ`` (no zone: the server's,
    UTC); None when the value does not parse."""
    match = _DATE_SEARCH.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=_zone(zone),
        )
    except ValueError:
        return None
    return _utc_text(moment)


def instant_utc(text: str) -> str | None:
    """A FHIR instant → UTC ``YYYY-MM-DDThh:mm:ssZ``, or None."""
    if _INSTANT.match(text) is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return _utc_text(moment)


def _zone(zone: str | None) -> timezone:
    if not zone or zone == "Z":
        return timezone.utc
    sign = -1 if zone[0] == "-" else 1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = [
    "DEFAULT_EXPORT_TTL_S",
    "EXPORT_MODES",
    "OPENEMR_MODE",
    "SPEC_MODE",
    "ExportFaults",
    "FileAnswer",
]
