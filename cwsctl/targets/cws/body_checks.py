"""What `sign --explain` tells about a body: the byte-level traps that break CWS signatures."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from cwsctl.core.audit import body_sha256
from cwsctl.protocols.cws_signature import Algorithm


@dataclass
class BodyReport:
    """Size, digest and warnings for a body about to be signed."""

    size: int
    sha256: str
    warnings: list[str] = field(default_factory=list)


def inspect_body(body: bytes) -> BodyReport:
    """Find what usually goes wrong when people sign bodies by hand."""
    report = BodyReport(len(body), body_sha256(body))
    warn = report.warnings.append
    if not body:
        warn("the body is empty: fine for GET/DELETE, and it is still signed")
        return report
    if body.startswith(b"\xef\xbb\xbf"):
        warn("the body starts with a UTF-8 BOM (EF BB BF); it is signed and must be sent too")
    if b"\r\n" in body:
        warn("the body has CRLF line endings; a tool that converts them breaks the signature")
    if body.endswith(b"\n"):
        warn("the body ends with a newline; it is signed, so the request must send it too")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        warn("the body is not valid UTF-8; CWS expects UTF-8 JSON")
        return report
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        warn(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
    return report


def openssl_sign_commands(body_path: str, key_path: str, algorithm: Algorithm) -> list[str]:
    """The walkthrough's openssl commands that produce the same signature."""
    body = shlex.quote(body_path if body_path != "-" else "body.txt")
    return [
        f"openssl dgst -{algorithm.value} -sign {shlex.quote(key_path)} -out sign.{algorithm.value} {body}",
        f"openssl enc -A -base64 -in sign.{algorithm.value} -out sign.txt",
    ]
