"""The one sanitiser for text that came from a server or from stored data and is shown to people.

A terminal obeys control sequences: ESC (CSI, OSC: colours, titles, hyperlinks, cursor moves,
clipboard writes), BEL, C1 controls such as U+009B (a one-character CSI on many terminals),
carriage returns that overwrite a line, and bidi overrides (U+202A–U+202E, U+2066–U+2069) that
reorder what is read. Anything of that kind that a server or another user wrote must reach the
terminal as visible text, never as a command.

- :func:`printable` makes a one-line text: line breaks, tabs and other spacing become one space,
  every other control or invisible character becomes a visible escape, and it is bounded.
- :func:`printable_block` keeps the layout of a multi-line text (``\\n``, ``\\t``, CRLF line
  ends) and escapes everything else.

Escapes: C0 controls are written ``\\x1b`` (as Python and the shell show them); DEL, C1 and every
other non-printable character ``\\u009b`` (a character outside the BMP as its two UTF-16
halves), which is also a valid JSON escape: a JSON document stays valid JSON once escaped.
Printable text, accented letters and CJK included, is left alone.
"""

from __future__ import annotations

#: The default bound of a one-line text taken from a server.
DEFAULT_LIMIT = 200
_ELLIPSIS = "…"


def escape_char(ch: str) -> str:
    """The visible escape for one non-printable character (``\\x1b``, ``\\u009b``)."""
    code = ord(ch)
    if code < 0x20:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _is_space(ch: str) -> bool:
    # str.isspace covers \t \n \v \f \r, the FS/GS/RS/US separators, U+0085, U+00A0, U+2028,
    # U+2029 and the Zs spaces: in one line of text, each is only a space.
    return ch.isspace()


def printable(value: object, *, limit: int | None = DEFAULT_LIMIT) -> str:
    """``value`` as one line of plain text: safe to print on a terminal, at most ``limit`` chars.

    Whitespace of every kind (line breaks included) becomes a single space and the ends are
    trimmed; other control, format and unassigned characters (ESC, BEL, DEL, C1, bidi
    overrides, zero-width characters) become visible escapes such as ``\\x1b``. Longer than
    ``limit`` (None: unbounded), the text is cut and ends with "…".
    """
    text = str(value)
    if not text.isprintable():
        text = "".join(
            ch if ch.isprintable() else " " if _is_space(ch) else escape_char(ch) for ch in text
        )
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + _ELLIPSIS
    return text


def printable_block(text: str) -> str:
    """``text`` with its line structure kept (``\\n``, ``\\t``, CRLF) and every other control,
    format or invisible character escaped (``\\x1b``, ``\\u009b``), for a terminal."""
    plain = text.replace("\n", "").replace("\t", "")
    if plain.isprintable():
        return text
    out = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch.isprintable() or ch in "\n\t":
            out.append(ch)
        elif ch == "\r" and i < last and text[i + 1] == "\n":
            out.append(ch)  # a CRLF line end moves nothing a LF would not
        else:
            out.append(escape_char(ch))
    return "".join(out)


def printable_bytes(data: bytes) -> str:
    """Bytes meant for a terminal as :func:`printable_block` text; bytes that are not UTF-8
    (a raw 0x9b is a C1 CSI to some terminals) are shown as ``\\x9b``."""
    return printable_block(data.decode("utf-8", "backslashreplace"))
