"""The options the `cwsctl sandbox` commands share, whatever the flavour, and where state lives.

``--data-dir`` and ``--key-bits`` (serve and the flavours' administration commands), the listening
address and the fault switches of ``serve``; :func:`resolve_data_dir` gives the directory itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.options import KEY_BITS, MAX_CLOCK_SKEW_S, MAX_LATENCY_MS, PORT_RANGE
from cwsctl.cli.params import Fraction, ListenHost, WholeNumber

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        metavar="DIR",
        envvar="CWSCTL_SANDBOX_DIR",
        help="Sandbox state: server key, client keys, patients "
        "[env: CWSCTL_SANDBOX_DIR; default: $CWSCTL_HOME/sandbox].",
        show_default=False,
        show_envvar=False,
    ),
]
KeyBitsOption = Annotated[
    int,
    typer.Option(
        "--key-bits",
        metavar="BITS",
        parser=KEY_BITS,
        help="Size of the server key, if one has to be made: 2048, 3072 or 4096.",
    ),
]
HostOption = Annotated[
    str,
    typer.Option(
        "--host",
        metavar="HOST",
        parser=ListenHost(),
        help="Address to listen on: a host name or IP address (keep it loopback).",
    ),
]
PortOption = Annotated[
    int,
    typer.Option(
        "--port",
        metavar="PORT",
        parser=WholeNumber(*PORT_RANGE),
        help="TCP port, 0 to 65535; 0 picks a free one.",
    ),
]
DropRateOption = Annotated[
    float | None,
    typer.Option(
        "--drop-rate",
        metavar="RATE",
        envvar="CWSCTL_SANDBOX_DROP_RATE",
        show_envvar=False,
        parser=Fraction(),
        help="Fraction of patient requests processed, then cut off mid-response "
        "[env: CWSCTL_SANDBOX_DROP_RATE].",
        show_default=False,
    ),
]
ErrorRateOption = Annotated[
    float | None,
    typer.Option(
        "--error-rate",
        metavar="RATE",
        envvar="CWSCTL_SANDBOX_ERROR_RATE",
        show_envvar=False,
        parser=Fraction(),
        help="Fraction of patient requests answered 500 without processing "
        "[env: CWSCTL_SANDBOX_ERROR_RATE].",
        show_default=False,
    ),
]
LatencyMsOption = Annotated[
    int | None,
    typer.Option(
        "--latency-ms",
        metavar="MS",
        envvar="CWSCTL_SANDBOX_LATENCY_MS",
        show_envvar=False,
        parser=WholeNumber(0, MAX_LATENCY_MS, "milliseconds"),
        help="Random extra delay up to N ms (0 to 600000) per patient request "
        "[env: CWSCTL_SANDBOX_LATENCY_MS].",
        show_default=False,
    ),
]
CorruptRateOption = Annotated[
    float | None,
    typer.Option(
        "--corrupt-rate",
        metavar="RATE",
        envvar="CWSCTL_SANDBOX_CORRUPT_RATE",
        show_envvar=False,
        parser=Fraction(),
        help="Fraction of patient responses with a corrupted signature "
        "[env: CWSCTL_SANDBOX_CORRUPT_RATE].",
        show_default=False,
    ),
]
UnsignedRateOption = Annotated[
    float | None,
    typer.Option(
        "--unsigned-rate",
        metavar="RATE",
        envvar="CWSCTL_SANDBOX_UNSIGNED_RATE",
        show_envvar=False,
        parser=Fraction(),
        help="Fraction of patient responses without a signature "
        "[env: CWSCTL_SANDBOX_UNSIGNED_RATE].",
        show_default=False,
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option(
        "--seed",
        metavar="N",
        help="Seed the fault dice [env: CWSCTL_SANDBOX_SEED].",
        show_default=False,
    ),
]
ClockSkewOption = Annotated[
    int | None,
    typer.Option(
        "--clock-skew-s",
        metavar="SECONDS",
        envvar="CWSCTL_SANDBOX_CLOCK_SKEW_S",
        show_envvar=False,
        parser=WholeNumber(-MAX_CLOCK_SKEW_S, MAX_CLOCK_SKEW_S, "seconds, a year either way"),
        help="Shift the Date header of every response by N seconds, at most a year either "
        "way [env: CWSCTL_SANDBOX_CLOCK_SKEW_S].",
        show_default=False,
    ),
]


def resolve_data_dir(option: Path | None) -> Path:
    """The data dir ``--data-dir`` names, else ``$CWSCTL_SANDBOX_DIR`` or ``$CWSCTL_HOME/sandbox``."""
    from cwsctl.sandbox.db import default_data_dir

    return option.expanduser() if option is not None else default_data_dir()
