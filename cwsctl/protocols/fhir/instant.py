"""FHIR instants: written in UTC (:func:`format_instant`), read from a manifest's text
(:func:`normalise_instant`), and now."""

from __future__ import annotations

import re
from datetime import datetime, timezone

#: A FHIR instant: date, time to the second, any fraction, an offset (read on Python 3.10 too).
_INSTANT = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})")


def format_instant(moment: datetime) -> str:
    """A UTC instant as FHIR writes it: ``2026-03-01T12:00:00Z`` (fractions only when there)."""
    moment = moment.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def now_instant() -> str:
    """Now, to the second, as a FHIR instant."""
    return format_instant(datetime.now(timezone.utc).replace(microsecond=0))


def normalise_instant(value: str) -> str | None:
    """A FHIR instant (``2026-03-01T12:00:00.123+01:00``) as a UTC instant string, or None when
    it is not one."""
    try:
        match = _INSTANT.fullmatch(value.strip())
        if match is None:
            return None  # not an instant (one without an offset says no moment)
        date, fraction, offset = match.groups()
        micro = (fraction or "").ljust(6, "0")[:6]
        zone = "+00:00" if offset == "Z" else offset
        moment = datetime.fromisoformat(f"{date}.{micro}{zone}")
        return format_instant(moment)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved to UTC
        return None
