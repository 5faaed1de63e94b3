"""Value types for options and arguments, checked while the command line is parsed.

Typer (≥ 0.26, with its own copy of Click) takes a ``parser=`` callable per parameter; each class
here is one. A value that breaks the rule raises ``typer.BadParameter``, which Click completes
with the parameter's name, so the user sees one line such as::

    cwsctl: error: Invalid value for '--timeout': must be a finite number of seconds
    greater than 0 and at most 86400, not 'nan'

and exit status 2. The same check runs whether the value comes from the command line, from the
option's environment variable, or from its default. Typer's own ``min=``/``max=`` are not used:
their message ("Input should be greater than or equal to 1") states only half of the rule, and a
float range lets ``nan`` through.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cwsctl.core.errors import InputError
from cwsctl.core.urls import (
    HOST_RULE,
    URL_RULE,
    has_control_character,
    is_full_url,
    is_valid_host,
    parse_http_url,
)

if TYPE_CHECKING:
    from pathlib import Path

    import typer


def _bad(message: str) -> typer.BadParameter:
    # typer is imported only for a rejection: the fast start-up path (cli/fast.py) runs these
    # parsers without typer, and hands any rejection to Typer, which reports it.
    import typer

    return typer.BadParameter(message)


class _Rule:
    """A parser that names its rule in every rejection.

    ``spec`` is how it was made, ``(class name, args, kwargs)``: the fast path's generated
    table (cli/fast_table.py) carries it, and :func:`from_spec` makes the same parser again.
    """

    rule: str = ""
    spec: tuple[str, tuple[Any, ...], dict[str, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Rule:
        self = super().__new__(cls)
        self.spec = (cls.__name__, args, kwargs)
        return self

    def fail(self, value: object) -> typer.BadParameter:
        shown = repr(value) if isinstance(value, str) else str(value)
        return _bad(f"{self.rule}, not {shown}")


class Number(_Rule):
    """A finite float within bounds: ``above`` is exclusive, ``at_least``/``at_most`` inclusive."""

    def __init__(
        self,
        what: str,
        *,
        above: float | None = None,
        at_least: float | None = None,
        at_most: float | None = None,
    ) -> None:
        self.above = above
        self.at_least = at_least
        self.at_most = at_most
        bounds = []
        if above is not None:
            bounds.append(f"greater than {_num(above)}")
        if at_least is not None:
            bounds.append(f"at least {_num(at_least)}")
        if at_most is not None:
            bounds.append(f"at most {_num(at_most)}")
        self.rule = f"must be a finite number of {what}" + (
            " " + " and ".join(bounds) if bounds else ""
        )

    def __call__(self, value: Any) -> float:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            raise self.fail(value) from None
        if (
            not math.isfinite(number)
            or (self.above is not None and number <= self.above)
            or (self.at_least is not None and number < self.at_least)
            or (self.at_most is not None and number > self.at_most)
        ):
            raise self.fail(value)
        return number


class Fraction(Number):
    """A finite number between 0 and 1, both included (a rate: 0.1 is 10%)."""

    def __init__(self) -> None:
        super().__init__("", at_least=0, at_most=1)
        self.rule = "must be a finite number between 0 and 1 (a fraction: 0.1 is 10%)"


class WholeNumber(_Rule):
    """An int from ``low`` to ``high`` (both inclusive)."""

    def __init__(self, low: int, high: int, what: str = "") -> None:
        self.low = low
        self.high = high
        unit = f" ({what})" if what else ""
        self.rule = f"must be a whole number from {low} to {high}{unit}"

    def __call__(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.fail(value)
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                raise self.fail(value)
            number = int(text)
        if not self.low <= number <= self.high:
            raise self.fail(value)
        return number


class OneOf(_Rule):
    """An int from a fixed set, e.g. the RSA key sizes cwsctl makes."""

    def __init__(self, choices: Sequence[int], what: str) -> None:
        self.choices = tuple(choices)
        self.rule = f"must be one of {', '.join(map(str, self.choices))} ({what})"

    def __call__(self, value: Any) -> int:
        text = str(value).strip()
        if isinstance(value, bool) or not re.fullmatch(r"\d+", text):
            raise self.fail(value)
        if int(text) not in self.choices:
            raise self.fail(value)
        return int(text)


class Choice(_Rule):
    """A word from a fixed set, e.g. the profile kinds."""

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.rule = f"must be one of {', '.join(self.choices)}"

    def __call__(self, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in self.choices:
            raise self.fail(value)
        return text


_SIZE = re.compile(r"(\d+)\s*(?:([kmg])(?:ib)?)?", re.IGNORECASE)
_MULTIPLIER = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class ByteSize(_Rule):
    """A size in bytes: ``1048576``, ``1024K``, ``64M``, ``1GiB`` (binary multiples, any case)."""

    rule = (
        "must be a size in bytes, 0 or more: a whole number, optionally followed by "
        "K, M or G (or KiB, MiB, GiB: multiples of 1024)"
    )

    def __call__(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        match = _SIZE.fullmatch(str(value).strip())
        if not match:
            raise self.fail(value)
        digits, unit = match.groups()
        return int(digits) * _MULTIPLIER[unit.lower() if unit else None]


class HttpUrl(_Rule):
    """A full http(s) URL, checked by :func:`cwsctl.core.urls.parse_http_url`."""

    rule = URL_RULE

    def __call__(self, value: Any) -> str:
        try:
            return parse_http_url(str(value))
        except InputError as exc:
            raise _bad(f"{self.rule}; {exc.message}") from None


class PathOrUrl(HttpUrl):
    """A path joined to the profile's URL, or (when it holds ``://``) a full URL checked as such."""

    def __call__(self, value: Any) -> str:
        text = str(value)
        if is_full_url(text):
            return super().__call__(text)
        if has_control_character(text):
            raise _bad(f"must not hold control characters, not {text!r}")
        return text


class UrlPath(_Rule):
    """A path on the profile's server, such as ``/ws/`` (a full URL does not belong here)."""

    rule = "must be a path such as /ws/, not a full URL, without control characters"

    def __call__(self, value: Any) -> str:
        text = str(value)
        if "://" in text or has_control_character(text):
            raise self.fail(value)
        return text


class ListenHost(_Rule):
    """An address to listen on: a host name or an IP address (IPv6 with or without brackets)."""

    rule = HOST_RULE

    def __call__(self, value: Any) -> str:
        text = str(value)
        if not is_valid_host(text):
            raise self.fail(value)
        return text[1:-1] if text.startswith("[") else text


class OutputFile(_Rule):
    """A file cwsctl will write: checked while parsing, before anything is sent or replaced.

    A directory, a missing directory, a directory this process cannot write in, a symlink, or
    another user's file is refused (exit 2) naming the path; see
    :func:`cwsctl.core.files.check_output_path`. The write checks again.
    """

    def __init__(self, what: str = "file") -> None:
        self.what = what

    def __call__(self, value: Any) -> Path:
        from pathlib import Path

        from cwsctl.core.files import check_output_path

        if isinstance(value, str) and value == "":
            raise _bad("must name a file, not ''")
        path = Path(value)
        try:
            check_output_path(path, what=self.what)
        except InputError as exc:
            raise _bad(exc.message) from None
        return path


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def from_spec(spec: tuple[str, tuple[Any, ...], dict[str, Any]]) -> Any:
    """The parser that ``spec`` (a :attr:`_Rule.spec`) describes."""
    name, args, kwargs = spec
    cls = globals()[name]
    if not (isinstance(cls, type) and issubclass(cls, _Rule)):
        raise ValueError(f"not a parser: {name!r}")
    return cls(*args, **kwargs)
