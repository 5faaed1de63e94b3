"""Every expected failure of cwsctl, each with the exit status it maps to.

The tree::

    CwsError                      1  (a bug if it escapes as itself)
    ├── InputError                2  bad option, unreadable or invalid input file
    ├── LocalKeyError             3  missing key, bad PEM, wrong passphrase, unsafe permissions
    │   └── ProfileError          3  no such profile, incomplete profile, no pinned server key
    │       └── LoginRequiredError 3  OpenEMR needs a person to sign in (cwsctl oauth login)
    ├── ClientRequestError        4  the server answered 4xx, or 3xx (redirects are not followed
    │                                and a redirect is not a success)
    ├── ServerFailureError        5  the server answered 5xx
    ├── NetworkError              6  connection refused, DNS, TLS, timeout
    └── SignatureError            7  a signature did not verify, or a response carried none

Each error carries a one-line ``message`` and an optional ``hint`` telling the user what to do.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes; the one table documented in README and the man page."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    LOCAL_KEY = 3
    HTTP_4XX = 4
    HTTP_5XX = 5
    NETWORK = 6
    SIGNATURE = 7
    INTERRUPTED = 130


class CwsError(Exception):
    """Base of all expected cwsctl failures."""

    exit_status: ExitStatus = ExitStatus.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(CwsError):
    """An input file or option value cannot be used."""

    exit_status = ExitStatus.USAGE


class LocalKeyError(CwsError):
    """A local key cannot be used: missing, invalid, encrypted without passphrase, or unsafe."""

    exit_status = ExitStatus.LOCAL_KEY


class ProfileError(LocalKeyError):
    """A profile is missing or incomplete."""


class LoginRequiredError(ProfileError):
    """No usable grant without a person: no refresh token (or a refused or revoked one) and no
    system scopes. The hint names ``cwsctl -p PROFILE oauth login``; a bulk run stops on it."""


class ClientRequestError(CwsError):
    """The server rejected the request (HTTP 4xx), or answered with a redirect (3xx), which
    cwsctl does not follow."""

    exit_status = ExitStatus.HTTP_4XX


class ServerFailureError(CwsError):
    """The server failed (HTTP 5xx)."""

    exit_status = ExitStatus.HTTP_5XX


class NetworkError(CwsError):
    """The server could not be reached or did not answer in time."""

    exit_status = ExitStatus.NETWORK


class SignatureError(CwsError):
    """A signature is missing, malformed, from an untrusted signer, or does not verify."""

    exit_status = ExitStatus.SIGNATURE
