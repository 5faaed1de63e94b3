"""The vocabulary of a doctor check: one report line, its verdict and exit class, and the
common "GET a path as the profile" check every kind's doctor uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from cwsctl.core.errors import CwsError, ExitStatus

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient


class Check(NamedTuple):
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    exit_status: ExitStatus = ExitStatus.OK

    def to_json(self) -> dict[str, object]:
        """The stable ``--json`` shape of a check."""
        return {
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
            "exit_status": int(self.exit_status),
        }


def passed(name: str, detail: str) -> Check:
    """A check that passed."""
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str, status: ExitStatus) -> Check:
    """A check that failed, with its fix and exit class."""
    return Check(name, False, detail, fix, status)


def worst_exit_status(checks: list[Check]) -> ExitStatus:
    """The highest exit class among failed checks (0 when all passed)."""
    return max((c.exit_status for c in checks if not c.ok), default=ExitStatus.OK)


def request_check(name: str, client: ApiClient, path: str, fix_401: str) -> Check:
    """GET ``path`` as the profile (closing ``client``); pass on a 2xx the kind can trust."""
    from cwsctl.core.errors import SignatureError

    try:
        with client:
            response = client.request("GET", path)
    except SignatureError as exc:
        return failed(
            name,
            exc.message,
            "pin the server's current key (cwsctl profile trust KEY.pem); if it did not change, "
            "the answer was tampered with",
            exc.exit_status,
        )
    except CwsError as exc:
        return failed(name, exc.message, exc.hint or "", exc.exit_status)
    detail = (
        f"GET {path}: {response.status} {response.reason}, {client.trust_description(response)}"
    )
    if response.status == 401:
        return failed(name, f"{detail} ({response.error_message()})", fix_401, ExitStatus.HTTP_4XX)
    if not response.ok:
        status = ExitStatus.HTTP_5XX if response.status >= 500 else ExitStatus.HTTP_4XX
        return failed(
            name,
            detail,
            f"try another harmless path with --path (the server said: {response.error_message()})",
            status,
        )
    return passed(name, detail)
