"""The cwsctl library: everything CWS needs, with no CLI concerns (no typer, rich, print or exit).

Modules, one concern each:

- ``errors``: the exception tree and the exit-status table
- ``keys``: generate, load, save and fingerprint RSA keys
- ``signing``: sign/verify bytes; the ``Authorization: CWS-…`` header
- ``verification``: which keys to try and why a signature failed
- ``identity``: the key, username and algorithm to sign as
- ``profile``: ``config.toml``, profiles and pinned CorEMR keys
- ``client``: ``CwsAuth`` (an ``httpx.Auth`` that signs and verifies) and ``CwsClient``
- ``patients``: the patient record schema, validation and normalisation
- ``readers``, ``journal``, ``bulk``, ``report``: resumable bulk loads
- ``audit``, ``doctor``, ``rotation``, ``body_checks``, ``redact``, ``files``

Nothing is imported here: ``cwsctl sign`` loads only the modules it needs.
"""
