"""Inputs the fuzzers found that broke a parser's contract (fixed in a41b9ee), kept as regressions.

Each test states the contract: return, or raise the CwsError subclass the caller handles. A new
finding goes here as ``@pytest.mark.xfail(strict=True, reason=...)`` with its signature in
``known.py`` until it is fixed; then both the marker and the ``known.py`` line go.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cwsctl.core import keys
from cwsctl.core.bulk.journal import Journal
from cwsctl.core.bulk.readers import InputRow, read_rows
from cwsctl.core.bulk.rows import PatientValidationError, parse_patient_body, prepare_patient
from cwsctl.core.errors import InputError, LocalKeyError
from cwsctl.targets.cws.patients import patient_body
from tests.fuzz.seeds import PATIENT

HEADER = b'{"journal":1,"salt":"00112233445566778899aabbccddeeff"}\n'


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"1\n", id="first-line-not-object"),
        pytest.param(b'{"journal":1,"salt":1}\n', id="salt-not-string"),
        pytest.param(b'{"journal":1,"salt":"zz"}\n', id="salt-not-hex"),
        pytest.param(HEADER + b"{}\n", id="entry-without-key"),
        pytest.param(HEADER + b"[]\n", id="entry-not-object"),
        pytest.param(HEADER + b'{"key":[]}\n', id="entry-key-unhashable"),
        pytest.param(b"[" * 100_000 + b"\n", id="deep-nesting"),
    ],
)
def test_journal_open_refuses_a_foreign_file(tmp_path: Path, content: bytes) -> None:
    """Was: AttributeError/KeyError/TypeError/ValueError/RecursionError from Journal._load."""
    path = tmp_path / "load.journal"
    path.write_bytes(content)
    with pytest.raises(InputError):
        Journal(path).close()


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        pytest.param("ndjson", b'{"agency":' + b"1" * 5000 + b"}\n", id="ndjson-huge-int"),
        pytest.param("json", b"[" + b"1" * 5000 + b"]", id="json-huge-int"),
        pytest.param("ndjson", b"[" * 100_000 + b"\n", id="ndjson-deep"),
        pytest.param("json", b"[" + b"[" * 100_000 + b"]" * 100_001, id="json-deep"),
    ],
)
def test_read_rows_json_limits(fmt: str, data: bytes) -> None:
    """Was: ValueError (int over 4300 digits) / RecursionError escaping the JSON readers."""
    try:
        rows = list(read_rows(io.BytesIO(data), fmt))
    except InputError:
        return
    assert all(isinstance(row, InputRow) for row in rows)


def test_prepare_patient_huge_digit_string() -> None:
    """Was: ValueError from int() of a 5000-digit string in prepare_patient."""
    fields = {name: str(value) for name, value in PATIENT.items()}
    with pytest.raises(PatientValidationError):
        prepare_patient({**fields, "agency": "1" * 5000})


def test_prepared_record_with_lone_surrogate_is_sendable() -> None:
    """Was: \\ud800 passed validation, then patient_body raised UnicodeEncodeError."""
    line = json.dumps({**PATIENT, "fname": "\ud800"}).encode("ascii") + b"\n"
    (row,) = read_rows(io.BytesIO(line), "ndjson")
    assert row.fields is not None
    try:
        record = prepare_patient(row.fields)
    except PatientValidationError:
        return
    assert parse_patient_body(patient_body(record)) == record


@pytest.mark.parametrize("oid", ["2b6571", "2b656f"], ids=["ed448", "x448"])
def test_private_key_bad_ed448_or_x448(oid: str) -> None:
    """Was: cryptography InternalError (OpenSSL "key setup failed") escaping."""
    # PrivateKeyInfo { version 0, AlgorithmIdentifier { oid }, OCTET STRING { OCTET STRING[32] } }
    der = bytes.fromhex("302e02010030050603" + oid + "04220420") + bytes(range(32))
    with pytest.raises(LocalKeyError):
        keys.parse_private_key(der)


# `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp112r1 -aes-128-cbc -pass pass:pw`
# (a throwaway 112-bit key: cryptography does not support the curve).
ENCRYPTED_SECP112R1 = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
MIG7MFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAhyat8SPAXDwQICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEAQIEEMIwieE6m5JB/eiMrFUFXtwEYGKl
VS+sv3774hlw2B7/dgEeotWfnLEXisUln8MeHsqvidjgQL+gYaKG4tnTvk4MfI8z
B1Ky1DydOuGfbEJtCW+qZ8wC70grb7Rp6ZuKKgAxzB8XRKbJhcjMMEwcqYNfeA==
-----END ENCRYPTED PRIVATE KEY-----
"""


def test_encrypted_private_key_of_unsupported_type() -> None:
    """Was: UnsupportedAlgorithm from the second load, the one with the passphrase."""
    with pytest.raises(LocalKeyError):
        keys.parse_private_key(ENCRYPTED_SECP112R1, lambda: b"pw")


def test_json_array_number_across_chunk_boundary() -> None:
    """Was (behaviour, not a crash): a number cut by the 64 KiB chunk failed the whole file."""
    data = b"[" + b" " * (65536 - 3) + b"12345]"
    rows = list(read_rows(io.BytesIO(data), "json"))
    assert rows == [InputRow(1, None, "element 1 is not a JSON object")]
