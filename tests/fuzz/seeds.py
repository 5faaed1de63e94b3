"""Valid inputs for every fuzz target, built at run time (no key material is stored in the repo).

Keys are generated once per process and cached: RSA generation is the slow part. Seeds are the
raw payloads; :func:`corpus` wraps them in each target's input encoding (see ``targets.py``).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

PASSPHRASE = b"correct horse"

ENC = serialization.Encoding
PRIV = serialization.PrivateFormat
PUB = serialization.PublicFormat


@functools.cache
def _rsa(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _openssl_encrypted(pem: bytes) -> list[bytes]:
    """PKCS#8 and PKCS#1 encryptions cryptography cannot write (cheap KDFs, unsupported ciphers)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return []
    variants = (
        ["pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-iter", "1"],
        ["pkcs8", "-topk8", "-v2", "aria-128-cbc", "-iter", "1"],  # cryptography: unsupported
        ["pkcs8", "-topk8", "-v2", "aes-128-cbc", "-scrypt", "-scrypt_N", "1024"],
        ["rsa", "-traditional", "-des3"],
    )
    out = []
    for args in variants:
        result = subprocess.run(
            [openssl, *args, "-passout", "pass:" + PASSPHRASE.decode()],
            input=pem,
            capture_output=True,
            check=False,
        )
        if result.returncode == 0 and result.stdout:
            out.append(result.stdout)
    return out


@functools.cache
def private_key_seeds() -> tuple[tuple[bytes, bytes | None], ...]:
    """(key bytes, passphrase or None) in every flavour parse_private_key meets, and some it refuses."""
    key = _rsa(2048)
    small = _rsa(1024)
    none = serialization.NoEncryption()
    best = serialization.BestAvailableEncryption(PASSPHRASE)
    seeds: list[tuple[bytes, bytes | None]] = [
        (key.private_bytes(ENC.PEM, PRIV.PKCS8, none), None),
        (key.private_bytes(ENC.PEM, PRIV.TraditionalOpenSSL, none), None),
        (key.private_bytes(ENC.DER, PRIV.PKCS8, none), None),
        (key.private_bytes(ENC.DER, PRIV.TraditionalOpenSSL, none), None),
        (key.private_bytes(ENC.PEM, PRIV.TraditionalOpenSSL, best), PASSPHRASE),
        (key.private_bytes(ENC.PEM, PRIV.PKCS8, best), PASSPHRASE),
        (key.private_bytes(ENC.DER, PRIV.PKCS8, best), PASSPHRASE),
        (key.private_bytes(ENC.PEM, PRIV.OpenSSH, none), None),
        (small.private_bytes(ENC.PEM, PRIV.PKCS8, none), None),
        (ec.generate_private_key(ec.SECP256R1()).private_bytes(ENC.PEM, PRIV.PKCS8, none), None),
        (ed25519.Ed25519PrivateKey.generate().private_bytes(ENC.DER, PRIV.PKCS8, none), None),
        (
            dsa.generate_private_key(1024).private_bytes(  # noqa: S505 (refused anyway; fast)
                ENC.PEM, PRIV.TraditionalOpenSSL, none
            ),
            None,
        ),
    ]
    pkcs8 = key.private_bytes(ENC.PEM, PRIV.PKCS8, none)
    seeds += [(data, PASSPHRASE) for data in _openssl_encrypted(pkcs8)]
    return tuple(seeds)


@functools.cache
def public_key_seeds() -> tuple[bytes, ...]:
    """Public keys: SPKI and PKCS#1, PEM and DER, too small, not RSA."""
    public = _rsa(2048).public_key()
    return (
        public.public_bytes(ENC.PEM, PUB.SubjectPublicKeyInfo),
        public.public_bytes(ENC.PEM, PUB.PKCS1),
        public.public_bytes(ENC.DER, PUB.SubjectPublicKeyInfo),
        public.public_bytes(ENC.DER, PUB.PKCS1),
        public.public_bytes(ENC.OpenSSH, PUB.OpenSSH),
        _rsa(1024).public_key().public_bytes(ENC.PEM, PUB.SubjectPublicKeyInfo),
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(ENC.PEM, PUB.SubjectPublicKeyInfo),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@functools.cache
def header_seeds() -> tuple[str, ...]:
    """Authorization header values as CWS sends them, and in the forms users paste."""
    signature = _b64(bytes(range(256)))
    return (
        f"CWS-SHA256 Access=alice, Signature={signature}",
        f"CWS-SHA1 Access=coremr, Signature={signature}",
        f"Authorization: CWS-SHA256 Access=svc.user@example, Signature={signature}",
        f"  cws-sha-256   access = bob ,signature=  {signature}  \r\n",
        "CWS-SHA256 Access=a, Signature=QQ==",
        "CWS-MD5 Access=a, Signature=QQ==",
        "Bearer Access=a, Signature=QQ==",
        "CWS-SHA256 Access=a, Signature=",
    )


@functools.cache
def signature_input_seeds() -> tuple[bytes, ...]:
    """A signature as a header, bare base64, wrapped base64 (openssl enc -base64) and raw binary."""
    raw = bytes((i * 131 + 7) % 256 for i in range(256))
    b64 = _b64(raw).encode("ascii")
    wrapped = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64)) + b"\n"
    return (
        *(h.encode("ascii") for h in header_seeds()),
        b64,
        b64 + b"\n",
        wrapped,
        raw,
        b"AAAA",
        b"====",
        b"authorization: x",
    )


