"""The crypto core as a library: header format/parse, input detection, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwsctl.core.errors import SignatureError
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm, AuthorizationHeader, detect_signature_input


@settings(max_examples=25, deadline=None)
@given(body=st.binary(max_size=2048), algorithm=st.sampled_from(list(Algorithm)))
def test_sign_verify_round_trip(rsa2048, rsa2048_other, body, algorithm):
    signature = signing.sign(rsa2048, body, algorithm)
    assert signing.verify(rsa2048.public_key(), body, signature, algorithm)
    assert not signing.verify(rsa2048_other.public_key(), body, signature, algorithm)
    assert not signing.verify(rsa2048.public_key(), body + b"x", signature, algorithm)


@given(
    username=st.from_regex(r"[A-Za-z0-9_.@-]{1,40}", fullmatch=True),
    signature=st.binary(min_size=1, max_size=512),
    algorithm=st.sampled_from(list(Algorithm)),
)
def test_header_format_parse_round_trip(username, signature, algorithm):
    header = AuthorizationHeader(algorithm, username, signature)
    assert AuthorizationHeader.parse(header.format()) == header


@given(st.text(max_size=300))
def test_header_parse_never_crashes(text):
    try:
        AuthorizationHeader.parse(text)
    except SignatureError as exc:
        assert exc.message


def test_header_parse_tolerates_prefix_and_spacing():
    header = AuthorizationHeader.parse(
        "Authorization:  cws-sha1   Access=fake-username ,  Signature=AAAA"
    )
    assert header.algorithm is Algorithm.SHA1 and header.username == "fake-username"
    assert header.signature == b"\x00\x00\x00"


def test_detect_signature_forms(rsa2048):
    raw = signing.sign(rsa2048, b"x", Algorithm.SHA256)
    header = AuthorizationHeader(Algorithm.SHA1, "coremr", raw)
    assert detect_signature_input(raw).form == "binary"
    assert detect_signature_input(header.signature_b64.encode() + b"\n").signature == raw
    detected = detect_signature_input(header.format().encode())
    assert (detected.form, detected.algorithm, detected.username) == (
        "header",
        Algorithm.SHA1,
        "coremr",
    )
    with pytest.raises(SignatureError):
        detect_signature_input(b"  \n")


@pytest.mark.parametrize("name", ["sha256", "SHA-256", "CWS-SHA256", "cws-sha256"])
def test_algorithm_names(name):
    assert Algorithm.from_name(name) is Algorithm.SHA256
