"""Fuzz targets: ``fuzz_<name>(data: bytes) -> None`` for each parser of untrusted input.

A target returns when the code under test returned a well-formed result or raised the CwsError
subclass its contract allows. Anything else escapes: another exception type (TypeError, KeyError,
UnicodeDecodeError, RecursionError, a ValueError from the standard library…) or an
AssertionError from a broken invariant. Each escape is a finding.

The ``check_*`` functions take structured arguments (hypothesis strategies call them directly);
the ``fuzz_*`` functions decode one byte string into those arguments, for byte-level fuzzers:

=====================  ========================================================================
target                 input encoding
=====================  ========================================================================
authorization_header   UTF-8 text (invalid bytes become lone surrogates: any str is reachable)
keys                   byte 0 mod 4 picks the call: 0 private, no passphrase; 1 private, the
                       passphrase is ``data[2:2 + data[1]]``; 2 public; 3 private, the passphrase
                       source raises LocalKeyError. The rest is the key file.
signature_input        the file as is
read_rows              byte 0 mod 3 picks csv / json / ndjson; the rest is the file
journal                the journal file as is
=====================  ========================================================================
"""

from __future__ import annotations

import atexit
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.bulk.journal import Journal
from cwsctl.core.bulk.readers import FORMATS, InputRow, read_rows
from cwsctl.core.bulk.rows import PatientValidationError, parse_patient_body, prepare_patient
from cwsctl.core.errors import InputError, LocalKeyError, SignatureError
from cwsctl.protocols.cws_signature import (
    AuthorizationHeader,
    SignatureInput,
    detect_signature_input,
)
from cwsctl.targets.cws.patients import patient_body


def _require(condition: bool, message: str) -> None:
    # Not `assert`: invariants must hold under `python -O` too.
    if not condition:
        raise AssertionError(message)


# -- Authorization header ----------------------------------------------------------------------
def check_authorization_header(text: str) -> None:
    """Parse returns a header that formats and re-parses to itself, or raises SignatureError."""
    try:
        header = AuthorizationHeader.parse(text)
    except SignatureError:
        return
    _require(isinstance(header, AuthorizationHeader), "parse returned a non-header")
    _require(bool(header.signature), "parse returned an empty signature")
    _require(AuthorizationHeader.parse(header.format()) == header, "format/parse round trip")


def fuzz_authorization_header(data: bytes) -> None:
    """Fuzz AuthorizationHeader.parse on arbitrary text."""
    check_authorization_header(data.decode("utf-8", "surrogateescape"))


# -- keys --------------------------------------------------------------------------------------
class _NoPassphrase(LocalKeyError):
    pass


def _refuse() -> bytes:
    raise _NoPassphrase("no passphrase available (stdin is not a terminal)")


def check_private_key(data: bytes, passphrase: Callable[[], bytes] | None) -> None:
    """parse_private_key returns an RSA key of at least MIN_BITS, or raises LocalKeyError."""
    try:
        key = keys.parse_private_key(data, passphrase, source="fuzz")
    except LocalKeyError:
        return
    _require(isinstance(key, rsa.RSAPrivateKey), f"returned {type(key).__name__}")
    _require(key.key_size >= keys.MIN_BITS, f"returned a {key.key_size}-bit key")


def check_public_key(data: bytes) -> None:
    """parse_public_key returns an RSA key of at least MIN_BITS, or raises LocalKeyError."""
    try:
        key = keys.parse_public_key(data, source="fuzz")
    except LocalKeyError:
        return
    _require(isinstance(key, rsa.RSAPublicKey), f"returned {type(key).__name__}")
    _require(key.key_size >= keys.MIN_BITS, f"returned a {key.key_size}-bit key")


def encode_keys_input(mode: int, key: bytes, passphrase: bytes = b"") -> bytes:
    """The fuzz_keys input for a call (see the module docstring)."""
    return bytes([mode, len(passphrase)]) + passphrase + key if mode == 1 else bytes([mode]) + key


def fuzz_keys(data: bytes) -> None:
    """Fuzz keys.parse_private_key (three passphrase sources) and keys.parse_public_key."""
    if not data:
        return
    mode = data[0] % 4
    if mode == 1:
        size = data[1] if len(data) > 1 else 0
        secret = data[2 : 2 + size]
        check_private_key(data[2 + size :], lambda: secret)
    elif mode == 2:
        check_public_key(data[1:])
    else:
        check_private_key(data[1:], None if mode == 0 else _refuse)


# -- signature input ---------------------------------------------------------------------------
def check_signature_input(data: bytes) -> None:
    """detect_signature_input returns a non-empty signature in a known form, or SignatureError."""
    try:
        found = detect_signature_input(data)
    except SignatureError:
        return
    _require(isinstance(found, SignatureInput), "returned a non-SignatureInput")
    _require(found.form in ("header", "base64", "binary"), f"unknown form {found.form!r}")
    _require(isinstance(found.signature, bytes) and bool(found.signature), "empty signature")
    _require((found.form == "header") == (found.algorithm is not None), "algorithm vs form")


def fuzz_signature_input(data: bytes) -> None:
    """Fuzz detect_signature_input on arbitrary bytes."""
    check_signature_input(data)


