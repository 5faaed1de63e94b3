"""The targets cwsctl knows, as data: each one's kind, profile settings, root commands, commands in
shared groups, `keys rotate` and `profile init` steps, sandbox flavour and demo, as dotted
"module:attr" strings.

Nothing is imported here (strings only: anyone may read the registry, ``cwsctl --help`` included);
a string is imported when it is used (:func:`resolve`). Adding a target means one package under
``cwsctl/targets/`` (its kind and profile settings among its modules), one :class:`Target` in
:data:`TARGETS`, its root commands in :data:`ROOT_ORDER`, and its ``profile init`` option aliases
(``targets/<t>/cli/options.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol


class Entry(NamedTuple):
    """A command and its one-line summary (what ``--help`` lists without importing it)."""

    where: str  # "module:attr": a command function, or a group's typer.Typer ("module:app")
    summary: str  # the first paragraph of the command's help, whitespace collapsed

    @property
    def module(self) -> str:
        """The module that holds the command."""
        return self.where.partition(":")[0]

    @property
    def attr(self) -> str:
        """The command function's name, or "app" for a group."""
        return self.where.partition(":")[2]


class Target(NamedTuple):
    """One EMR API cwsctl talks to, and where each of its pieces lives."""

    name: str  # the profile kind, and the `demo --kind` and `sandbox serve --kind` value
    kind: str  # "module:ATTR" of its cwsctl.core.kind.Kind
    settings: str  # "module:Class" of its profiles' cwsctl.core.profile.ProfileSettings
    commands: dict[str, Entry]  # root commands it owns
    extends: dict[str, Entry]  # commands it adds to shared groups: {"GROUP NAME": …}
    # "module:function" `keys rotate` hands a profile of this kind to, as
    # f(out, store, profile, *, reregister, passphrase_file, timeout, force)
    keys_rotate: str
    # "module:function" `profile init` runs on the profile before saving it, as
    # f(out, profile, timeout) -> the --json document's "discovery" ("" for nothing to run)
    profile_init: str
    sandbox: str  # the module of its `sandbox serve` flavour (build, ready banner)
    demo: str  # "module:function" running its `demo` walkthrough
    # command path -> "module:function" the Typer-free fast path runs (cli/fast.py)
    fast: dict[str, str]


CWS = Target(
    name="cws",
    kind="cwsctl.targets.cws.kind:KIND",
    settings="cwsctl.targets.cws.settings:CwsSettings",
    commands={
        "sign": Entry(
            "cwsctl.targets.cws.cli.signature:sign",
            "Sign a body and print its Authorization header value.",
        ),
        "verify": Entry(
            "cwsctl.targets.cws.cli.signature:verify",
            "Verify a signed body; by default the signature is read from FILE.sig.",
        ),
    },
    extends={
        "profile trust": Entry(
            "cwsctl.targets.cws.cli.trust:trust",
            "Pin CorEMR's public key so responses signed with it are trusted (several allowed, "
            "for rotation).",
        ),
    },
    keys_rotate="cwsctl.targets.cws.cli.keys:rotate",
    profile_init="",
    sandbox="cwsctl.targets.cws.cli.sandbox",
    demo="cwsctl.targets.cws.cli.demo:run_demo",
    fast={
        "sign": "cwsctl.targets.cws.cli.sign_run:sign_command",
        "verify": "cwsctl.targets.cws.cli.sign_run:verify_command",
    },
)

OPENEMR = Target(
    name="openemr",
    kind="cwsctl.targets.openemr.kind:KIND",
    settings="cwsctl.targets.openemr.settings:OpenEmrSettings",
    commands={
        "export": Entry(
            "cwsctl.targets.openemr.cli.export:export",
            "Bulk FHIR export ($export) from an openemr profile into DIR, resumable from cron.",
        ),
        "oauth": Entry(
            "cwsctl.targets.openemr.cli.oauth:app",
            "OAuth2 with OpenEMR for an openemr profile: register the client, get tokens, sign in.",
        ),
    },
    extends={
        "keys jwks": Entry(
            "cwsctl.targets.openemr.cli.keys:jwks",
            "Print the profile's public key(s) as a JWK Set, for OpenEMR client registration.",
        ),
    },
    keys_rotate="cwsctl.targets.openemr.cli.keys:rotate",
    profile_init="cwsctl.targets.openemr.cli.oauth:discover_into",
    sandbox="cwsctl.targets.openemr.cli.sandbox",
    demo="cwsctl.targets.openemr.cli.demo:run_openemr_demo",
    fast={},
)

