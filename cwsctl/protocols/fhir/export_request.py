"""What to export: the kick-off route, types, since and filters (:class:`ExportRequest`), and the
parsing of ``--type`` and ``--since``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cwsctl.core.errors import InputError

SCOPE_FOR_LEVEL = {
    "system": "system/*.$export",
    "patient": "system/Patient.$export",
    "group": "system/Group.$export",
}
STATUS_SCOPE = "system/*.$bulkdata-status"
BINARY_SCOPE = "system/Binary.read"
#: A FHIR resource type name.
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
#: OpenEMR's DateSearchField: YYYY[-MM[-DD[Thh:mm[:ss][.f]]]][Z|±hh:mm].
_SINCE = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?)?)?(Z|[+-]\d{2}:\d{2})?")


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the level (``system``, ``patient`` or ``group``), types, since, filters.

    ``since`` is as the user gave it (an instant or ``last``); :meth:`query` gets the value sent.
    """

    level: str = "system"
    group: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    type_filter: tuple[str, ...] = ()

    @property
    def scope(self) -> str:
        """The scope OpenEMR checks for this kick-off route."""
        return SCOPE_FOR_LEVEL[self.level]

    @property
    def path(self) -> str:
        """The kick-off path under the FHIR base."""
        if self.level == "patient":
            return "Patient/$export"
        if self.level == "group":
            return f"Group/{quote(self.group or '', safe='')}/$export"
        return "$export"

    def query(self, since: str | None) -> list[tuple[str, str]]:
        """The kick-off's query parameters (``since`` is the value to send, if any)."""
        params: list[tuple[str, str]] = []
        if self.types:
            joined = ",".join(self.types)
            params += [("_type", joined), ("type", joined)]
        if since:
            params.append(("_since", since))
        params += [("_typeFilter", value) for value in self.type_filter]
        return params

    def to_json(self) -> dict[str, Any]:
        """The form kept in the state file."""
        return {
            "level": self.level,
            "group": self.group,
            "types": list(self.types),
            "since": self.since,
            "type_filter": list(self.type_filter),
        }

    @classmethod
    def from_json(cls, data: Any) -> ExportRequest:
        """The request kept in a state file (a damaged one raises InputError)."""
        if not isinstance(data, dict) or data.get("level") not in SCOPE_FOR_LEVEL:
            raise InputError("the export state names no valid request")
        for name in ("group", "since"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise InputError(f"the export state's request {name} is not text")
        for name in ("types", "type_filter"):
            value = data.get(name)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise InputError(f"the export state's request {name} is not a list of text")
        return cls(
            level=str(data["level"]),
            group=data.get("group"),
            types=tuple(str(t) for t in data.get("types") or ()),
            since=data.get("since"),
            type_filter=tuple(str(t) for t in data.get("type_filter") or ()),
        )

    def describe(self) -> str:
        """One line: ``/Patient/$export type=Patient since=last``."""
        parts = [f"/{self.path}"]
        if self.types:
            parts.append("type=" + ",".join(self.types))
        if self.since:
            parts.append(f"since={self.since}")
        parts += [f"typeFilter={f}" for f in self.type_filter]
        return " ".join(parts)


def parse_types(value: str | None) -> tuple[str, ...]:
    """``Patient,Observation`` → ``("Patient", "Observation")``; InputError for a bad name."""
    if not value:
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for name in names:
        if not RESOURCE_TYPE.fullmatch(name):
            raise InputError(
                f"--type: {name!r} is not a FHIR resource type",
                hint="give resource type names separated by commas, e.g. Patient,Observation",
            )
    return names


def check_since(value: str) -> str:
    """``--since TIME`` as OpenEMR and the specification read it (``last`` passes as it is)."""
    if value == "last" or _SINCE.fullmatch(value):
        return value
    hint = "an instant such as 2026-03-01T12:00:00Z (a date or YYYY-MM-DDThh:mm also work)"
    if " " in value:
        hint += "; use T between date and time (OpenEMR refuses a space)"
    raise InputError(f"--since: {value!r} is not a FHIR instant", hint=hint + ", or last")
