"""The layout's rule holds: import-linter's contracts (pyproject.toml), the per-target rules it
cannot say, and no import cycle anywhere in cwsctl, function-level imports included."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("cws", "openemr", "openehr")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("cwsctl", include_external_packages=False)


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every group of modules that import one another in a circle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_import_linter_contracts_hold(monkeypatch):
    from importlinter import cli

    monkeypatch.chdir(REPO)
    assert cli.lint_imports(no_cache=True, no_logo=True) == 0


def _imports(graph: grimp.ImportGraph, package: str) -> list[tuple[str, str]]:
    """(importer, imported) for every direct import made by a module of ``package``."""
    members = {package, *graph.find_descendants(package)} if package in graph.modules else set()
    return sorted(
        (importer, imported)
        for importer in members
        for imported in graph.find_modules_directly_imported_by(importer)
    )


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("target", TARGETS)
def test_a_sandbox_flavour_never_imports_its_own_targets_client_code(graph, target):
    """The stand-in must not share the client's reading of the server (GUIDE "Targets")."""
    package = f"cwsctl.targets.{target}"
    wrong = [
        (importer, imported)
        for importer, imported in _imports(graph, f"{package}.sandbox")
        if _within(imported, package) and not _within(imported, f"{package}.sandbox")
    ]
    assert wrong == []


@pytest.mark.parametrize("target", TARGETS)
def test_a_targets_library_imports_neither_its_cli_nor_its_sandbox(graph, target):
    package = f"cwsctl.targets.{target}"
    library = [
        (importer, imported)
        for importer, imported in _imports(graph, package)
        if not _within(importer, f"{package}.cli") and not _within(importer, f"{package}.sandbox")
    ]
    wrong = [
        pair
        for pair in library
        if _within(pair[1], f"{package}.cli")
        or _within(pair[1], f"{package}.sandbox")
        or _within(pair[1], "cwsctl.cli")
        or _within(pair[1], "cwsctl.sandbox")
    ]
    assert wrong == []


def test_the_shared_cli_reaches_targets_only_through_their_cli_packages(graph):
    wrong = [
        (importer, imported)
        for importer, imported in _imports(graph, "cwsctl.cli")
        if _within(imported, "cwsctl.targets")
        and not any(_within(imported, f"cwsctl.targets.{t}.cli") for t in TARGETS)
    ]
    assert wrong == []


def test_no_import_cycle_anywhere_in_cwsctl(graph):
    assert len(graph.modules) > 50
    assert strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.b", "a.c", "a.d"):
        graph.add_module(module)
    graph.add_import(importer="a.b", imported="a.c")
    graph.add_import(importer="a.c", imported="a.b")
    graph.add_import(importer="a.d", imported="a.b")
    assert strongly_connected(graph) == [["a.b", "a.c"]]


def test_the_old_python_names_still_work_for_one_release_with_a_warning():
    import warnings

    import pytest

    from cwsctl.core import client, identity
    from cwsctl.targets.cws.client import CwsClient
    from cwsctl.targets.cws.identity import load_identity

    with pytest.warns(DeprecationWarning, match="moved to cwsctl.targets.cws.client.CwsClient"):
        assert client.CwsClient is CwsClient
    with pytest.warns(DeprecationWarning, match="moved to cwsctl.targets.cws.identity"):
        assert identity.load_identity is load_identity
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            _ = identity.nothing_here


def test_no_module_is_over_600_lines():
    sizes = {
        path.relative_to(REPO).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in (REPO / "cwsctl").rglob("*.py")
    }
    assert len(sizes) > 100
    assert {path: lines for path, lines in sizes.items() if lines > 600} == {}
