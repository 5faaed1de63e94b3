"""Streaming readers for bulk patient files: CSV (header row), JSON array, NDJSON.

Each reader yields one ``InputRow`` per record without loading the file, so memory stays flat in
the number of rows. File-level problems (unreadable file, missing columns, a JSON document that is
not an array) raise InputError; row-level problems are carried on the row, so one bad row does not
stop the others.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from cwsctl.core.bulk.rows import FIELD_NAMES, REQUIRED_FIELDS
from cwsctl.core.errors import InputError

FORMATS = ("csv", "json", "ndjson")
_CHUNK = 1 << 16
_WS = re.compile(r"[ \t\n\r]*")


class InputRow(NamedTuple):
    """One record of the input: its 1-based number, its fields, or why it could not be read."""

    number: int
    fields: dict[str, Any] | None
    error: str | None = None


def detect_format(path: str, explicit: str | None) -> str:
    """The format named by ``--format``, else by the file extension."""
    if explicit:
        if explicit not in FORMATS:
            raise InputError(f"unknown format {explicit!r}; choose one of {', '.join(FORMATS)}")
        return explicit
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "ndjson"
    if suffix in FORMATS:
        return suffix
    raise InputError(
        f"cannot tell the format of {path!r} from its extension",
        hint="name it .csv, .json or .ndjson, or pass --format csv|json|ndjson",
    )


def read_rows(stream: IO[bytes], fmt: str) -> Iterator[InputRow]:
    """Yield the rows of a binary stream in the given format."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    try:
        if fmt == "csv":
            yield from _csv_rows(text)
        elif fmt == "ndjson":
            yield from _ndjson_rows(text)
        else:
            yield from _json_array_rows(text)
    except UnicodeDecodeError as exc:
        raise InputError(f"input is not valid UTF-8 (byte offset {exc.start})") from None


def _csv_rows(text: IO[str]) -> Iterator[InputRow]:
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("the CSV file is empty (a header row is required)") from None
    except csv.Error as exc:
        raise InputError(f"CSV header is malformed: {exc}") from None
    columns = [name.strip() for name in header]
    missing = [name for name in REQUIRED_FIELDS if name not in columns]
    if missing:
        raise InputError(
            f"CSV header lacks required column(s): {', '.join(missing)}",
            hint=f"the header must name: {', '.join(REQUIRED_FIELDS)}",
        )
    unknown = [name for name in columns if name not in FIELD_NAMES]
    if unknown:
        raise InputError(f"CSV header has unknown column(s): {', '.join(unknown[:5])}")
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise InputError(f"CSV header repeats column(s): {', '.join(duplicated)}")
    number = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number += 1
            yield InputRow(number, None, f"malformed CSV at line {reader.line_num}: {exc}")
            continue
        if not cells or all(not cell.strip() for cell in cells):
            continue  # blank line
        number += 1
        if len(cells) != len(columns):
            yield InputRow(
                number,
                None,
                f"line {reader.line_num} has {len(cells)} fields; the header has {len(columns)}",
            )
            continue
        yield InputRow(number, dict(zip(columns, cells, strict=True)))


def _ndjson_rows(text: IO[str]) -> Iterator[InputRow]:
    number = 0
    for line_no, line in enumerate(text, start=1):
        if not line.strip():
            continue
        number += 1
        yield _decoded(number, line, f"line {line_no}")


def _decoded(number: int, text: str, where: str) -> InputRow:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputRow(number, None, f"{where} is not valid JSON ({exc.msg})")
    except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit number, absurd nesting
        return InputRow(number, None, f"{where} is not acceptable JSON ({_reason(exc)})")
    if not isinstance(value, dict):
        return InputRow(number, None, f"{where} is not a JSON object")
    return InputRow(number, value)


class _Buffer:
    """A sliding window over a text stream, read in chunks; ``pos`` is the next unread char."""

    def __init__(self, text: IO[str]) -> None:
        self.text = text
        self.data = ""
        self.pos = 0

    def more(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at end of input."""
        chunk = self.text.read(_CHUNK)
        if not chunk:
            return False
        self.data = self.data[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of input), without consuming it."""
        while True:
            self.pos = _WS.match(self.data, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.data):
                return self.data[self.pos]
            if not self.more():
                return ""


def _json_array_rows(text: IO[str]) -> Iterator[InputRow]:
    """Decode one array element at a time with ``raw_decode`` over a sliding buffer."""
    decoder = json.JSONDecoder()
    buf = _Buffer(text)
    if buf.peek() != "[":
        raise InputError("a .json input must be a JSON array of patient objects")
    buf.pos += 1
    number = 0
    while True:
        char = buf.peek()
        if char == "]":
            buf.pos += 1
            if buf.peek():
                raise InputError("unexpected data after the JSON array")
            return
        if not char:
            raise InputError("the JSON array is not closed (file truncated?)")
        if number:
            if char != ",":
                raise InputError(f"expected ',' or ']' after element {number} of the JSON array")
            buf.pos += 1
            buf.peek()
        while True:
            try:
                value, end = decoder.raw_decode(buf.data, buf.pos)
            except json.JSONDecodeError as exc:
                if not buf.more():
                    raise InputError(
                        f"element {number + 1} of the JSON array is not valid JSON ({exc.msg})"
                    ) from None
                continue
            except (ValueError, RecursionError) as exc:
                raise InputError(
                    f"element {number + 1} of the JSON array is not acceptable JSON ({_reason(exc)})"
                ) from None
            # A number that ends where the buffer ends may go on in the next chunk.
            if isinstance(value, int | float) and end == len(buf.data) and buf.more():
                continue
            break
        buf.pos = end
        number += 1
        yield (
            InputRow(number, value)
            if isinstance(value, dict)
            else InputRow(number, None, f"element {number} is not a JSON object")
        )


def _reason(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
