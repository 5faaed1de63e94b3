"""Patients as OpenEMR shows them: Standard API records, their validation, and FHIR R4 Patient.

The Standard API validates a new patient like OpenEMR's ``PatientValidator``: ``fname`` 1–255
characters, ``lname`` 2–255, ``sex`` 4–30 (OpenEMR stores "Male"/"Female", so "M" is refused),
``DOB`` a ``YYYY-MM-DD`` date; errors come back per field, per rule, in the Particle validator's
shape: ``{"lname": {"LengthBetween::TOO_SHORT": "Last Name must be 2 characters or longer"}}``.
A FHIR Patient is mapped to the same fields and validated by the same rules.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from cwsctl.sandbox.openemr_store import PUBPID_SYSTEM, Patient

#: Standard API fields kept; others are dropped, as OpenEMR keeps only patient_data columns.
FIELDS = (
    "title",
    "fname",
    "mname",
    "lname",
    "DOB",
    "sex",
    "pubpid",
    "ss",
    "street",
    "postal_code",
    "city",
    "state",
    "country_code",
    "phone_contact",
    "phone_home",
    "phone_biz",
    "phone_cell",
    "email",
    "drivers_license",
    "race",
    "ethnicity",
    "status",
)
_LABELS = {"fname": "First Name", "lname": "Last Name", "sex": "Gender", "DOB": "Date of Birth"}
_LENGTHS = {"fname": (1, 255), "lname": (2, 255), "sex": (4, 30)}
_GENDER_TO_SEX = {"male": "Male", "female": "Female", "other": "Other", "unknown": "Unknown"}
MAX_FIELD_CHARS = 255

Errors = dict[str, dict[str, str]]


def validate_record(data: Any) -> tuple[dict[str, str], Errors]:
    """The kept fields of a Standard API body, and its validation errors (empty when valid)."""
    if not isinstance(data, dict):
        return {}, {"body": {"Type::INVALID": "the body must be a JSON object"}}
    record: dict[str, str] = {}
    errors: Errors = {}
    for name in FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            errors[name] = {"Type::INVALID": f"{name} must be a string"}
            continue
        text = str(value).strip()
        if len(text) > MAX_FIELD_CHARS and name not in _LENGTHS:
            errors[name] = {"LengthBetween::TOO_LONG": f"{name} must be 255 characters or shorter"}
            continue
        if text:
            record[name] = text
    for name, (low, high) in _LENGTHS.items():
        label = _LABELS[name]
        if name in errors:
            continue
        if name not in record:
            errors[name] = {
                "Required::NON_EXISTENT_KEY": f"{name} must be provided, but does not exist"
            }
        elif len(record[name]) < low:
            errors[name] = {
                "LengthBetween::TOO_SHORT": f"{label} must be {low} characters or longer"
            }
        elif len(record[name]) > high:
            errors[name] = {
                "LengthBetween::TOO_LONG": f"{label} must be {high} characters or shorter"
            }
    if "DOB" not in errors:
        if "DOB" not in record:
            errors["DOB"] = {
                "Required::NON_EXISTENT_KEY": "DOB must be provided, but does not exist"
            }
        elif not _is_date(record["DOB"]):
            errors["DOB"] = {
                "Datetime::INVALID_VALUE": "Date of Birth must be a valid date (format Y-m-d)"
            }
    return record, errors


def standard_view(patient: Patient) -> dict[str, Any]:
    """A patient as the Standard API answers it (OpenEMR sends ids as strings)."""
    return {
        "id": str(patient.pid),
        "pid": str(patient.pid),
        "uuid": patient.uuid,
        **{name: patient.record.get(name, "") for name in FIELDS},
    }


def matches(patient: Patient, filters: dict[str, str]) -> bool:
    """Standard API search: every filter field equals the patient's (names case-insensitively)."""
    for name, wanted in filters.items():
        have = patient.record.get(name, "")
        if name in ("fname", "mname", "lname"):
            if have.casefold() != wanted.casefold():
                return False
        elif have != wanted:
            return False
    return True


