"""The foundation every target shares: profiles and keys, the bounded client, bulk loads and
their journals, exit codes — with no CLI concerns (no typer, rich, print or exit). A target
reaches core as a ``Kind``; core imports only core, the standard library, third parties and the
data-only ``cwsctl.registry``.

Modules, one concern each:

- ``errors``: the exception tree and the exit-status table
- ``text``, ``jsondoc``, ``xml``: terminal-safe text; depth-bounded JSON; a safe, bounded XML parser
- ``files``, ``headers``, ``urls``, ``redact``: atomic files and locks; header and URL rules; PHI
  masking
- ``keys``, ``secrets``: RSA keys and passphrases; passwords and tokens
- ``profile``: ``config.toml``, profiles (one kind per target, from the registry), pinned keys
- ``rotation``: next and retired key files (``keys rotate``, ``keys remove``)
- ``kind``: the ``Kind`` and ``PatientMapping`` each target implements (``registry.kind_of``)
- ``client``, ``verdict``: ``ApiClient``, the bounded, retried, audited request loop, and what a
  signature check of an answer concluded
- ``transport/``: deadlines, proxies, the size-capped transport and pool, network errors
- ``bulk/``: the patient row schema, readers, journal, runner and reports of bulk loads
- ``audit``, ``checks``, ``doctor``: the audit log; a doctor check's vocabulary; ``run_checks``
- ``identity`` (and ``client.CwsClient``): deprecated names, kept for one release

Nothing is imported here: ``cwsctl sign`` loads only the modules it needs.
"""