# -- bulk readers ------------------------------------------------------------------------------
def check_rows(data: bytes, fmt: str) -> None:
    """read_rows yields numbered InputRows or raises InputError; each row's fields then go
    through prepare_patient, which returns a record or raises PatientValidationError. A record
    it accepts must be sendable: patient_body encodes it and the server's parse_patient_body
    reads back the same record (what ``cwsctl patients load`` relies on)."""
    expected = 1
    try:
        for row in read_rows(io.BytesIO(data), fmt):
            _require(isinstance(row, InputRow), f"yielded {type(row).__name__}")
            _require(row.number == expected, f"row number {row.number}, expected {expected}")
            expected += 1
            _require((row.fields is None) != (row.error is None), "fields xor error")
            if row.fields is not None:
                _require(isinstance(row.fields, dict), "fields is not a dict")
                _require(all(isinstance(k, str) for k in row.fields), "non-str field name")
                check_prepare(row.fields)
    except InputError:
        return


def check_prepare(fields: dict[str, Any]) -> None:
    """prepare_patient returns a record that survives patient_body / parse_patient_body."""
    try:
        record = prepare_patient(fields)
    except PatientValidationError:
        return
    _require(isinstance(record, dict), "prepare_patient returned a non-dict")
    body = patient_body(record)
    try:
        again = parse_patient_body(body)
    except PatientValidationError as exc:
        raise AssertionError(f"server refuses a prepared record: {exc.message}") from None
    _require(again == record, "server reads back a different record")


def fuzz_read_rows(data: bytes) -> None:
    """Fuzz read_rows (csv/json/ndjson) and prepare_patient on every row it yields."""
    if not data:
        return
    check_rows(data[1:], FORMATS[data[0] % len(FORMATS)])


# -- journal -----------------------------------------------------------------------------------
_scratch: Path | None = None


def _journal_path() -> Path:
    global _scratch
    if _scratch is None:
        from tests.fuzz.seeds import _scratch_dir

        _scratch = _scratch_dir()
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch / "fuzz.journal"


def check_journal(data: bytes) -> None:
    """Journal(path) opens a file holding ``data`` or raises InputError; once opened (and a
    torn last line cut off) it reopens cleanly with the same salt."""
    path = _journal_path()
    path.write_bytes(data)
    try:
        journal = Journal(path)
    except InputError:
        return
    with journal:
        _require(journal.torn_lines in (0, 1), f"torn_lines={journal.torn_lines}")
        key = journal.key_for("EXT-1", "10000")
    content = path.read_bytes()
    _require(content.endswith(b"\n"), "journal does not end with a newline after open")
    _require(content.startswith(data[: data.rfind(b"\n") + 1]), "open rewrote earlier lines")
    try:
        reopened = Journal(path)
    except InputError as exc:
        raise AssertionError(f"an opened journal does not reopen: {exc.message}") from None
    with reopened:
        _require(reopened.torn_lines == 0, "reopened journal has a torn line")
        _require(reopened.key_for("EXT-1", "10000") == key, "salt changed on reopen")


def fuzz_journal(data: bytes) -> None:
    """Fuzz the journal opener on an arbitrary file."""
    check_journal(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "authorization_header": fuzz_authorization_header,
    "keys": fuzz_keys,
    "signature_input": fuzz_signature_input,
    "read_rows": fuzz_read_rows,
    "journal": fuzz_journal,
}


def corpus(name: str) -> list[bytes]:
    """Seed inputs for target ``name``, in its input encoding."""
    from tests.fuzz import seeds

    if name == "authorization_header":
        return [h.encode("utf-8") for h in seeds.header_seeds()]
    if name == "signature_input":
        return list(seeds.signature_input_seeds())
    if name == "read_rows":
        return [bytes([FORMATS.index(fmt)]) + data for fmt, data in seeds.rows_seeds()]
    if name == "journal":
        return list(seeds.journal_seeds())
    if name == "keys":
        inputs = []
        for data, passphrase in seeds.private_key_seeds():
            inputs.append(encode_keys_input(0, data))
            if passphrase is not None:
                inputs.append(encode_keys_input(1, data, passphrase))
                inputs.append(encode_keys_input(1, data, b"wrong"))
                inputs.append(encode_keys_input(3, data))
        inputs += [encode_keys_input(2, data) for data in seeds.public_key_seeds()]
        return inputs
    raise KeyError(name)


#: Tokens that help a byte-level fuzzer reach deep paths (libFuzzer -dict).
DICTIONARY: dict[str, tuple[bytes, ...]] = {
    "authorization_header": (
        b"CWS-SHA256",
        b"CWS-SHA1",
        b"CWS-",
        b"Authorization:",
        b"Access=",
        b"Signature=",
        b", ",
        b"==",
    ),
    "signature_input": (b"CWS-SHA256 ", b"authorization", b"Access=", b", Signature=", b"=="),
    "keys": (
        b"-----BEGIN ",
        b"-----END ",
        b"PRIVATE KEY-----",
        b"RSA PRIVATE KEY-----",
        b"ENCRYPTED PRIVATE KEY-----",
        b"PUBLIC KEY-----",
        b"RSA PUBLIC KEY-----",
        b"Proc-Type: 4,ENCRYPTED\n",
        b"DEK-Info: AES-256-CBC,",
        b"DEK-Info: DES-EDE3-CBC,",
        b"\x30\x82",
        b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",
    ),
    "read_rows": (
        b'"external_id"',
        b'"facility"',
        b'"booking_date"',
        b'"release_date"',
        b"external_id,facility,agency,billing_agency,fname,lname,dob,sex,booking_no,booking_date",
        b"2000-04-12 10:00:00.000",
        b"2000-04-12T10:00:00Z",
        b"NaN",
        b"1e400",
        b"\\ud800",
        b"\xef\xbb\xbf",
    ),
    "journal": (b'{"journal":1,"salt":"', b'"key":', b'"outcome":"sending"', b'"row":', b"\n"),
}
