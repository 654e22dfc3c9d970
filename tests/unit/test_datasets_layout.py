"""Names, keys and path checks of the dataset layout: nothing a user types can build a key outside its prefix."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haihe.datasets import layout
from haihe.errors import InvalidInput


@pytest.mark.parametrize("name", ["a", "imagenet-1k", "c4.en", "org_2", "x" * 64])
def test_good_names_pass(name: str) -> None:
    assert layout.check_name(name, "dataset") == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "-a", "a-", "_uploads", "a..b", "a/b", "a b", "a;rm -rf", "a$(x)", "a%2F", "..", "x" * 65, "é"],
)
def test_bad_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        layout.check_name(name, "dataset")
    assert err.value.field == "dataset"


@pytest.mark.parametrize(
    "path",
    ["a.txt", "dir/sub/file.bin", "with space.txt", "ünïcode/文件.txt", ".hidden", "a..b", "sub/manifest.json"],
)
def test_good_paths_pass(path: str) -> None:
    assert layout.check_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "non-empty"),
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("a/./b", "'.'"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("a\x7fb", "control"),
        ("x" * 256, "255"),
        ("/".join(["d" * 200] * 5), "too long"),
        ("manifest.json", "reserved"),
        ("a\ud800", "UTF-8"),
    ],
)
def test_bad_paths_are_refused_naming_the_field(path: str, why: str) -> None:
    with pytest.raises(InvalidInput) as err:
        layout.check_path(path, "files[0].path")
    assert err.value.field == "files[0].path"
    assert why in err.value.message


def test_keys() -> None:
    assert layout.file_key("org1", "ds", 3, "a/b.txt") == "org1/ds/v3/a/b.txt"
    assert layout.manifest_key("org1", "ds", 3) == "org1/ds/v3/manifest.json"
    assert layout.session_key("org1", "ds", "0" * 32) == "org1/ds/_uploads/" + "0" * 32 + ".json"
    assert layout.parse_version_dir("v12/") == 12
    assert layout.parse_version_dir("v012") is None
    assert layout.parse_version_dir("_uploads/") is None
    with pytest.raises(InvalidInput):
        layout.file_key("org1", "ds", 0, "a")
    with pytest.raises(InvalidInput):
        layout.session_key("org1", "ds", "../x")


def _assert_inside(path: str) -> None:
    prefix = layout.version_prefix("org", "ds", 1)
    try:
        key = layout.file_key("org", "ds", 1, path)
    except InvalidInput:
        return
    assert key.startswith(prefix)
    assert posixpath.normpath(key) == key  # no '.', '..' or '//' left to resolve
    assert len(key.encode()) <= layout.MAX_KEY_BYTES
    assert key != layout.manifest_key("org", "ds", 1)
    assert "\\" not in key and "\x00" not in key


@settings(max_examples=400, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_no_accepted_path_leaves_the_version_prefix(path: str) -> None:
    _assert_inside(path)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "", "a", "b.c", "/", "\\", "\x00"]), min_size=1, max_size=8))
def test_traversal_like_paths_never_escape(segments: list[str]) -> None:
    _assert_inside("/".join(segments))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_accepted_names_are_plain_words(name: str) -> None:
    try:
        layout.check_name(name, "org")
    except InvalidInput:
        return
    assert "/" not in name and ".." not in name and not name.startswith("_")
    assert name == name.strip() and name.isascii()
