"""The one quoting function, attacked: whatever the value, bash reads back exactly that value."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haihe import shell

NASTY = [
    "", "plain", "with space", "it's", '"double"', "$(touch /tmp/pwned)", "`id`", "a;b", "a\nb", "a\\b",
    "$HOME", "${IFS}", "!!", "*", "~root", "-n", "名字 😀", "'$(echo x)'", "\t\r", "a'b'c'\"",
]


def _bash_roundtrip(values: list[str]) -> list[str]:
    script = "printf '%s\\0' " + " ".join(shell.quote(v) for v in values)
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    return out.decode("utf-8", "surrogateescape").split("\0")[:-1]


def test_nasty_values_are_literal() -> None:
    assert _bash_roundtrip(NASTY) == NASTY


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))),
                min_size=1, max_size=5))
def test_property_quote_roundtrips_through_bash(values: list[str]) -> None:
    assert _bash_roundtrip(values) == values


def test_nul_is_refused() -> None:
    with pytest.raises(shell.UnquotableValue):
        shell.quote("a\x00b")


def test_export_line_checks_names() -> None:
    assert shell.export_line("GOOD_1", "x y") == "export GOOD_1='x y'"
    for bad in ("1BAD", "A-B", "A B", "$(x)", ""):
        with pytest.raises(shell.UnquotableValue):
            shell.export_line(bad, "v")
