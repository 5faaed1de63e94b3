"""`cwsctl demo --kind openehr`: an EHR, a composition written three times, a refused stale
update, and a query, against an in-process openEHR flavour of the sandbox (basic auth on).

The steps run through the same core code as `cwsctl ehr`, `composition` and `query`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

PROFILE = "cdr"
DEMO_USER = "demo-loader"
TEMPLATE_ID = "cwsctl.demo.vital_signs.v1"
Step = Callable[..., None]


def composition(systolic: int) -> bytes:
    """A small canonical-JSON COMPOSITION holding one blood-pressure reading."""
    document = {
        "_type": "COMPOSITION",
        "name": {"_type": "DV_TEXT", "value": "Vital signs"},
        "archetype_node_id": "openEHR-EHR-COMPOSITION.encounter.v1",
        "archetype_details": {
            "archetype_id": {"value": "openEHR-EHR-COMPOSITION.encounter.v1"},
            "template_id": {"value": TEMPLATE_ID},
            "rm_version": "1.0.4",
        },
        "language": {"terminology_id": {"value": "ISO_639-1"}, "code_string": "en"},
        "territory": {"terminology_id": {"value": "ISO_3166-1"}, "code_string": "US"},
        "category": {"value": "event", "defining_code": {"code_string": "433"}},
        "composer": {"_type": "PARTY_SELF"},
        "content": [
            {
                "_type": "OBSERVATION",
                "name": {"value": "Blood pressure"},
                "archetype_node_id": "openEHR-EHR-OBSERVATION.blood_pressure.v2",
                "data": {"systolic": {"magnitude": systolic, "units": "mm[Hg]"}},
            }
        ],
    }
    return json.dumps(document, indent=2).encode() + b"\n"


def run_openehr_demo(step: Step, root: Path, bits: int) -> None:
    """The openEHR steps, each shown with its cwsctl command (``bits`` is unused: no keys)."""
    import secrets

    from cwsctl.core import openehr
    from cwsctl.core.kinds.openehr import (
        OpenEhrClient,
        SecretAuth,
        basic_authorization,
        subject_namespace,
    )
    from cwsctl.core.patients import WALKTHROUGH_EXAMPLE
    from cwsctl.core.profile import Config, Profile, Store
    from cwsctl.core.secrets import store_secret
    from cwsctl.sandbox.faults import Faults
    from cwsctl.sandbox.openehr import OpenEhrSandboxServer

    password = secrets.token_urlsafe(16)
    store = Store(root / "home")
    with OpenEhrSandboxServer(
        root / "sandbox", basic_auth=(DEMO_USER, password), faults=Faults(), access_log=False
    ) as server:
        profile = Profile(
            PROFILE, url=server.base_url, kind="openehr", auth="basic", username=DEMO_USER
        )
        store.save(Config(default_profile=PROFILE, profiles={PROFILE: profile}))
        kept = store_secret(store, PROFILE, "password", password)
        step(
            "Point a profile at the openEHR server (basic auth; the password kept 0600)",
            f"cwsctl profile init {PROFILE} --kind openehr --url {server.base_url} --auth basic "
            f"--username {DEMO_USER} --password-file pw.txt --store-secret",
            secret_file=kept.name,
        )
        subject = str(WALKTHROUGH_EXAMPLE["external_id"])
        namespace = subject_namespace(str(WALKTHROUGH_EXAMPLE["facility"]))
        # The demo's own credentials, whatever CWSCTL_PASSWORD says in the caller's environment.
        auth = SecretAuth(basic_authorization(DEMO_USER, password))
        with OpenEhrClient(auth, base_url=server.base_url) as client:
            ehr = openehr.create_ehr(client, subject, namespace)
            step(
                "Provision the patient's EHR (subject: external id in the facility's namespace)",
                f"cwsctl ehr create --subject-id {subject} --namespace {namespace}",
                ehr_id=ehr.ehr_id,
            )
            created = openehr.create_composition(
                client, ehr.ehr_id, composition(120), template_id=TEMPLATE_ID
            )
            first = created.version_uid
            assert first is not None
            step(
                "Write a composition",
                f"cwsctl composition create {ehr.ehr_id} vitals.json --template-id {TEMPLATE_ID}",
                version=str(first),
            )
            latest = first
            for systolic in (125, 130):
                update = openehr.update_composition(
                    client, ehr.ehr_id, first.object_id, composition(systolic)
                )
                assert update.version_uid is not None
                latest = update.version_uid
                step(
                    "Update it: the latest version is read first and sent as If-Match",
                    f"cwsctl composition update {ehr.ehr_id} {first.object_id} vitals.json",
                    preceding=str(update.preceding),
                    version=str(latest),
                )
            try:
                openehr.update_composition(
                    client, ehr.ehr_id, first.object_id, composition(999), if_match=first
                )
            except openehr.StaleVersionError as refused:
                outcome = f"refused (exit 4): {refused.message}"
            else:
                raise AssertionError("a stale update was accepted: this must never happen")
            step(
                "A stale update (a colleague's change in between) is refused",
                f"cwsctl composition update {ehr.ehr_id} {first.object_id} vitals.json "
                f"--if-match {first}",
                result=outcome,
            )
            query = (
                "SELECT c/uid/value AS uid, c/name/value AS name FROM EHR e "
                "CONTAINS COMPOSITION c WHERE e/ehr_id/value = $ehr_id"
            )
            page = openehr.query_page(client, query, {"ehr_id": ehr.ehr_id})
            step(
                "Query it with AQL",
                f"cwsctl query '{query}' --param ehr_id={ehr.ehr_id}",
                columns=", ".join(page.column_names),
                rows=json.dumps(page.rows),
            )
            history = openehr.composition_history(client, ehr.ehr_id, first.object_id)
            step(
                "Its history: every version kept",
                f"cwsctl composition history {ehr.ehr_id} {first.object_id}",
                versions=", ".join(f"{r.version_uid} ({r.change_type})" for r in history),
            )
        if latest.version != "3":
            raise AssertionError(f"expected version 3, got {latest}")
