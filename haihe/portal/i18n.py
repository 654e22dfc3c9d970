"""Message catalogues (en, zh) and the per-request translator; the language is kept in a cookie.

Every user-facing string of the portal lives in ``i18n/<lang>.json`` (flat ``key -> text`` with ``{name}``
placeholders); templates only ever call ``t(<key>)``. A key missing from a catalogue renders as the key itself, and
a unit test checks both catalogues have the same keys and that every key the templates use exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "haihe_lang"
CATALOGUE_DIR = Path(__file__).parent / "i18n"


@cache
def catalogue(lang: str) -> dict[str, str]:
    """The catalogue of ``lang`` (read once per process; catalogues ship inside the package)."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; valid: {', '.join(LANGUAGES)}")
    data: dict[str, str] = json.loads((CATALOGUE_DIR / f"{lang}.json").read_text(encoding="utf-8"))
    return data


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The cookie wins; then the first supported language in Accept-Language; then English."""
    if cookie in LANGUAGES:
        return str(cookie)
    for part in (accept_language or "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return DEFAULT_LANGUAGE


@dataclass(frozen=True)
class Translator:
    lang: str

    def __call__(self, key: str, **params: Any) -> str:
        text = catalogue(self.lang).get(key) or catalogue(DEFAULT_LANGUAGE).get(key) or key
        if params:
            try:
                return text.format(**params)
            except (KeyError, IndexError, ValueError):
                return text
        return text

    def has(self, key: str) -> bool:
        return key in catalogue(self.lang)
