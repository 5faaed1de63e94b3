"""Patients as OpenEMR shows them: Standard API records, their validation, and FHIR R4 Patient.

A new patient is validated like OpenEMR's ``PatientValidator`` (``Validators/PatientValidator.php``
:56-59): ``fname`` 1–255 characters, ``lname`` 2–255, ``sex`` 4–30 (OpenEMR stores
"Male"/"Female", so "M" is refused), ``DOB`` a ``Y-m-d`` date; errors come back per field, per
rule, in the Particle validator's shape:
``{"lname": {"LengthBetween::TOO_SHORT": "Last Name must be 2 characters or longer"}}``.

A FHIR Patient is read as ``FhirPatientService::parseFhirResource`` reads it: only the HumanName
with ``use: "official"`` gives fname (first given), mname (other givens) and lname (family) — no
official name, no names; an identifier counts only by its type code, ``PT`` → pubpid and ``SS``
→ ss, its ``system`` dropped; every other identifier is dropped.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from cwsctl.targets.openemr.sandbox.store import Patient

#: HL7 v2 table 0203 (identifier types): PT is the pubpid, SS the social security number.
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"

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
        text = str(value)  # not trimmed: PatientValidator counts what it is given
        if len(text) > MAX_FIELD_CHARS and name not in _LENGTHS:
            errors[name] = {"LengthBetween::TOO_LONG": f"{name} must be 255 characters or shorter"}
            continue
        if text:
            record[name] = text
        elif name in _LABELS:  # Particle's required(): present but empty
            errors[name] = {"NotEmpty::EMPTY": f"{_LABELS[name]} must not be empty"}
    for name, (low, high) in _LENGTHS.items():
        label = _LABELS[name]
        if name in errors:
            continue
        if name not in record:
            errors[name] = {
                "Required::NON_EXISTENT_KEY": f"{label} must be provided, but does not exist"
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
                "Required::NON_EXISTENT_KEY": "Date of Birth must be provided, but does not exist"
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
#: Patient's elements (FHIR R4): anything else is a structural error (an OperationOutcome).
PATIENT_ELEMENTS = frozenset(
    [
        "resourceType",
        "id",
        "meta",
        "implicitRules",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "deceasedBoolean",
        "deceasedDateTime",
        "address",
        "maritalStatus",
        "multipleBirthBoolean",
        "multipleBirthInteger",
        "photo",
        "contact",
        "communication",
        "generalPractitioner",
        "managingOrganization",
        "link",
    ]
)


def structure_problem(resource: Any) -> str | None:
    """Why ``resource`` is not a FHIR Patient at all (FhirValidationService), or None."""
    if not isinstance(resource, dict):
        return "the body must be a FHIR resource (a JSON object)"
    if resource.get("resourceType") != "Patient":
        return f"resourceType must be Patient, not {str(resource.get('resourceType'))[:40]!r}"
    unknown = sorted(k for k in resource if k not in PATIENT_ELEMENTS and not k.startswith("_"))
    if unknown:
        return f"unknown element {unknown[0][:40]!r} in Patient"
    for name in ("identifier", "name", "telecom", "address"):
        value = resource.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, dict) for v in value)
        ):
            return f"Patient.{name} must be an array of objects"
    return None


def record_from_fhir(resource: dict[str, Any]) -> dict[str, Any]:
    """The patient_data fields OpenEMR takes from a (structurally valid) FHIR Patient."""
    data: dict[str, Any] = {}
    official = next((n for n in resource.get("name") or [] if n.get("use") == "official"), None)
    if official is not None:
        family = official.get("family")
        if isinstance(family, str):
            data["lname"] = family
        given = official.get("given")
        if isinstance(given, list) and given:
            data["fname"] = given[0]
            if len(given) > 1:
                data["mname"] = " ".join(str(g) for g in given[1:])
        prefix = official.get("prefix")
        if isinstance(prefix, list) and prefix:
            data["title"] = prefix[0]
    gender = resource.get("gender")
    if isinstance(gender, str):
        data["sex"] = _GENDER_TO_SEX.get(gender, gender)
    if resource.get("birthDate") is not None:
        data["DOB"] = resource["birthDate"]
    for identifier in resource.get("identifier") or []:
        codings = (identifier.get("type") or {}).get("coding") or []
        codes = {c.get("code") for c in codings if isinstance(c, dict)}
        value = identifier.get("value")
        if not isinstance(value, str):
            continue
        if "PT" in codes:
            data["pubpid"] = value
        elif "SS" in codes:
            data["ss"] = value
    for telecom in resource.get("telecom") or []:
        if telecom.get("system") == "email" and isinstance(telecom.get("value"), str):
            data.setdefault("email", telecom["value"])
        elif telecom.get("system") == "phone" and isinstance(telecom.get("value"), str):
            data.setdefault("phone_home", telecom["value"])
    return data


def fhir_resource(patient: Patient) -> dict[str, Any]:
    """The FHIR R4 Patient OpenEMR answers for ``patient`` (id = its uuid)."""
    record = patient.record
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient.uuid,
        "meta": {"versionId": "1"},
    }
    identifiers: list[dict[str, Any]] = []
    if record.get("ss"):
        identifiers.append(
            {
                "use": "official",
                "type": {"coding": [{"system": V2_0203, "code": "SS"}]},
                "system": SSN_SYSTEM,
                "value": record["ss"],
            }
        )
    identifiers.append(
        {
            "use": "official",
            "type": {"coding": [{"system": V2_0203, "code": "PT"}]},
            "system": V2_0203,
            "value": patient.pubpid,
        }
    )
    resource["identifier"] = identifiers
    name: dict[str, Any] = {"use": "official", "family": record.get("lname", "")}
    given = [record[k] for k in ("fname", "mname") if record.get(k)]
    if given:
        name["given"] = given
    if record.get("title"):
        name["prefix"] = [record["title"]]
    resource["name"] = [name]
    sex = str(record.get("sex", "")).casefold()
    resource["gender"] = sex if sex in ("male", "female", "other") else "unknown"
    if record.get("DOB"):
        resource["birthDate"] = record["DOB"]
    telecom = [
        {"system": "phone", "value": record["phone_home"], "use": "home"}
        if key == "phone_home"
        else {"system": "email", "value": record["email"], "use": "home"}
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


def fhir_matches(patient: Patient, name: str, wanted: str) -> bool:
    """One FHIR search parameter (``identifier`` is done by the store: ss or pubpid = value)."""
    record = patient.record
    if name == "_id":
        return patient.uuid == wanted
    if name == "birthdate":
        return str(record.get("DOB", "")) == wanted.removeprefix("eq")
    if name == "identifier":
        value = wanted.split("|", 1)[-1]
        return value in (patient.pubpid, record.get("ss"))
    want = wanted.casefold()
    fields = {"family": ("lname",), "given": ("fname", "mname")}.get(
        name, ("fname", "mname", "lname")
    )
    parts = [p.casefold() for f in fields for p in str(record.get(f, "")).split()]
    return any(p.startswith(want) for p in parts)


def _is_date(text: str) -> bool:
    if len(text) != 10:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True
