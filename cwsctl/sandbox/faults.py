"""Fault injection: the sandbox misbehaves on purpose so clients can prove they cope.

Faults apply only to ``/ws/patients`` requests; ``GET /ws/`` stays reliable so health checks and
readiness probes keep working while patient traffic suffers. Each switch is a constructor value
or an environment variable (constructor values win):

================================  ======================================================
``CWSCTL_SANDBOX_DROP_RATE``      fraction of requests processed (a POST is committed) and then
                                  answered with a truncated response and a closed connection:
                                  the client cannot know the outcome
``CWSCTL_SANDBOX_ERROR_RATE``     fraction answered 500 without processing (still signed)
``CWSCTL_SANDBOX_LATENCY_MS``     each request waits a random 0 … N milliseconds first
``CWSCTL_SANDBOX_CORRUPT_RATE``   fraction whose response signature is altered (flipped bytes)
``CWSCTL_SANDBOX_UNSIGNED_RATE``  fraction whose response has no Authorization header
``CWSCTL_SANDBOX_SEED``           seed for the fault dice, for reproducible runs
``CWSCTL_SANDBOX_CLOCK_SKEW_S``   seconds added to every response's Date header, /ws/ included
                                  (a server with a wrong clock, for `cwsctl doctor`)
``CWSCTL_SANDBOX_MAX_IN_FLIGHT``  a request arriving while this many others are in progress is
                                  answered 429 with ``Retry-After: 1``, not processed (a server
                                  that limits concurrent requests; 0: no limit)
================================  ======================================================

Order per request: the in-flight cap (429, nothing processed), latency, then error (500, nothing
processed), else processing, then the response is unsigned, or else corrupted, and finally maybe
dropped.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from cwsctl.core.errors import InputError

ENV_PREFIX = "CWSCTL_SANDBOX_"
_RATE_FIELDS = ("drop_rate", "error_rate", "corrupt_rate", "unsigned_rate")


@dataclass(frozen=True)
class Faults:
    """Fault switches; rates are fractions between 0 and 1."""

    drop_rate: float = 0.0
    error_rate: float = 0.0
    latency_ms: int = 0
    corrupt_rate: float = 0.0
    unsigned_rate: float = 0.0
    seed: int | None = None
    clock_skew_s: int = 0  # shifts every response's Date header (for `cwsctl doctor`)
    max_in_flight: int = 0  # more concurrent patient requests than this are answered 429

    def __post_init__(self) -> None:
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise InputError(f"{name.replace('_', ' ')} must be between 0 and 1, not {value!r}")
        if not isinstance(self.latency_ms, int) or self.latency_ms < 0:
            raise InputError(
                f"latency must be a whole number of milliseconds ≥ 0, not {self.latency_ms!r}"
            )
        if not isinstance(self.max_in_flight, int) or self.max_in_flight < 0:
            raise InputError(
                f"max in flight must be a whole number ≥ 0, not {self.max_in_flight!r}"
            )

    @property
    def active(self) -> bool:
        """Whether any fault can happen."""
        switches = (*_RATE_FIELDS, "latency_ms", "clock_skew_s", "max_in_flight")
        return any(getattr(self, name) for name in switches)

    def describe(self) -> str:
        """A short human summary, e.g. ``drop 10%, latency ≤50 ms``."""
        parts = [
            f"{name.removesuffix('_rate')} {getattr(self, name):.0%}"
            for name in _RATE_FIELDS
            if getattr(self, name)
        ]
        if self.latency_ms:
            parts.append(f"latency ≤{self.latency_ms} ms")
        if self.clock_skew_s:
            parts.append(f"clock {self.clock_skew_s:+d} s")
        if self.max_in_flight:
            parts.append(f"429 above {self.max_in_flight} in flight")
        return ", ".join(parts) or "none"

    def to_json(self) -> dict[str, object]:
        """Every switch by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        **overrides: float | int | None,
    ) -> Faults:
        """Read ``CWSCTL_SANDBOX_*`` variables; keyword arguments that are not None win."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int | None] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or not raw.strip():
                continue
            try:
                values[f.name] = float(raw) if f.name in _RATE_FIELDS else int(raw)
            except ValueError:
                raise InputError(
                    f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a "
                    + ("number" if f.name in _RATE_FIELDS else "whole number")
                ) from None
        for name, value in overrides.items():
            if name not in {f.name for f in fields(cls)}:
                raise TypeError(f"unknown fault {name!r}")
            if value is not None:
                values[name] = value
        return replace(cls(), **values)  # type: ignore[arg-type]


class FaultDice:
    """Draws the per-request fault decisions from one seeded generator."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        # Not for cryptography: reproducible fault patterns are the point.
        self._random = random.Random(faults.seed)  # noqa: S311

    def hit(self, rate: float) -> bool:
        """True with probability ``rate`` (never draws for 0, always true for 1)."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        return self._random.random() < rate

    def latency_seconds(self) -> float:
        """A random delay up to the configured latency."""
        if self.faults.latency_ms <= 0:
            return 0.0
        return self._random.uniform(0, self.faults.latency_ms) / 1000.0