OPENEHR = Target(
    name="openehr",
    kind="cwsctl.targets.openehr.kind:KIND",
    settings="cwsctl.targets.openehr.settings:OpenEhrSettings",
    commands={
        "query": Entry(
            "cwsctl.targets.openehr.cli.query:query",
            "Run an AQL query on an openehr profile (POST /query/aql) and write its rows.",
        ),
        "ehr": Entry(
            "cwsctl.targets.openehr.cli.ehr:app",
            "openEHR EHRs: create one per subject, show it by id or subject, read and update its "
            "EHR_STATUS.",
        ),
        "composition": Entry(
            "cwsctl.targets.openehr.cli.composition:app",
            "openEHR compositions: create, read (any version), update and delete without ever "
            "overwriting a change you did not see, and list their revision history.",
        ),
        "template": Entry(
            "cwsctl.targets.openehr.cli.template:app",
            "openEHR operational templates (ADL 1.4 OPTs): list, upload (once, before the first "
            "composition that uses one), read as OPT or web template, and example compositions.",
        ),
    },
    extends={},
    # An openehr profile has no key of its own, and rotates as a cws one always has: the check
    # that the server knows the next key says it cannot check without a pinned CorEMR key.
    keys_rotate="cwsctl.targets.cws.cli.keys:rotate",
    profile_init="",
    sandbox="cwsctl.targets.openehr.cli.sandbox",
    demo="cwsctl.targets.openehr.cli.demo:run_openehr_demo",
    fast={},
)

#: Every target, in the order of the `--kind` choices.
TARGETS = (CWS, OPENEMR, OPENEHR)
#: Every target's name (profile kinds, `--kind` choices), in that order.
NAMES = tuple(t.name for t in TARGETS)
#: The kind of a profile that names none (every profile before kinds existed was CorEMR's).
DEFAULT_KIND = CWS.name

#: The order of `cwsctl --help`: commands first, then groups (as Typer lists them); the shared
#: commands (cli/app.py) and every target's `commands` together.
ROOT_ORDER = (
    "keygen",
    "sign",
    "verify",
    "request",
    "query",
    "export",
    "demo",
    "audit",
    "doctor",
    "keys",
    "profile",
    "oauth",
    "ehr",
    "composition",
    "template",
    "patients",
    "sandbox",
)

#: "module:function" `request --if-match` sends with, whatever the profile's kind: openEHR's
#: optimistic lock, quoted, and once more bare where EHRbase 2.0–2.31 refuse the quotes.
REQUEST_IF_MATCH = "cwsctl.targets.openehr.if_match:send_with_if_match"


class _HasKind(Protocol):
    kind: str


def target(name: str) -> Target:
    """The target called ``name`` (a profile kind); KeyError for a name no target has."""
    return {t.name: t for t in TARGETS}[name]


def extensions(group: str) -> dict[str, Entry]:
    """The commands the targets add to the shared group ``group``, by name, in target order."""
    prefix = group + " "
    return {
        name.removeprefix(prefix): entry
        for t in TARGETS
        for name, entry in t.extends.items()
        if name.startswith(prefix)
    }


def resolve(where: str) -> Any:
    """The object a "module:attr" string names (its module is imported only now)."""
    import importlib

    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr)


def kind_of(profile: _HasKind) -> Any:
    """The :class:`cwsctl.core.kind.Kind` of ``profile`` (its module is imported only now); typed
    ``Any`` because the registry imports nothing of cwsctl (core imports the registry)."""
    return resolve(target(profile.kind).kind)
