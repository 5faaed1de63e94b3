"""The CWS patient record (``POST /ws/patients/``): its fields, validation and normalisation.

The fields follow the walkthrough's example body. Required:

========================  ==================================================================
``external_id``           string, 1–64 characters; unique per facility
``facility``              integer (e.g. ``10000``) or a non-empty string code of up to 64
``agency``                integer, 0 … 2**31-1
``billing_agency``        integer, 0 … 2**31-1
``fname``, ``lname``      string, 1–100 characters
``dob``                   CWS datetime ``YYYY-MM-DD HH:MM:SS[.fraction]``
``sex``                   ``"M"`` (male), ``"F"`` (female) or ``"U"`` (unknown / not stated);
                          upper case only: the server does not guess
``booking_no``            string, 1–64 characters
``booking_date``          CWS datetime
========================  ==================================================================

Optional (absent or ``null``): ``mname`` (≤100), ``suffix`` (≤16), ``housing_unit`` (≤64),
``release_date`` (CWS datetime). Any other field is refused.

Status codes follow CWS: **400** when the body is not a JSON object or a required field is missing
(or ``null``); **422** for a wrong type, a bad format, a string too long, a number out of range or
an unknown field. Strings must not be blank and must not contain control characters.

Validation is strict (what a server accepts): datetimes must already be in CWS form. The
normalised record writes every datetime as ``YYYY-MM-DD HH:MM:SS.fff`` (fractions beyond
milliseconds are truncated). :func:`normalize_cws_datetime` is the lenient helper for clients
that turns ``YYYY-MM-DD`` and ISO 8601 into that form.

Error messages name the field but never echo its value: they reach logs, and values are PHI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cwsctl.core.errors import InputError

#: The walkthrough's example body (seed 001), as CWS expects it.
WALKTHROUGH_EXAMPLE: dict[str, Any] = {
    "external_id": "FakeExternalID",
    "facility": 10000,
    "agency": 2,
    "billing_agency": 1,
    "fname": "First",
    "lname": "Name",
    "dob": "2000-04-12 10:00:00.000",
    "sex": "M",
    "booking_no": "EthanBooking14",
    "booking_date": "2023-04-07 10:00:00.00",
}

FieldKind = Literal["str", "int", "facility", "datetime", "sex"]

MAX_INT = 2**31 - 1
SEX_VALUES = ("M", "F", "U")


@dataclass(frozen=True)
class FieldSpec:
    """One field of the patient record."""

    name: str
    kind: FieldKind
    required: bool
    max_length: int = 64


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("external_id", "str", True),
    FieldSpec("facility", "facility", True),
    FieldSpec("agency", "int", True),
    FieldSpec("billing_agency", "int", True),
    FieldSpec("fname", "str", True, 100),
    FieldSpec("lname", "str", True, 100),
    FieldSpec("dob", "datetime", True),
    FieldSpec("sex", "sex", True),
    FieldSpec("booking_no", "str", True),
    FieldSpec("booking_date", "datetime", True),
    FieldSpec("mname", "str", False, 100),
    FieldSpec("suffix", "str", False, 16),
    FieldSpec("housing_unit", "str", False),
    FieldSpec("release_date", "datetime", False),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
REQUIRED_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.required)
_SPECS = {f.name: f for f in FIELDS}

# [0-9], not \d: \d also matches non-ASCII digits.
_CWS_DATETIME_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?$"
)
_LENIENT_DATETIME_RE = re.compile(
    r"""^([0-9]{4})-([0-9]{2})-([0-9]{2})
        (?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?
           (Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?$""",
    re.VERBOSE | re.IGNORECASE,
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class PatientValidationError(InputError):
    """A patient record or body is unacceptable; ``status`` is the HTTP status CWS answers.

    ``status`` is 400 (not JSON, not an object, missing required field) or 422 (wrong type,
    format, length, range, or unknown field); ``field`` names the offending field when there is one.
    """

    def __init__(
        self, message: str, *, status: int, field: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.field = field

    def to_json(self) -> dict[str, Any]:
        """The CWS error body: ``{"error": …}`` plus ``"field"`` when known."""
        document: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            document["field"] = self.field
        return document


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_short(key)!r}")
        result[key] = value
    return result


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object (UTF-8); 400 if it is not.

    NaN/Infinity and duplicate keys are refused: they are not portable JSON and would make the
    record ambiguous.
    """
    if not raw.strip():
        raise PatientValidationError("request body is empty; a JSON object is required", status=400)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PatientValidationError("request body is not valid UTF-8", status=400) from None
    try:
        value = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except json.JSONDecodeError as exc:
        raise PatientValidationError(
            f"request body is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            status=400,
        ) from None
    except ValueError as exc:
        raise PatientValidationError(f"request body is not valid JSON: {exc}", status=400) from None
    except RecursionError:
        raise PatientValidationError("request body is nested too deeply", status=400) from None
    if not isinstance(value, dict):
        raise PatientValidationError(
            f"request body must be a JSON object, not {_json_type(value)}", status=400
        )
    return value


def parse_patient_body(raw: bytes) -> dict[str, Any]:
    """Parse and validate a ``POST /ws/patients/`` body; return the normalised record.

    Raises PatientValidationError with status 400 for bad JSON or a non-object body, and
    whatever :func:`validate_patient` raises otherwise.
    """
    return validate_patient(parse_json_object(raw))


def validate_patient(obj: object) -> dict[str, Any]:
    """Check a decoded record strictly and return it normalised (fields in schema order).

    Missing required fields are reported first (400), then unknown fields (422), then each
    field's type and format (422) in schema order. Optional fields given as ``null`` are dropped.
    """
    if not isinstance(obj, Mapping):
        raise PatientValidationError(
            f"patient record must be a JSON object, not {_json_type(obj)}", status=400
        )
    for name in REQUIRED_FIELDS:
        if obj.get(name) is None:
            raise PatientValidationError(
                f"required field {name!r} is missing", status=400, field=name
            )
    unknown = sorted(str(k) for k in obj if k not in _SPECS)
    if unknown:
        raise PatientValidationError(
            f"unknown field {_short(unknown[0])!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
            status=422,
            field=_short(unknown[0]),
            hint=f"accepted fields: {', '.join(FIELD_NAMES)}",
        )
    record: dict[str, Any] = {}
    for spec in FIELDS:
        value = obj.get(spec.name)
        if value is None:
            continue
        record[spec.name] = _check_field(spec, value)
    return record


def patient_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """The identity of a patient in CWS: ``(external_id, str(facility))``.

    ``facility`` 10000 and ``"10000"`` are the same facility.
    """
    return (str(record["external_id"]), str(record["facility"]))


def normalize_cws_datetime(text: str, field: str | None = None) -> str:
    """Turn a date or date-time into CWS form ``YYYY-MM-DD HH:MM:SS.fff`` (for clients).

    Accepts ``YYYY-MM-DD`` (midnight), ISO 8601 such as ``2000-04-12T10:00`` or
    ``2000-04-12T10:00:00.5+02:00`` / ``…Z``, and CWS's own ``2000-04-12 10:00:00.00``. A zone
    designator is dropped and the wall-clock time kept as written, not converted: CWS datetimes
    carry no zone, and converting a date of birth to UTC could move it to another day. Fractions
    are truncated to milliseconds. Raises PatientValidationError (422) otherwise.
    """
    what = f"field {field!r}" if field else "value"
    if not isinstance(text, str):
        raise PatientValidationError(f"{what} must be a date string", status=422, field=field)
    match = _LENIENT_DATETIME_RE.match(text.strip())
    if match is None:
        raise PatientValidationError(
            f"{what} is not a date or date-time",
            status=422,
            field=field,
            hint="use YYYY-MM-DD, YYYY-MM-DD HH:MM:SS or ISO 8601 (2000-04-12T10:00:00)",
        )
    year, month, day, hour, minute, second, fraction, _zone = match.groups()
    return _format(what, field, year, month, day, hour, minute, second, fraction)


def _format(
    what: str,
    field: str | None,
    year: str,
    month: str,
    day: str,
    hour: str | None,
    minute: str | None,
    second: str | None,
    fraction: str | None,
) -> str:
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
        )
    except ValueError:
        raise PatientValidationError(
            f"{what} is not a real calendar date/time", status=422, field=field
        ) from None
    millis = (fraction or "").ljust(3, "0")[:3]
    return f"{moment:%Y-%m-%d %H:%M:%S}.{millis}"


def _check_field(spec: FieldSpec, value: object) -> object:
    if spec.kind == "str":
        return _check_string(spec, value)
    if spec.kind == "int":
        return _check_int(spec, value)
    if spec.kind == "facility":
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_int(spec, value)
        if isinstance(value, str):
            return _check_string(spec, value)
        raise _type_error(spec, value, "an integer or a facility code string")
    if spec.kind == "sex":
        if not isinstance(value, str):
            raise _type_error(spec, value, "a string")
        if value not in SEX_VALUES:
            raise PatientValidationError(
                f"field {spec.name!r} must be one of {', '.join(SEX_VALUES)}",
                status=422,
                field=spec.name,
                hint="M = male, F = female, U = unknown or not stated (upper case)",
            )
        return value
    return _check_datetime(spec, value)


def _check_string(spec: FieldSpec, value: object) -> str:
    if not isinstance(value, str):
        raise _type_error(spec, value, "a string")
    if not value.strip():
        raise PatientValidationError(
            f"field {spec.name!r} must not be blank", status=422, field=spec.name
        )
    if len(value) > spec.max_length:
        raise PatientValidationError(
            f"field {spec.name!r} is too long ({len(value)} characters; at most {spec.max_length})",
            status=422,
            field=spec.name,
        )
    if _CONTROL_RE.search(value):
        raise PatientValidationError(
            f"field {spec.name!r} contains a control character", status=422, field=spec.name
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        raise PatientValidationError(
            f"field {spec.name!r} is not valid Unicode text", status=422, field=spec.name
        ) from None
    return value


def _check_int(spec: FieldSpec, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(spec, value, "an integer")
    if not 0 <= value <= MAX_INT:
        raise PatientValidationError(
            f"field {spec.name!r} is out of range (0 … {MAX_INT})", status=422, field=spec.name
        )
    return value


def _check_datetime(spec: FieldSpec, value: object) -> str:
    if not isinstance(value, str):
        raise _type_error(spec, value, "a datetime string")
    match = _CWS_DATETIME_RE.match(value)
    if match is None:
        raise PatientValidationError(
            f"field {spec.name!r} is not a CWS datetime",
            status=422,
            field=spec.name,
            hint="use 'YYYY-MM-DD HH:MM:SS[.fff]', e.g. '2000-04-12 10:00:00.000'",
        )
    year, month, day, hour, minute, second, fraction = match.groups()
    return _format(
        f"field {spec.name!r}", spec.name, year, month, day, hour, minute, second, fraction
    )


def _type_error(spec: FieldSpec, value: object, expected: str) -> PatientValidationError:
    return PatientValidationError(
        f"field {spec.name!r} must be {expected}, not {_json_type(value)}",
        status=422,
        field=spec.name,
    )


def _short(name: str, limit: int = 40) -> str:
    """A client-chosen key, cut short: it lands in error bodies and logs."""
    return name if len(name) <= limit else name[:limit] + "…"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def prepare_patient(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Client side: turn loosely typed input (CSV cells, CLI options) into a valid record.

    Digit strings become integers for integer fields (and for ``facility``), blank cells of
    optional fields are dropped, dates in ``YYYY-MM-DD`` or ISO 8601 are normalised to CWS form;
    then the record is validated exactly as the server validates it.
    """
    record: dict[str, Any] = {}
    for name, value in fields.items():
        spec = _SPECS.get(name)
        if isinstance(value, str) and spec is not None:
            if not value.strip() and not spec.required:
                continue
            if (
                spec.kind in ("int", "facility")
                and value.strip().isascii()
                and value.strip().isdigit()
                # ten digits cover 2**31-1; longer stays a string and fails validation clearly
                # (int() of thousands of digits raises instead)
                and len(value.strip()) <= 10
            ):
                value = int(value.strip())
            elif spec.kind == "datetime" and value.strip():
                value = normalize_cws_datetime(value, name)
        record[name] = value
    return validate_patient(record)
