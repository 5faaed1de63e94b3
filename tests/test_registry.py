"""cwsctl.registry names every target's pieces as strings: each must exist, and what the shared
commands compute from it (the root listing, the groups' extra commands, option owners) must hold."""

from __future__ import annotations

import inspect

import typer
from typer._click.utils import make_default_short_help

from cwsctl import registry
from cwsctl.cli.app import COMMANDS, SHARED, load_command
from cwsctl.cli.options import option_owners
from cwsctl.core.kind import Kind
from cwsctl.core.profile import KINDS, Profile


def test_root_order_lists_every_command_once():
    names = [*SHARED, *(name for t in registry.TARGETS for name in t.commands)]
    assert sorted(names) == sorted(registry.ROOT_ORDER)
    assert len(set(names)) == len(names)
    assert list(COMMANDS) == list(registry.ROOT_ORDER)


def test_every_target_names_what_exists():
    assert tuple(t.name for t in registry.TARGETS) == KINDS
    for target in registry.TARGETS:
        kind = registry.kind_of(Profile("p", kind=target.name))
        assert isinstance(kind, Kind) and kind.name == target.name
        for entry in [*target.commands.values(), *target.extends.values()]:
            assert registry.resolve(entry.where) is not None, entry
        for hook in (target.keys_rotate, target.profile_init, target.demo):
            if hook:
                assert callable(registry.resolve(hook)), hook
        assert "rotate" in target.keys_rotate
        assert target.sandbox == f"cwsctl.targets.{target.name}.cli.sandbox"


def test_the_if_match_sender_exists():
    assert callable(registry.resolve(registry.REQUEST_IF_MATCH))


def test_rotate_hooks_take_the_same_arguments():
    hooks = {registry.resolve(t.keys_rotate) for t in registry.TARGETS}
    signatures = {str(inspect.signature(hook)) for hook in hooks}
    assert len(signatures) == 1, signatures


def test_group_extensions_are_listed_with_their_summaries():
    for target in registry.TARGETS:
        for path, entry in target.extends.items():
            group_name, name = path.split(" ")
            group = load_command(group_name)
            ctx = typer.Context(group)
            assert name in group.list_commands(ctx), path
            command = group.get_command(ctx, name)
            assert make_default_short_help(command.help, 10_000) == entry.summary, path


def test_extensions_keep_their_place_in_the_group():
    keys = load_command("keys")
    assert keys.list_commands(typer.Context(keys)) == [
        "import",
        "show",
        "export-public",
        "jwks",
        "list",
        "rotate",
        "remove",
    ]
    profile = load_command("profile")
    assert profile.list_commands(typer.Context(profile)) == [
        "init",
        "list",
        "show",
        "use",
        "trust",
    ]


def test_profile_init_options_are_owned_by_targets():
    from cwsctl.cli.commands.profile import init

    owners = option_owners(init)
    assert {owner for _, owner in owners.values()} == set(KINDS)
    assert owners["store_secret"] == ("--store-secret", "openehr")
    assert owners["site"] == ("--site", "openemr")
    assert owners["algorithm"] == ("--algorithm", "cws")
    owner_of = dict(owners.values())
    for param in load_command("profile").commands["init"].params:
        said = next((kind for kind in KINDS if (param.help or "").startswith(kind)), None)
        if said is not None:  # a help text that names a kind: that kind owns the option
            assert owner_of.get(param.opts[0]) == said, param.opts
