"""Tests marked ``timing`` never run beside each other under pytest-xdist (``-n``).

Three layers: an ``xdist_group("timing")`` mark on each, for ``--dist loadgroup``; a scheduler
that sends them to one worker as one unit even where loadgroup does not group (pytest 9.2,
pytest-xdist issue #1386: the group is written into a node id pytest no longer reads) — it
finds them by reading the test files, since xdist's controller collects nothing; and, whatever
the scheduler did, a lock shared by the run's workers, held from set-up to teardown.
"""

from __future__ import annotations

import ast
import fcntl
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GROUP = "timing"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timing") is not None:
            item.add_marker(pytest.mark.xdist_group(GROUP))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With ``--dist loadgroup`` (pyproject's addopts): loadgroup, plus the ``timing`` group."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    root = config.rootpath

    class TimingGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, name = nodeid.partition("::")
            if name.split("[", 1)[0] in timing_tests(root / path):
                return GROUP
            return str(super()._split_scope(nodeid))

    return TimingGroupScheduling(config, log)


@functools.cache
def timing_tests(path: Path) -> frozenset[str]:
    """The names of the test functions in ``path`` marked ``timing`` (by a decorator or the
    module's ``pytestmark``), read from the source."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return frozenset()

    def timing(node: ast.expr) -> bool:
        return "pytest.mark.timing" in ast.unparse(node)

    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    tests = [f for f in functions if f.name.startswith("test")]
    everything = any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and timing(n.value)
        for n in tree.body
    )
    return frozenset(f.name for f in tests if everything or any(map(timing, f.decorator_list)))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    """Under xdist, a test marked ``timing`` holds an exclusive lock on a file in the run's
    temporary directory (every worker's basetemp is a folder of it) from set-up to teardown.
    Outermost, so pytest-timeout's clock starts only once the lock is held."""
    basetemp = getattr(item.config.option, "basetemp", None)  # xdist sets the worker's
    alone = item.get_closest_marker("timing") is not None and os.environ.get("PYTEST_XDIST_WORKER")
    if not (alone and basetemp):
        return (yield)
    with open(Path(basetemp).parent / "timing.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return (yield)
