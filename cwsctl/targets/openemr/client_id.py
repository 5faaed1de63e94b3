"""What makes an OAuth client id usable, and the guards an OAuth2 command starts with: a client id,
an openemr profile.
"""

from __future__ import annotations

from cwsctl.core.errors import ProfileError
from cwsctl.core.profile import Profile
from cwsctl.core.text import printable
from cwsctl.targets.openemr.settings import OpenEmrSettings

#: The longest OAuth client id cwsctl takes (OpenEMR's are 43 characters; RFC 7591 sets none).
MAX_CLIENT_ID = 255


def client_id_problem(client_id: str) -> str | None:
    """Why ``client_id`` is no usable OAuth client id, or None: the one rule for ``profile init
    --client-id``, ``oauth register --client-id``, a registration answer and a stored id.

    1 to 255 characters of printable ASCII without spaces (RFC 6749's VSCHAR less the space);
    a leading '-' is fine (OpenEMR's ids are base64url and may start with one).
    """
    if not client_id:
        return "it is empty"
    if len(client_id) > MAX_CLIENT_ID:
        return f"it is {len(client_id)} characters long (at most {MAX_CLIENT_ID})"
    for ch in client_id:
        if not "!" <= ch <= "~":
            shown = "a space" if ch == " " else printable(repr(ch))
            return f"it holds {shown} (only printable ASCII without spaces)"
    return None


def require_client_id(profile: Profile) -> str:
    """The profile's client id, or ProfileError naming the command that gets one (or fixes a
    stored id that breaks :func:`client_id_problem`'s rule)."""
    client_id = OpenEmrSettings.of(profile).client_id
    if not client_id:
        raise ProfileError(
            f"profile {profile.name!r} has no OAuth client id",
            hint="register cwsctl with OpenEMR: cwsctl oauth register (or, for a client made in "
            "OpenEMR's admin pages: cwsctl oauth register --client-id ID)",
        )
    problem = client_id_problem(client_id)
    if problem is not None:
        raise ProfileError(
            f"profile {profile.name!r} holds an unusable OAuth client id: {problem}",
            hint="register again (cwsctl oauth register) or record the right one: "
            "cwsctl oauth register --client-id ID",
        )
    return client_id


def require_openemr(profile: Profile) -> None:
    """Refuse a profile of another kind with a hint."""
    if profile.kind != "openemr":
        raise ProfileError(
            f"profile {profile.name!r} is a {profile.kind} profile; OAuth2 is for openemr profiles",
            hint=f"make one: cwsctl profile init NAME --kind openemr --url https://… "
            f"(this is profile {profile.name!r})",
        )
