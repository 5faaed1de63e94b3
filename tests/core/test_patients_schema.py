"""The patient record schema: normalisation, and the CWS status of every kind of error."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwsctl.core.bulk.rows import (
    FIELD_NAMES,
    REQUIRED_FIELDS,
    WALKTHROUGH_EXAMPLE,
    PatientValidationError,
    normalize_cws_datetime,
    parse_patient_body,
    patient_key,
    validate_patient,
)
from cwsctl.core.errors import ExitStatus, InputError

EXAMPLE = WALKTHROUGH_EXAMPLE


def with_(**changes: object) -> dict[str, object]:
    return {**EXAMPLE, **changes}


def rejects(record: object, status: int, field: str | None) -> PatientValidationError:
    with pytest.raises(PatientValidationError) as caught:
        validate_patient(record)
    assert caught.value.status == status
    assert caught.value.field == field
    return caught.value


def test_walkthrough_example_is_valid_and_normalised():
    record = validate_patient(EXAMPLE)
    assert record == {**EXAMPLE, "booking_date": "2023-04-07 10:00:00.000"}
    assert list(record) == [name for name in FIELD_NAMES if name in EXAMPLE]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2000-04-12 10:00:00", "2000-04-12 10:00:00.000"),
        ("2000-04-12 10:00:00.5", "2000-04-12 10:00:00.500"),
        ("2000-04-12 10:00:00.00", "2000-04-12 10:00:00.000"),
        ("2000-04-12 10:00:00.123456", "2000-04-12 10:00:00.123"),
        ("2024-02-29 23:59:59.999", "2024-02-29 23:59:59.999"),
    ],
)
def test_cws_datetimes_are_normalised_to_milliseconds(given, expected):
    assert validate_patient(with_(dob=given))["dob"] == expected


@pytest.mark.parametrize(
    "value",
    [
        "2000-04-12",
        "2000-04-12T10:00:00",
        "2000-04-12 10:00:00Z",
        "2000-04-12 10:00",
        "2000-4-12 10:00:00",
        "2000-02-30 10:00:00",
        "2000-13-01 10:00:00",
        "2000-04-12 24:00:00",
        "2000-04-12 10:00:00.1234567",
        "٢٠٠٠-04-12 10:00:00",  # Arabic-Indic digits match \d, not [0-9]
        " 2000-04-12 10:00:00",
        "",
    ],
)
def test_server_side_datetimes_are_strict(value):
    rejects(with_(booking_date=value), 422, "booking_date")


def test_facility_may_be_an_integer_or_a_code():
    assert validate_patient(with_(facility="MAIN-JAIL"))["facility"] == "MAIN-JAIL"
    assert validate_patient(with_(facility=0))["facility"] == 0
    rejects(with_(facility=""), 422, "facility")
    rejects(with_(facility="   "), 422, "facility")
    rejects(with_(facility=True), 422, "facility")
    rejects(with_(facility=10000.0), 422, "facility")
    rejects(with_(facility=[10000]), 422, "facility")
    rejects(with_(facility="F" * 65), 422, "facility")


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_missing_required_field_is_400(field):
    record = dict(EXAMPLE)
    del record[field]
    error = rejects(record, 400, field)
    assert "missing" in error.message
    rejects(with_(**{field: None}), 400, field)


def test_missing_is_reported_before_unknown_and_type_errors():
    record = with_(agency="two", extra=1)
    del record["lname"]
    rejects(record, 400, "lname")
    rejects(with_(agency="two", extra=1), 422, "extra")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("external_id", 123),
        ("agency", "2"),
        ("agency", 2.0),
        ("agency", True),
        ("agency", -1),
        ("billing_agency", 2**31),
        ("fname", ["First"]),
        ("lname", {"text": "Name"}),
        ("dob", 20000412),
        ("sex", "m"),
        ("sex", "X"),
        ("sex", 1),
        ("booking_no", False),
        ("external_id", "x" * 65),
        ("booking_no", "x" * 65),
        ("fname", "x" * 101),
        ("lname", "x" * 101),
        ("fname", ""),
        ("lname", "Na\nme"),
        ("external_id", "id\x00"),
        ("mname", "x" * 101),
        ("suffix", "x" * 17),
        ("housing_unit", 12),
        ("release_date", "tomorrow"),
    ],
)
def test_wrong_type_format_length_or_range_is_422(field, value):
    rejects(with_(**{field: value}), 422, field)


def test_length_limits_are_inclusive():
    record = validate_patient(with_(external_id="x" * 64, fname="é" * 100, lname="x" * 100))
    assert len(record["fname"]) == 100


def test_unknown_fields_are_422():
    error = rejects(with_(ssn="123-45-6789", zz=1), 422, "ssn")
    assert "and 1 more" in error.message
    assert "fname" in (error.hint or "")


def test_optional_fields():
    record = validate_patient(
        with_(
            mname="Middle",
            suffix="Jr",
            housing_unit="B-12",
            release_date="2023-05-01 08:30:00",
        )
    )
    assert record["release_date"] == "2023-05-01 08:30:00.000"
    assert record["mname"] == "Middle"
    nulls = validate_patient(with_(mname=None, release_date=None))
    assert "mname" not in nulls
    assert "release_date" not in nulls


def test_not_an_object_is_400():
    rejects(["a"], 400, None)
    rejects("text", 400, None)
    rejects(None, 400, None)


def test_error_messages_never_echo_values():
    secret = "Zebediah-1999-13-01"
    for field in ("fname", "dob", "sex", "agency", "booking_no"):
        value: object = secret * 10 if field in ("fname", "booking_no") else secret
        with pytest.raises(PatientValidationError) as caught:
            validate_patient(with_(**{field: value}))
        assert "Zebediah" not in caught.value.message
        assert "Zebediah" not in (caught.value.hint or "")


def test_error_is_an_input_error_with_a_json_shape():
    error = rejects(with_(sex="male"), 422, "sex")
    assert isinstance(error, InputError)
    assert error.exit_status is ExitStatus.USAGE
    assert error.to_json() == {"error": error.message, "field": "sex"}
    assert PatientValidationError("x", status=400).to_json() == {"error": "x"}


# -- parse_patient_body -----------------------------------------------------------------------


def test_parse_patient_body_validates():
    raw = json.dumps(EXAMPLE).encode()
    assert parse_patient_body(raw)["booking_date"] == "2023-04-07 10:00:00.000"
    assert parse_patient_body(b"\xef\xbb\xbf" + raw)["fname"] == "First"  # a BOM is tolerated
    with pytest.raises(PatientValidationError) as caught:
        parse_patient_body(json.dumps(with_(sex="Q")).encode())
    assert caught.value.status == 422


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \n",
        b"{",
        b"{'single': 'quotes'}",
        b"[]",
        b"null",
        b'"a string"',
        b"42",
        b'{"agency": NaN}',
        b'{"agency": Infinity}',
        b'{"fname": "a", "fname": "b"}',
        b"\xff\xfe{}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_unparseable_bodies_are_400(raw):
    with pytest.raises(PatientValidationError) as caught:
        parse_patient_body(raw)
    assert caught.value.status == 400
    assert caught.value.field is None


# -- normalize_cws_datetime (client side, lenient) --------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2000-04-12", "2000-04-12 00:00:00.000"),
        ("2000-04-12T10:00:00", "2000-04-12 10:00:00.000"),
        ("2000-04-12T10:00", "2000-04-12 10:00:00.000"),
        ("2000-04-12t10:00:00z", "2000-04-12 10:00:00.000"),
        ("2000-04-12T10:00:00.5Z", "2000-04-12 10:00:00.500"),
        ("2000-04-12T10:00:00,25+02:00", "2000-04-12 10:00:00.250"),
        ("2000-04-12T23:30:00-0700", "2000-04-12 23:30:00.000"),  # wall clock kept, not UTC
        ("2000-04-12T10:00:00.123456789+05", "2000-04-12 10:00:00.123"),
        ("2000-04-12 10:00:00.000", "2000-04-12 10:00:00.000"),
        ("2023-04-07 10:00:00.00", "2023-04-07 10:00:00.000"),
        ("  2023-04-07  ", "2023-04-07 00:00:00.000"),
    ],
)
def test_normalize_cws_datetime(given, expected):
    assert normalize_cws_datetime(given) == expected


@pytest.mark.parametrize(
    "value", ["04/12/2000", "2000-04-31", "2000-04-12T25:00:00", "yesterday", "", "2000-04-12T"]
)
def test_normalize_cws_datetime_rejects(value):
    with pytest.raises(PatientValidationError) as caught:
        normalize_cws_datetime(value, field="dob")
    assert caught.value.status == 422
    assert caught.value.field == "dob"
    assert "dob" in caught.value.message


@given(st.datetimes(min_value=datetime(1800, 1, 1), max_value=datetime(2200, 12, 31)))
def test_normalised_iso_datetimes_pass_strict_validation_unchanged(moment):
    normalised = normalize_cws_datetime(moment.isoformat())
    assert normalised == f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}"
    assert validate_patient(with_(dob=normalised))["dob"] == normalised
    assert normalize_cws_datetime(normalised) == normalised


def test_patient_key_treats_facility_number_and_code_alike():
    assert patient_key(EXAMPLE) == ("FakeExternalID", "10000")
    assert patient_key(with_(facility="10000")) == patient_key(EXAMPLE)