# -- FHIR ------------------------------------------------------------------------------------
def fhir_resource(patient: Patient) -> dict[str, Any]:
    """The FHIR R4 Patient for ``patient`` (id = the Standard API's uuid)."""
    record = patient.record
    resource: dict[str, Any] = {"resourceType": "Patient", "id": patient.uuid}
    resource["meta"] = {"versionId": "1"}
    identifiers = []
    for system, value in patient.identifiers:
        identifier: dict[str, Any] = {"value": value}
        if system:
            identifier = {"system": system, "value": value}
        if system == PUBPID_SYSTEM:
            identifier["type"] = {"coding": [{"system": PUBPID_SYSTEM, "code": "PT"}]}
        identifiers.append(identifier)
    if identifiers:
        resource["identifier"] = identifiers
    name: dict[str, Any] = {"use": "official", "family": record.get("lname", "")}
    given = [record[k] for k in ("fname", "mname") if record.get(k)]
    if given:
        name["given"] = given
    if record.get("title"):
        name["prefix"] = [record["title"]]
    resource["name"] = [name]
    sex = record.get("sex", "").casefold()
    resource["gender"] = sex if sex in ("male", "female", "other") else "unknown"
    if record.get("DOB"):
        resource["birthDate"] = record["DOB"]
    telecom = [
        {"system": "phone", "value": record["phone_home"], "use": "home"}
        if key == "phone_home"
        else {"system": "email", "value": record["email"]}
        for key in ("phone_home", "email")
        if record.get(key)
    ]
    if telecom:
        resource["telecom"] = telecom
    address = {
        fhir: record[field]
        for field, fhir in (("city", "city"), ("state", "state"), ("postal_code", "postalCode"))
        if record.get(field)
    }
    if record.get("street"):
        address["line"] = [record["street"]]
    if address:
        resource["address"] = [address]
    return resource


def record_from_fhir(resource: Any) -> tuple[dict[str, str], list[tuple[str, str]], list[str]]:
    """Standard API fields and identifiers from a FHIR Patient, and what is wrong with it."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        return {}, [], ["the body must be a FHIR Patient resource (resourceType 'Patient')"]
    problems: list[str] = []
    identifiers: list[tuple[str, str]] = []
    raw_identifiers = resource.get("identifier", [])
    if not isinstance(raw_identifiers, list):
        problems.append("Patient.identifier must be an array")
        raw_identifiers = []
    for index, item in enumerate(raw_identifiers):
        system = item.get("system", "") if isinstance(item, dict) else None
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(system, str) or not isinstance(value, str) or not value.strip():
            problems.append(f"Patient.identifier[{index}] needs a string value (and system)")
            continue
        identifiers.append((system, value.strip()))
    data: dict[str, Any] = {}
    names = resource.get("name")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, dict) for n in names)
    ):
        problems.append("Patient.name must be an array of HumanName")
        names = None
    if names:
        official = next((n for n in names if n.get("use") == "official"), names[0])
        data["lname"] = official.get("family")
        given = official.get("given") or []
        if not isinstance(given, list):
            problems.append("Patient.name.given must be an array")
            given = []
        if given:
            data["fname"] = given[0]
        if len(given) > 1:
            data["mname"] = " ".join(str(g) for g in given[1:])
        prefix = official.get("prefix")
        if isinstance(prefix, list) and prefix:
            data["title"] = prefix[0]
    gender = resource.get("gender")
    if gender is not None:
        if gender not in _GENDER_TO_SEX:
            problems.append("Patient.gender must be one of male, female, other, unknown")
        else:
            data["sex"] = _GENDER_TO_SEX[gender]
    data["DOB"] = resource.get("birthDate")
    if identifiers:
        data["pubpid"] = identifiers[0][1]
    record, errors = validate_record(data)
    fhir_names = {
        "fname": "Patient.name.given",
        "lname": "Patient.name.family",
        "sex": "Patient.gender",
        "DOB": "Patient.birthDate",
    }
    for field, rules in errors.items():
        for message in rules.values():
            problems.append(f"{fhir_names.get(field, field)}: {message}")
    return record, identifiers, problems


def fhir_matches(patient: Patient, params: dict[str, str]) -> bool:
    """FHIR search: string params match a name part by prefix, case-insensitively."""
    record = patient.record
    for name, wanted in params.items():
        want = wanted.casefold()
        if name == "_id":
            if patient.uuid != wanted:
                return False
        elif name == "birthdate":
            if record.get("DOB", "") != wanted.removeprefix("eq"):
                return False
        elif name == "identifier":
            system, value = parse_token(wanted)
            if not any(
                v == value and (system is None or s == system) for s, v in patient.identifiers
            ):
                return False
        else:
            fields = {"family": ("lname",), "given": ("fname", "mname")}.get(
                name, ("fname", "mname", "lname")
            )
            parts = [p.casefold() for f in fields for p in record.get(f, "").split()]
            if not any(p.startswith(want) for p in parts):
                return False
    return True


def parse_token(text: str) -> tuple[str | None, str]:
    """A FHIR token ``system|value``, ``|value`` (no system) or ``value`` (any system)."""
    if "|" in text:
        system, value = text.split("|", 1)
        return system, value
    return None, text


def _is_date(text: str) -> bool:
    if len(text) != 10:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True
