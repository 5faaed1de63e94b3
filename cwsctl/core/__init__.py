"""The cwsctl library: signed and bearer-token requests to CorEMR (CWS), OpenEMR and openEHR
servers, bulk patient loads and their journals — with no CLI concerns (no typer, rich, print or
exit).

Modules, one concern each:

- ``errors``: the exception tree and the exit-status table
- ``keys``: generate, load, save and fingerprint RSA keys
- ``signing``: sign/verify bytes; the ``Authorization: CWS-…`` header
- ``verification``: which keys to try and why a signature failed
- ``identity``: the key, username and algorithm to sign as
- ``profile``: ``config.toml``, profiles (kind cws, openemr or openehr) and pinned CorEMR keys
- ``kinds``: one module per target server (``cws``, ``openemr``, ``openehr``): its ``httpx.Auth``,
  patient mapping and doctor checks
- ``oauth``, ``jwks``: OpenEMR's OAuth2 (registration, client assertions, tokens, login)
- ``openehr``: openEHR REST (EHRs, compositions, AQL)
- ``exchange``: the bounded transport every request goes through (deadline, size cap)
- ``client``: ``ApiClient``, ``CwsAuth`` (an ``httpx.Auth`` that signs and verifies), ``CwsClient``
- ``patients``: the patient record schema, validation and normalisation
- ``readers``, ``journal``, ``bulk``, ``report``: resumable bulk loads
- ``audit``, ``doctor``, ``rotation``, ``body_checks``, ``redact``, ``files``

Nothing is imported here: ``cwsctl sign`` loads only the modules it needs.
"""
