"""Each fuzz target under hypothesis: arbitrary bytes, and near-valid inputs (valid ones mutated).

Example counts are modest so the suite stays fast; ``bench/fuzz.py`` is the long run. A finding
already pinned in ``test_regressions.py`` is tolerated here (see ``known.py``); any other escape
fails the test with hypothesis's minimal example. ``CWSCTL_FUZZ_STRICT=1`` tolerates nothing.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwsctl.core.bulk.readers import FORMATS
from cwsctl.core.bulk.rows import FIELD_NAMES
from tests.fuzz import seeds, targets
from tests.fuzz.known import known

STRICT = os.environ.get("CWSCTL_FUZZ_STRICT") == "1"
FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def run(check: Callable[..., None], *args: Any) -> None:
    """Call a target; let a finding escape unless test_regressions.py already pins it."""
    try:
        check(*args)
    except Exception as exc:
        if STRICT or known(exc) is None:
            raise


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` after a few byte-level edits: flips, overwrites, inserts, deletions, truncation."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "repeat")))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 16))] * draw(st.integers(1, 4))
    return bytes(data)


def near(seed_list: list[bytes] | tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(list(seed_list)).flatmap(mutated)


# -- every target accepts its own seeds (no tolerance: seeds are valid inputs) ------------------
@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seed_corpus_passes(name: str) -> None:
    corpus = targets.corpus(name)
    assert corpus
    for data in corpus:
        targets.TARGETS[name](data)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
@FAST
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    run(targets.TARGETS[name], data)


# -- Authorization header ----------------------------------------------------------------------
@FAST
@given(st.text(max_size=300))
def test_header_arbitrary_text(text: str) -> None:
    run(targets.check_authorization_header, text)


@st.composite
def headers(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(("", "Authorization: ", "authorization:", " \t")))
    scheme = draw(st.sampled_from(("CWS-SHA256", "cws-sha1", "CWS-SHA-256", "CWS-MD5", "Bearer")))
    user = draw(st.text(min_size=1, max_size=20).filter(lambda u: "," not in u and u.strip()))
    raw = draw(st.binary(max_size=300))
    signature = draw(
        st.sampled_from(
            (
                base64.b64encode(raw).decode(),
                base64.b64encode(raw).decode().rstrip("="),
                base64.urlsafe_b64encode(raw).decode(),
            )
        )
    )
    comma = draw(st.sampled_from((", ", ",", " , ", "; ")))
    return f"{prefix}{scheme} Access={user}{comma}Signature={signature}"


@FAST
@given(headers().map(lambda h: h.encode("utf-8", "surrogatepass")).flatmap(mutated))
def test_header_near_valid(data: bytes) -> None:
    run(targets.fuzz_authorization_header, data)


# -- keys --------------------------------------------------------------------------------------
def passphrases() -> st.SearchStrategy[Callable[[], bytes] | None]:
    return st.one_of(
        st.none(),
        st.binary(max_size=32).map(lambda secret: lambda: secret),
        st.just(lambda: seeds.PASSPHRASE),
        st.just(targets._refuse),
    )


@FAST
@given(st.binary(max_size=2048), passphrases())
def test_private_key_arbitrary_bytes(data: bytes, passphrase: Callable[[], bytes] | None) -> None:
    run(targets.check_private_key, data, passphrase)


@FAST
@given(near([k for k, _ in seeds.private_key_seeds()]), passphrases())
def test_private_key_mutated(data: bytes, passphrase: Callable[[], bytes] | None) -> None:
    run(targets.check_private_key, data, passphrase)


@FAST
@given(st.one_of(st.binary(max_size=1024), near(seeds.public_key_seeds())))
def test_public_key(data: bytes) -> None:
    run(targets.check_public_key, data)


# -- signature input ---------------------------------------------------------------------------
@FAST
@given(near(seeds.signature_input_seeds()))
def test_signature_input_near_valid(data: bytes) -> None:
    run(targets.check_signature_input, data)


# -- bulk readers and prepare_patient ----------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
field_values = st.one_of(
    st.sampled_from(
        (
            "EXT-9",
            "10000",
            " 42 ",
            "0012",
            "2000-04-12",
            "2000-04-12T10:00:00.123456789+02:00",
            "2000-04-12 10:00:00.000\n",
            "2000-02-30",
            "M",
            "f",
            "",
            " ",
            "\ud800",
            "٣",
            "9" * 40,
        )
    ),
    st.text(max_size=30),
    json_values,
)


@st.composite
def patient_records(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = dict(draw(st.sampled_from(seeds.PATIENT_VARIANTS)))
    for name in draw(st.lists(st.sampled_from((*FIELD_NAMES, "unknown")), max_size=4)):
        if draw(st.booleans()):
            record[name] = draw(field_values)
        else:
            record.pop(name, None)
    return record


def serialise(fmt: str, records: list[dict[str, Any]]) -> bytes:
    """The file as a user would write it; JSON escapes for what UTF-8 cannot hold (\\ud800)."""
    try:
        return seeds.SERIALISERS[fmt](records)
    except UnicodeEncodeError:
        if fmt == "json":
            return json.dumps(records).encode("ascii")
        if fmt == "ndjson":
            return b"".join(json.dumps(r).encode("ascii") + b"\n" for r in records)
        return seeds.SERIALISERS[fmt](
            [
                {
                    k: v.encode("utf-8", "replace").decode() if isinstance(v, str) else v
                    for k, v in r.items()
                }
                for r in records
            ]
        )


@FAST
@given(st.sampled_from(FORMATS), st.lists(patient_records(), min_size=1, max_size=4), st.data())
def test_read_rows_generated_files(
    fmt: str, records: list[dict[str, Any]], data: st.DataObject
) -> None:
    run(targets.check_rows, data.draw(mutated(serialise(fmt, records))), fmt)


@FAST
@given(
    st.sampled_from(seeds.rows_seeds()).flatmap(lambda s: st.tuples(st.just(s[0]), mutated(s[1])))
)
def test_read_rows_mutated_seeds(seed: tuple[str, bytes]) -> None:
    fmt, content = seed
    run(targets.check_rows, content, fmt)


@FAST
@given(patient_records())
def test_prepare_patient(record: dict[str, Any]) -> None:
    run(targets.check_prepare, record)


# -- journal -----------------------------------------------------------------------------------
json_lines = st.lists(
    json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=20), max_size=4
)


@FAST
@given(near(seeds.journal_seeds()), json_lines, st.binary(max_size=20))
def test_journal(base: bytes, lines: list[bytes], tail: bytes) -> None:
    run(targets.check_journal, base)
    run(targets.check_journal, base + b"".join(line + b"\n" for line in lines) + tail)
