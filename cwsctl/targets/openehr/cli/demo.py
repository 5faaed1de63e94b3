"""`cwsctl demo --kind openehr`: the steps EHRbase asks for, against the sandbox in EHRbase mode.

A template uploaded first (EHRbase refuses compositions for templates it does not have), an EHR
for the patient, a FLAT composition written and updated twice (the sandbox refuses a quoted
If-Match as EHRbase 2.0–2.31 do: cwsctl retries bare), a stale update refused naming the latest
version, an AQL query and the version history — against an in-process openEHR flavour of the
sandbox with basic auth on, through the same core code as `cwsctl template`, `ehr`, `composition`
and `query`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

PROFILE = "cdr"
DEMO_USER = "demo-loader"
Step = Callable[..., None]
#: What the demo showed, said last.
DONE = "template uploaded, EHR provisioned, FLAT composition versioned, stale update refused, query answered"


def flat_vitals(systolic: int, diastolic: int = 80) -> bytes:
    """A FLAT composition of the shipped vital-signs template: one blood-pressure reading."""
    tree = "vital_signs"
    reading = f"{tree}/blood_pressure:0/any_event:0"
    document = {
        f"{tree}/language|code": "en",
        f"{tree}/language|terminology": "ISO_639-1",
        f"{tree}/territory|code": "US",
        f"{tree}/territory|terminology": "ISO_3166-1",
        f"{tree}/composer|name": DEMO_USER,
        f"{tree}/context/start_time": "2026-12-04T10:00:00Z",
        f"{tree}/context/setting|code": "238",
        f"{tree}/context/setting|value": "other care",
        f"{tree}/context/setting|terminology": "openehr",
        f"{tree}/category|code": "433",
        f"{tree}/category|value": "event",
        f"{tree}/category|terminology": "openehr",
        f"{reading}/time": "2026-12-04T10:00:00Z",
        f"{reading}/systolic|magnitude": systolic,
        f"{reading}/systolic|unit": "mm[Hg]",
        f"{reading}/diastolic|magnitude": diastolic,
        f"{reading}/diastolic|unit": "mm[Hg]",
    }
    return json.dumps(document, indent=2).encode() + b"\n"


def run_openehr_demo(step: Step, root: Path, bits: int) -> str:
    """The openEHR steps, each shown with its cwsctl command (``bits`` is unused: no keys)."""
    import secrets

    from cwsctl.core.bulk.rows import WALKTHROUGH_EXAMPLE
    from cwsctl.core.profile import Config, Profile, Store
    from cwsctl.core.secrets import store_secret
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openehr.answers import StaleVersionError
    from cwsctl.targets.openehr.aql import query_page
    from cwsctl.targets.openehr.auth import SecretAuth, basic_authorization
    from cwsctl.targets.openehr.compositions import (
        composition_history,
        create_composition,
        update_composition,
    )
    from cwsctl.targets.openehr.data import (
        VITAL_SIGNS_FILE,
        VITAL_SIGNS_TEMPLATE_ID,
        vital_signs_opt,
    )
    from cwsctl.targets.openehr.ehr import create_ehr
    from cwsctl.targets.openehr.if_match import sends_bare_if_match
    from cwsctl.targets.openehr.kind import OpenEhrClient
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer
    from cwsctl.targets.openehr.settings import OpenEhrSettings
    from cwsctl.targets.openehr.subject import subject_namespace
    from cwsctl.targets.openehr.templates import upload_template

    template_id = VITAL_SIGNS_TEMPLATE_ID
    password = secrets.token_urlsafe(16)
    store = Store(root / "home")
    with OpenEhrSandboxServer(
        root / "sandbox",
        basic_auth=(DEMO_USER, password),
        if_match="ehrbase",
        faults=Faults(),
        access_log=False,
    ) as server:
        profile = Profile(
            PROFILE,
            url=server.base_url,
            kind="openehr",
            settings=OpenEhrSettings(auth="basic", username=DEMO_USER),
        )
        store.save(Config(default_profile=PROFILE, profiles={PROFILE: profile}))
        kept = store_secret(store, PROFILE, "password", password)
        step(
            "Point a profile at the openEHR server (basic auth; the password kept 0600)",
            f"cwsctl profile init {PROFILE} --kind openehr --url {server.base_url} --auth basic "
            f"--username {DEMO_USER} --password-file pw.txt --store-secret",
            secret_file=kept.name,
            server=f"behaves as EHRbase {server.ehrbase_version}",
        )
        subject = str(WALKTHROUGH_EXAMPLE["external_id"])
        namespace = subject_namespace(str(WALKTHROUGH_EXAMPLE["facility"]))
        # The demo's own credentials, whatever CWSCTL_PASSWORD says in the caller's environment.
        auth = SecretAuth(basic_authorization(DEMO_USER, password))
        with OpenEhrClient(auth, base_url=server.base_url) as client:
            uploaded = upload_template(client, vital_signs_opt(), VITAL_SIGNS_FILE)
            step(
                "Upload the operational template (EHRbase refuses compositions without it: 422)",
                f"cwsctl template upload {VITAL_SIGNS_FILE}",
                template_id=uploaded.template_id,
                outcome=uploaded.outcome,
            )
            ehr = create_ehr(client, subject, namespace)
            step(
                "Provision the patient's EHR (subject: external id in the facility's namespace)",
                f"cwsctl ehr create --subject-id {subject} --namespace {namespace}",
                ehr_id=ehr.ehr_id,
            )
            created = create_composition(
                client, ehr.ehr_id, flat_vitals(120), template_id=template_id, fmt="flat"
            )
            first = created.version_uid
            assert first is not None
            step(
                "Write a composition in FLAT format (?format=FLAT&templateId=…)",
                f"cwsctl composition create {ehr.ehr_id} vitals.flat.json --format flat "
                f"--template-id {template_id}",
                version=str(first),
            )
            latest = first
            for systolic in (125, 130):
                bare_before = sends_bare_if_match(client)
                update = update_composition(
                    client,
                    ehr.ehr_id,
                    first.object_id,
                    flat_vitals(systolic),
                    template_id=template_id,
                    fmt="flat",
                )
                assert update.version_uid is not None
                latest = update.version_uid
                step(
                    "Update it: the latest version is read first and sent as If-Match",
                    f"cwsctl composition update {ehr.ehr_id} {first.object_id} vitals.flat.json "
                    f"--format flat --template-id {template_id}",
                    preceding=str(update.preceding),
                    version=str(latest),
                    if_match=_if_match_story(bare_before, sends_bare_if_match(client)),
                )
            try:
                update_composition(
                    client,
                    ehr.ehr_id,
                    first.object_id,
                    flat_vitals(999),
                    if_match=first,
                    template_id=template_id,
                    fmt="flat",
                )
            except StaleVersionError as refused:
                outcome = f"refused (exit 4): {refused.message}"
            else:
                raise AssertionError("a stale update was accepted: this must never happen")
            step(
                "A stale update (a colleague's change in between) is refused",
                f"cwsctl composition update {ehr.ehr_id} {first.object_id} vitals.flat.json "
                f"--format flat --if-match {first}",
                result=outcome,
                note="EHRbase's 412 names no version: cwsctl read the latest with one GET",
            )
            query = (
                "SELECT c/uid/value AS uid, c/name/value AS name FROM EHR e "
                "CONTAINS COMPOSITION c WHERE e/ehr_id/value = $ehr_id"
            )
            page = query_page(client, query, {"ehr_id": ehr.ehr_id})
            step(
                "Query it with AQL",
                f"cwsctl query '{query}' --param ehr_id={ehr.ehr_id}",
                columns=", ".join(page.column_names),
                rows=json.dumps(page.rows),
            )
            history = composition_history(client, ehr.ehr_id, first.object_id)
            step(
                "Its history: every version kept",
                f"cwsctl composition history {ehr.ehr_id} {first.object_id}",
                versions=", ".join(f"{r.version_uid} ({r.change_type})" for r in history),
            )
        if latest.version != "3":
            raise AssertionError(f"expected version 3, got {latest}")
    return DONE


def _if_match_story(bare_before: bool, bare_after: bool) -> str:
    """What happened to the If-Match of one update, in words."""
    if bare_before:
        return "sent bare at once (this server refused the quoted form before)"
    if bare_after:
        return (
            "sent quoted as the specification says; refused as EHRbase 2.0–2.31 do (400 "
            "'UUID string too large', nothing written); sent again bare, and bare from now on"
        )
    return "sent quoted, as the specification says; accepted"
