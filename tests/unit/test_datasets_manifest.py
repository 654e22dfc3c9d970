"""The manifest validates on load and names the file and field of what is wrong."""

from __future__ import annotations

import json

import pytest

from haihe.datasets.manifest import FileEntry, Manifest
from haihe.errors import InvalidInput

SHA = "ab" * 32


def _manifest() -> Manifest:
    return Manifest.build(
        org="org1",
        dataset="ds",
        version=2,
        files=[FileEntry(path="b.txt", size=3, sha256=SHA), FileEntry(path="a/x.bin", size=5, sha256=SHA)],
        created_by="alice",
        description="demo",
        licence="CC-BY-4.0",
        data_format="raw",
        schema_hint={"columns": ["x"]},
    )


def test_round_trip_sorted_with_total() -> None:
    m = _manifest()
    assert [f.path for f in m.files] == ["a/x.bin", "b.txt"]
    assert m.total_size == 8
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.file("b.txt").size == 3


def _broken(**change: object) -> bytes:
    raw = json.loads(_manifest().to_json())
    raw.update(change)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"files": [{"path": "../x", "size": 1, "sha256": SHA}], "total_size": 1}, "files.0.path"),
        ({"files": [{"path": "x", "size": 1, "sha256": "nothex"}], "total_size": 1}, "files.0.sha256"),
        ({"files": [{"path": "x", "size": -1, "sha256": SHA}], "total_size": -1}, "files.0.size"),
        ({"total_size": 99}, "manifest.json"),
        ({"org": "Bad Org"}, "org"),
        ({"version": 0}, "version"),
        ({"format": "other/9"}, "format"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_manifest_names_file_and_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Manifest.from_json(_broken(**change), source="org1/ds/v2/manifest.json")
    assert err.value.message.startswith("org1/ds/v2/manifest.json:")
    assert field in (err.value.field or "")


def test_duplicate_paths_are_refused() -> None:
    entry = {"path": "x", "size": 1, "sha256": SHA}
    with pytest.raises(InvalidInput, match="listed twice"):
        Manifest.from_json(_broken(files=[entry, entry], total_size=2))


def test_not_json() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        Manifest.from_json(b"{nope")
