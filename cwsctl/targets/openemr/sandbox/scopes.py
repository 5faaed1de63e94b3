"""Which scopes the OpenEMR flavour knows, and what a token's scopes let it do on a route.

As OpenEMR does it (``ScopeRepository``, ``ServerScopeListEntity``, ``ResourceScopeEntityList``):

- a scope must be one the server supports, at registration and at the token endpoint, else
  ``invalid_scope``. ``system/*`` scopes exist only with system scopes turned on (⚙
  ``rest_system_scopes_api``), and only read (``.read``/``.rs``) and export ones: there is no
  ``system/…write`` in 7.0.3 or 7.0.4;
- 7.0.4+ also take SMART v2 permission letters (``cruds``) when one server scope covers them
  (``.rs`` or ``.cud``): ``user/Patient.c`` and ``user/Patient.rs`` yes, ``.cruds``/``.crus`` no;
- on a route, the token's role decides the prefix (``system`` → ``system/``, ``users`` →
  ``user/``). 7.0.3 wants the exact string (``user/Patient.write`` to create); 7.0.4+ want a
  permission letter (``c`` create, ``r`` read, ``s`` search) that ``.write`` / ``.read`` or v2
  letters grant.

The resource lists are OpenEMR's (FHIR US Core resources, Standard API resources); the sandbox
serves only Patient, but registering other scopes the real server accepts must work.
"""

from __future__ import annotations

import re
from functools import lru_cache

V703 = "7.0.3"
V704 = "7.0.4"
VERSIONS = (V703, V704)

_BASE = [
    "openid",
    "fhirUser",
    "online_access",
    "offline_access",
    "launch",
    "launch/patient",
    "api:oemr",
    "api:fhir",
    "api:port",
    "profile",
    "name",
    "address",
    "given_name",
    "family_name",
    "nickname",
    "phone",
    "phone_verified",
    "email",
    "email_verified",
]
_SYSTEM_EXTRA = (
    "system/*.$export",
    "system/Patient.$export",
    "system/Group.$export",
    "system/*.$bulkdata-status",
)
_FHIR_READ = [
    "AllergyIntolerance",
    "Appointment",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Coverage",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Binary",
    "Encounter",
    "Goal",
    "Group",
    "Immunization",
    "Location",
    "Medication",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Person",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "ServiceRequest",
    "ValueSet",
    "OperationDefinition",
]
#: The FHIR resources OpenEMR's scopes can name for reading.
FHIR_READ_RESOURCES = tuple(_FHIR_READ)
#: FHIR resources OpenEMR reads but never writes (no ``user/X.write`` scope for them).
_FHIR_READ_ONLY = frozenset(
    {
        "DiagnosticReport",
        "DocumentReference",
        "Binary",
        "Procedure",
        "Provenance",
        "ValueSet",
        "OperationDefinition",
    }
)
_FHIR_WRITE = [resource for resource in _FHIR_READ if resource not in _FHIR_READ_ONLY]
_API_V1 = [
    "patient/patient.read",
    "patient/appointment.read",
    "patient/encounter.read",
    "user/allergy.read",
    "user/allergy.write",
    "user/appointment.read",
    "user/appointment.write",
    "user/dental_issue.read",
    "user/dental_issue.write",
    "user/document.read",
    "user/document.write",
    "user/drug.read",
    "user/employer.read",
    "user/encounter.read",
    "user/encounter.write",
    "user/facility.read",
    "user/facility.write",
    "user/immunization.read",
    "user/insurance.read",
    "user/insurance.write",
    "user/insurance_company.read",
    "user/insurance_company.write",
    "user/insurance_type.read",
    "user/list.read",
    "user/medical_problem.read",
    "user/medical_problem.write",
    "user/medication.read",
    "user/medication.write",
    "user/message.write",
    "user/patient.read",
    "user/patient.write",
    "user/practitioner.read",
    "user/practitioner.write",
    "user/prescription.read",
    "user/prescription.write",
    "user/procedure.read",
    "user/product.read",
    "user/soap_note.read",
    "user/soap_note.write",
    "user/surgery.read",
    "user/surgery.write",
    "user/transaction.read",
    "user/transaction.write",
    "user/user.read",
    "user/version.read",
    "user/vital.read",
    "user/vital.write",
]
_API_V2 = [
    "user/allergy.cruds",
    "user/appointment.cruds",
    "user/encounter.crus",
    "user/facility.crus",
    "user/patient.crus",
    "user/practitioner.crus",
    "user/vital.crus",
    "user/medication.cruds",
]
_V2 = re.compile(r"^(patient|user|system)/([A-Za-z_*]+)\.(c?r?u?d?s?)(\?.*)?$")


