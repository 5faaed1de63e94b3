"""The import graph of cwsctl has no cycle, function-level imports included."""

from __future__ import annotations

import grimp


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


def test_no_import_cycle_anywhere_in_cwsctl():
    graph = grimp.build_graph("cwsctl", include_external_packages=False)
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