PATIENT = {
    "external_id": "EXT-0001",
    "facility": 10000,
    "agency": 12,
    "billing_agency": 12,
    "fname": "Jane",
    "lname": "Doe",
    "dob": "2000-04-12 10:00:00.000",
    "sex": "F",
    "booking_no": "B-77",
    "booking_date": "2023-04-07 10:00:00.00",
}

PATIENT_VARIANTS: tuple[dict[str, object], ...] = (
    PATIENT,
    {**PATIENT, "external_id": "EXT-0002", "facility": "MAIN", "dob": "2000-04-12", "sex": "U"},
    {
        **PATIENT,
        "external_id": "EXT-0003",
        "mname": "Q",
        "suffix": "Jr",
        "housing_unit": "C-4",
        "release_date": "2024-01-02T03:04:05.678+02:00",
        "booking_date": "2023-04-07T10:00Z",
    },
    {**PATIENT, "external_id": "EXT-0004", "mname": None, "agency": "0012", "fname": "Zoë"},
    {**PATIENT, "external_id": "", "sex": "m", "dob": "2000-02-30 00:00:00"},
)


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if any(c in text for c in ',"\r\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def patients_csv(records: list[dict[str, object]]) -> bytes:
    """A CSV file with a header row naming every field any record uses."""
    columns: list[str] = []
    for record in records:
        columns += [name for name in record if name not in columns]
    lines = [",".join(columns)]
    lines += [",".join(_csv_cell(record.get(name)) for name in columns) for record in records]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def patients_json(records: list[dict[str, object]]) -> bytes:
    """A JSON array of records, pretty-printed as people write it."""
    return json.dumps(records, indent=2, ensure_ascii=False).encode("utf-8")


def patients_ndjson(records: list[dict[str, object]]) -> bytes:
    """One compact JSON object per line."""
    return b"".join(
        json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
        for r in records
    )


SERIALISERS = {"csv": patients_csv, "json": patients_json, "ndjson": patients_ndjson}


@functools.cache
def rows_seeds() -> tuple[tuple[str, bytes], ...]:
    """(format, file bytes): each format with one record, several, odd spellings and edge cases."""
    records = list(PATIENT_VARIANTS)
    seeds: list[tuple[str, bytes]] = []
    for fmt, serialise in SERIALISERS.items():
        seeds += [(fmt, serialise([PATIENT])), (fmt, serialise(records))]
    seeds += [
        ("csv", b"\xef\xbb\xbf" + patients_csv([PATIENT])),
        ("csv", patients_csv([PATIENT]) + b'\r\n,,,\r\n"unterminated'),
        ("json", b"[]"),
        ("json", b'[{"a": 1}, 2, "x", null, [], {"external_id": 1e400}]'),
        ("ndjson", b'\n\n{"external_id": NaN}\n[1]\n{\n'),
        # Close to the json module's limits (nesting depth, digits of an int): one mutation away.
        ("ndjson", b'{"agency": ' + b"[" * 400 + b"]" * 400 + b"}\n"),
        ("json", b'[{"agency": ' + b"9" * 4000 + b"}]"),
        ("csv", patients_csv([{**PATIENT, "agency": "9" * 4000}])),
    ]
    return tuple(seeds)


def shm_or_none() -> str | None:
    """/dev/shm when usable: journal fsyncs there cost nothing."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _scratch_dir() -> Path:
    # bench/fuzz.py sets CWSCTL_FUZZ_SCRATCH and removes it afterwards: libFuzzer ends the
    # process with exit(), so atexit cleanup never runs in its workers.
    base = os.environ.get("CWSCTL_FUZZ_SCRATCH") or shm_or_none()
    return Path(tempfile.mkdtemp(prefix="cwsctl-fuzz-", dir=base))


@functools.cache
def journal_seeds() -> tuple[bytes, ...]:
    """Journals written by the real Journal class, plus a torn last line and foreign files."""
    from cwsctl.core.bulk.journal import Journal

    path = _scratch_dir() / "seed.journal"
    try:
        with Journal(path) as journal:
            empty = path.read_bytes()
            for row, outcome in enumerate(("sending", "created", "sending", "unknown"), start=1):
                key = journal.key_for(f"EXT-{row % 3}", "10000")
                journal.record(key, row, outcome, status=201, id=row, verified=True)
        full = path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
        path.parent.rmdir()
    return (
        b"",
        empty,
        full,
        full + b'{"key":"abc","row":9,"outco',
        full[: len(full) // 2],
        b'{"journal":2,"salt":"00"}\n',
        b"not a journal\n",
        empty + b'{"key":"k","row":1,"outcome":"sending","x":' + b"[" * 400 + b"]" * 400 + b"}\n",
        empty + b'{"key":"k","row":' + b"9" * 4000 + b',"outcome":"created"}\n',
    )
