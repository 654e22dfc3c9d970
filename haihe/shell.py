"""The one function through which every user value reaches a shell.

Batch scripts, ``--wrap`` commands and launcher lines are rendered as text that bash will parse. Every value a
user controls (names, commands' arguments, environment values, paths) goes through :func:`quote`, and the test
suite attacks it with quotes, ``$()``, backticks, newlines, ``;``, NUL and non-ASCII text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UnquotableValue(ValueError):
    """A value that cannot reach a shell at all (it holds a NUL byte)."""


def quote(value: str) -> str:
    """Return ``value`` as one shell word that bash reads back literally.

    Single quotes stop every expansion; an embedded single quote is closed, escaped and reopened. NUL cannot be
    represented in a C string argument, so it is refused rather than silently truncated.
    """
    if "\x00" in value:
        raise UnquotableValue("value contains a NUL byte")
    if value and _SAFE.fullmatch(value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def join(argv: Iterable[str]) -> str:
    """Quote each argument and join them into one command line."""
    return " ".join(quote(a) for a in argv)


def is_env_name(name: str) -> bool:
    """True when ``name`` is a valid environment variable name (only those may be exported)."""
    return bool(_ENV_NAME.fullmatch(name))


def export_line(name: str, value: str) -> str:
    """``export NAME=value`` with the value quoted; the name is checked, never quoted."""
    if not is_env_name(name):
        raise UnquotableValue(f"invalid environment variable name: {name!r}")
    return f"export {name}={quote(value)}"
