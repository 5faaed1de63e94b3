"""An openehr profile's settings: how it authenticates (none, basic as a username, or bearer;
the secret, if any, never lives in config.toml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cwsctl.core.errors import CwsError, InputError
from cwsctl.core.profile import ProfileSettings

#: How an openehr profile authenticates (the secret, if any, never lives in config.toml).
OPENEHR_AUTH = ("none", "basic", "bearer")


def validate_basic_username(username: str, error: type[CwsError] = InputError) -> str:
    """A basic-auth user name cannot hold ':' (it ends the name in the Authorization header)."""
    if ":" in username:
        raise error(
            f"a basic-auth username cannot contain ':' ({username!r})",
            hint="HTTP basic auth separates the user name from the password with ':'",
        )
    return username


@dataclass
class OpenEhrSettings(ProfileSettings):
    """An openEHR REST server reached with ``auth`` none, basic (as ``username``) or bearer."""

    auth: str = "none"
    username: str = ""

    def check(self) -> None:
        """A basic-auth username ends up in a header."""
        if self.auth == "basic":
            validate_basic_username(self.username)

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> OpenEhrSettings:
        """``auth`` and ``username``."""
        return cls(auth=str(table.get("auth", "none")), username=str(table.get("username", "")))

    def to_toml(self) -> dict[str, Any]:
        """``auth``, and ``username`` for basic auth."""
        table: dict[str, Any] = {"auth": self.auth}
        return {**table, "username": self.username} if self.auth == "basic" else table

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], previous: Mapping[str, Any]
    ) -> OpenEhrSettings:
        """``--auth`` and ``--username``, else the previous ones."""
        username = options["username"]
        return cls(
            auth=options["auth"] or str(previous.get("auth", "none")),
            username=username if username is not None else str(previous.get("username", "")),
        )
