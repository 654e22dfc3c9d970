"""Packing a job's workdir: ignore files honoured, links out refused, size capped, bundles reproducible."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from haihe.errors import InvalidInput, PayloadTooLarge
from haihe.workdir import list_files, pack


def _tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.py").write_text("print('hi')\n")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"x" * 1000)
    (root / "notes.tmp").write_text("scratch")
    (root / "keep.tmp").write_text("keep me")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (root / ".gitignore").write_text("*.tmp\n!keep.tmp\n")
    (root / ".haiheignore").write_text("data/\n")


def test_ignore_files_are_honoured(tmp_path: Path) -> None:
    _tree(tmp_path)
    names = [p.as_posix() for p in list_files(tmp_path)]
    assert names == [".gitignore", ".haiheignore", "keep.tmp", "src/train.py"]


def test_bundle_is_reproducible_and_readable(tmp_path: Path) -> None:
    _tree(tmp_path)
    a, b = pack(tmp_path), pack(tmp_path)
    assert a.sha256 == b.sha256 and a.files == 4
    with tarfile.open(fileobj=io.BytesIO(a.data)) as tar:
        assert tar.extractfile("src/train.py").read() == b"print('hi')\n"  # type: ignore[union-attr]


def test_cap_is_enforced_before_upload(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / ".haiheignore").write_text("")
    with pytest.raises(PayloadTooLarge) as err:
        pack(tmp_path, cap=500)
    assert err.value.field == "workdir" and "cap is 500" in err.value.message


def test_links_leaving_the_workdir_are_refused(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "src" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match="links outside"):
        pack(tmp_path)


def test_missing_workdir(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a directory"):
        pack(tmp_path / "nope")