@lru_cache(maxsize=8)
def server_scopes(version: str, system_scopes: bool) -> frozenset[str]:
    """Every scope this server supports as written (v1 forms, plus 7.0.4+'s v2 server scopes)."""
    roles = ("patient", "user", "system") if system_scopes else ("patient", "user")
    scopes = set(_BASE)
    if system_scopes:
        scopes.update(_SYSTEM_EXTRA)
    # v1 forms (.read/.write) in every version; 7.0.4+ add the v2 server scopes (.rs/.cud)
    forms = [("read", "write")] + ([("rs", "cud")] if version != V703 else [])
    for read, write in forms:
        scopes.update(f"{role}/{r}.{read}" for role in roles for r in _FHIR_READ)
        scopes.update(f"user/{r}.{write}" for r in _FHIR_WRITE)
    scopes.update(_API_V1)
    if version != V703:
        scopes.update(_API_V2)
    return frozenset(scopes)


def is_supported(scope: str, version: str, system_scopes: bool) -> bool:
    """Whether the server knows ``scope`` (7.0.4+: a v2 form one server scope covers)."""
    known = server_scopes(version, system_scopes)
    if scope in known:
        return True
    if version == V703:
        return False
    match = _V2.match(scope)
    if match is None or not match.group(3) or match.group(4):
        return False
    prefix, resource, letters = match.group(1), match.group(2), match.group(3)
    for candidate in known:
        head, _, tail = candidate.rpartition(".")
        if head == f"{prefix}/{resource}" and set(letters) <= set(tail) and _letters(tail):
            return True
    return False


def unsupported(scopes: list[str], version: str, system_scopes: bool) -> str | None:
    """The first of ``scopes`` the server does not support, or None."""
    return next((s for s in scopes if not is_supported(s, version, system_scopes)), None)


def allows(version: str, role: str, scopes: str, resource: str, need: str) -> bool:
    """Whether a token of ``role`` holding ``scopes`` may do ``need`` (c, r or s) on ``resource``.

    ``resource`` as the route names it: ``Patient`` (FHIR) or ``patient`` (Standard API).
    """
    prefix = "system" if role == "system" else "user"
    held = scopes.split()
    if version == V703:
        wanted = f"{prefix}/{resource}.{'write' if need == 'c' else 'read'}"
        return wanted in held
    for scope in held:
        head, _, tail = scope.partition("?")[0].rpartition(".")
        if head != f"{prefix}/{resource}":
            continue
        if tail == "read":
            granted = {"r", "s"}
        elif tail == "write":
            granted = {"c", "u", "d"}
        elif _letters(tail):
            granted = set(tail)
        else:
            continue
        if need in granted:
            return True
    return False


def _letters(text: str) -> bool:
    """SMART v2 permissions: a non-empty, ordered subset of ``cruds``."""
    return bool(text) and re.fullmatch(r"c?r?u?d?s?", text) is not None


def allows_operation(role: str, scopes: str, resource: str, operation: str) -> bool:
    """Whether a token of ``role`` holds ``{role}/{resource}.{operation}`` (``$export``,
    ``$bulkdata-status``): the exact scope in every version — the operation names its resource,
    so ``system/*.$export`` does not cover ``system/Patient.$export`` (7.0.3 compares strings,
    7.0.4+ ``ScopeEntity::containsScope`` matches resource and operation)."""
    prefix = "system" if role == "system" else "user"
    wanted = f"{prefix}/{resource}.{operation}"
    return any(scope.partition("?")[0] == wanted for scope in scopes.split())
