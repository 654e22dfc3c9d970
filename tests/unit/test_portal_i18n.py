"""Message catalogues: both languages have every key, every key the portal uses exists, templates hold no text."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from haihe.portal import i18n
from haihe.portal.web import TEMPLATE_DIR

PORTAL = Path(i18n.__file__).parent
STATIC_KEY = re.compile(r"""\bt\(\s*['"]([a-z0-9_.-]+)['"]""")
DYNAMIC_KEY = re.compile(r"""\bt\(\s*['"]([a-z0-9_.-]+\.)['"]\s*~""")
JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
USER_FACING_ATTRS = {"placeholder", "title", "aria-label", "alt", "value", "label"}
LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def _templates() -> list[Path]:
    return sorted(TEMPLATE_DIR.glob("*.html"))


def _sources() -> list[Path]:
    return _templates() + sorted(PORTAL.rglob("*.py"))


def test_both_catalogues_have_the_same_keys_and_placeholders() -> None:
    en, zh = i18n.catalogue("en"), i18n.catalogue("zh")
    assert set(en) == set(zh), f"only in en: {set(en) - set(zh)}; only in zh: {set(zh) - set(en)}"
    for key in en:
        assert set(re.findall(r"\{(\w+)\}", en[key])) == set(re.findall(r"\{(\w+)\}", zh[key])), key
        assert en[key].strip() and zh[key].strip(), key


def test_every_key_used_exists() -> None:
    en = i18n.catalogue("en")
    used: set[str] = set()
    prefixes: set[str] = set()
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        used |= {k for k in STATIC_KEY.findall(text) if not k.endswith(".")}
        prefixes |= set(DYNAMIC_KEY.findall(text))
    missing = sorted(k for k in used if k not in en)
    assert not missing, f"keys used but not in the catalogues: {missing}"
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in en), f"no catalogue key starts with {prefix!r}"
    assert len(used) > 200  # the scan really found the portal's keys


class _TextFinder(HTMLParser):
    """Collects text nodes and user-facing attribute values left after the Jinja tags are removed."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        kind = dict(attrs).get("type") or ""
        for name, value in attrs:
            if name == "value" and not (tag == "input" and kind in ("submit", "button", "reset")):
                continue  # a form value (hidden, checkbox, option) is data, not text a person reads
            if name in USER_FACING_ATTRS and value and LETTER.search(value):
                self.found.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and LETTER.search(data):
            self.found.append(data.strip())


@pytest.mark.parametrize("path", _templates(), ids=lambda p: p.name)
def test_templates_contain_no_bare_user_facing_text(path: Path) -> None:
    stripped = JINJA.sub("", path.read_text(encoding="utf-8"))
    finder = _TextFinder()
    finder.feed(stripped)
    assert not finder.found, f"{path.name}: text outside the catalogues: {finder.found}"


def test_the_checker_catches_bare_text() -> None:
    finder = _TextFinder()
    finder.feed(JINJA.sub("", '<p>{{ t("x") }} Hello</p><input placeholder="Name"><input type="hidden" value="ok">'
                               '<input type="submit" value="Go">'))
    assert finder.found == ["Hello", "<input placeholder='Name'>", "<input value='Go'>"]


def test_language_negotiation() -> None:
    assert i18n.negotiate("zh", "en-US") == "zh"
    assert i18n.negotiate(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert i18n.negotiate("fr", "fr-FR,de") == "en"
    t = i18n.Translator("zh")
    assert t("jobs.queue_position", pos=3) == "队列第 3 位"
    assert t("no.such.key") == "no.such.key"
