"""openEHR identifiers and the checks of what a user types: version uids, object and EHR ids,
timestamps, template ids, and the path segments they go into.

Version uids are :class:`VersionUid` everywhere: ``object_id::system_id::version``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote

from cwsctl.core.errors import InputError

#: A versioned object's id: a UUID on every server we know, but any HIER_OBJECT_ID root is valid.
_OBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
#: A creating system's id: usually a host name, e.g. ``local.ehrbase.org``.
_SYSTEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
#: A version tree id: a trunk version, or ``trunk.branch.version``; each an openEHR Integer, so
#: at most 18 digits (a server naming a longer one would otherwise break ``int()``: exit 1).
_VERSION = re.compile(r"[1-9][0-9]{0,17}(?:\.[1-9][0-9]{0,17}\.[1-9][0-9]{0,17})?")
#: An example version uid for hints.
VERSION_UID_EXAMPLE = "8849182c-82ad-4088-a07f-48ead4180515::local.ehrbase.org::1"


@dataclass(frozen=True, order=True)
class VersionUid:
    """A VERSION's unique id, ``object_id::system_id::version`` (an OBJECT_VERSION_ID)."""

    object_id: str
    system_id: str
    version: str

    @classmethod
    def parse(cls, text: str, what: str = "version uid") -> VersionUid:
        """Parse ``object_id::system_id::version``; InputError (exit 2) names what is wrong."""
        value = text.strip()
        parts = value.split("::")
        if len(parts) != 3:
            raise InputError(
                f"{what} {text!r} is not object_id::system_id::version",
                hint=f"e.g. {VERSION_UID_EXAMPLE}",
            )
        object_id, system_id, version = parts
        for part, rule, name in (
            (object_id, _OBJECT_ID, "object id"),
            (system_id, _SYSTEM_ID, "system id"),
            (version, _VERSION, "version"),
        ):
            if not rule.fullmatch(part):
                raise InputError(
                    f"{what} {text!r} has an invalid {name} {part!r} "
                    "(object_id::system_id::version)",
                    hint=f"e.g. {VERSION_UID_EXAMPLE}",
                )
        return cls(object_id, system_id, version)

    @classmethod
    def from_header(cls, value: str | None) -> VersionUid | None:
        """The version uid in an ``ETag`` (``"uid"`` or ``W/"uid"``) or a ``Location`` URL."""
        if not value:
            return None
        text = value.strip().removeprefix("W/").strip('"')
        text = unquote(text.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
        try:
            return cls.parse(text)
        except InputError:
            return None

    @property
    def trunk(self) -> int:
        """The trunk version number (``3`` in ``…::3`` and in ``…::3.1.1``)."""
        return int(self.version.split(".", 1)[0])

    def __str__(self) -> str:
        return f"{self.object_id}::{self.system_id}::{self.version}"


def object_id_of(text: str, what: str = "composition uid") -> tuple[str, VersionUid | None]:
    """A composition named by its versioned object uid, or by a version uid.

    Returns the object id, and the version uid when one was given.
    """
    value = text.strip()
    if "::" in value:
        version = VersionUid.parse(value, what)
        return version.object_id, version
    if not _OBJECT_ID.fullmatch(value):
        raise InputError(
            f"{what} {text!r} is not a versioned object uid (a UUID) or a version uid",
            hint=f"use the uid printed by 'cwsctl composition create', e.g. {VERSION_UID_EXAMPLE}",
        )
    return value, None


def check_ehr_id(text: str) -> str:
    """An EHR id as given, if it can name a path segment (a UUID on every known server)."""
    value = text.strip()
    if not _OBJECT_ID.fullmatch(value):
        raise InputError(
            f"EHR id {text!r} is not valid",
            hint="use the ehr_id printed by 'cwsctl ehr create' (a UUID)",
        )
    return value


def check_timestamp(text: str) -> str:
    """An ISO 8601 date-time as the server wants it: extended format, ``T``, and an offset.

    Accepts ``2024-05-01T10:00:00Z``, ``…+02:00`` and ``2024-05-01 10:00:00`` (a space for the
    ``T``); a time without an offset is the local time of this machine and is sent with its
    offset. EHRbase parses ``version_at_time`` as an offset date-time and turns a space into ``+``,
    so ``2024-05-01 10:00:00`` as typed would be refused (400). Else InputError (exit 2).
    """
    value = text.strip()
    candidate = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise InputError(
            f"{text!r} is not an ISO 8601 date-time",
            hint="use e.g. 2024-05-01T10:00:00Z, 2024-05-01T12:00:00.000+02:00 or "
            "'2024-05-01 10:00:00' (local time)",
        ) from None
    if "T" not in value.upper() and " " not in value:
        raise InputError(
            f"{text!r} is a date without a time", hint="add a time, e.g. 2024-05-01T00:00:00Z"
        )
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the machine's zone, as a person typing a time means it
    if value.endswith(("Z", "z")) and "T" in value:
        return value[:-1] + "Z"
    return moment.isoformat()


def path_segment(value: str) -> str:
    """``value`` quoted as one URL path segment (``:`` kept, as in version uids)."""
    return quote(value, safe=":")


#: Where ADL 1.4 operational templates live, under the openEHR REST base URL.
TEMPLATES_PATH = "/definition/template/adl1.4"


def check_template_id(text: str, what: str = "template id") -> str:
    """A template id as given, if it is usable: non-empty, no control characters."""
    value = text.strip()
    if not value or any(ord(c) < 32 or c == "\x7f" for c in value):
        raise InputError(f"{what} {text!r} must be non-empty text without control characters")
    return value


def template_path(template_id: str, *rest: str) -> str:
    """``/definition/template/adl1.4/{template_id}[/…]``, the id quoted as one path segment."""
    return "/".join([TEMPLATES_PATH, quote(check_template_id(template_id), safe=""), *rest])
