"""The help of every command at 80 columns is exactly the committed golden file."""

from __future__ import annotations

from tests.help_dump import GOLDEN, dump


def test_every_help_page_matches_the_golden_dump():
    fresh = dump()
    committed = GOLDEN.read_text(encoding="utf-8")
    assert fresh.count("### cwsctl") == committed.count("### cwsctl") > 50
    assert fresh == committed, "help changed: run `python -m tests.help_dump --write` if intended"
