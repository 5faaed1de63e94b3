"""What the `oauth` commands start with: the openemr profile in use, and its transport check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cwsctl.cli.common import store_and_profile
from cwsctl.cli.output import Output

if TYPE_CHECKING:
    from cwsctl.core.profile import Profile, Store


def openemr_profile(out: Output) -> tuple[Store, Profile]:
    from cwsctl.targets.openemr.client_id import require_openemr

    store, name = store_and_profile(out.settings)
    profile = store.get_profile(name)
    require_openemr(profile)
    return store, profile


def check_transport(profile: Profile, allow_http: bool) -> None:
    from cwsctl.core.urls import check_transport_security

    check_transport_security(profile.url, allow_http=allow_http)
