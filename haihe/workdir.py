"""Pack a job's working directory into a tar.gz: honours .gitignore and .haiheignore, refuses links that leave the
directory, and enforces a size cap before anything is uploaded (used by the CLI; pure apart from file reads)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from haihe.errors import InvalidInput, PayloadTooLarge

DEFAULT_CAP = 256 * 1024 * 1024
ALWAYS_IGNORED = (".git/", "__pycache__/", "*.pyc", ".venv/", ".mypy_cache/", ".pytest_cache/")


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str
    files: int
    raw_bytes: int


def _spec(root: Path) -> object:
    import pathspec

    lines = list(ALWAYS_IGNORED)
    for name in (".gitignore", ".haiheignore"):
        f = root / name
        if f.is_file():
            lines += f.read_text(errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def list_files(root: Path) -> list[Path]:
    """Files to pack, relative to ``root``, in a stable order."""
    root = root.resolve()
    if not root.is_dir():
        raise InvalidInput(f"workdir {root} is not a directory", field="workdir")
    spec = _spec(root)
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames
                             if not spec.match_file(f"{(rel_dir / d).as_posix()}/"))  # type: ignore[attr-defined]
        for name in sorted(filenames):
            rel = rel_dir / name
            if spec.match_file(rel.as_posix()):  # type: ignore[attr-defined]
                continue
            full = root / rel
            if full.is_symlink() and not full.resolve().is_relative_to(root):
                raise InvalidInput(f"workdir: {rel} links outside the directory", field="workdir")
            out.append(rel)
    return out


def pack(root: Path, cap: int = DEFAULT_CAP, progress: Callable[[int, int], None] | None = None) -> Bundle:
    """tar.gz of ``root``'s files; refuses (before compressing) when the files add up to more than ``cap``."""
    root = root.resolve()
    files = list_files(root)
    total = sum((root / f).stat().st_size for f in files)
    if total > cap:
        raise PayloadTooLarge(f"workdir {root} holds {total} bytes of files; the cap is {cap} "
                              "(add large data to a dataset, or list it in .haiheignore)", field="workdir")
    buf = io.BytesIO()
    done = 0
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for rel in files:
            info = tar.gettarinfo(str(root / rel), arcname=rel.as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0  # reproducible bundles: same files, same hash, one object in S3
            if info.isreg():
                with open(root / rel, "rb") as fh:
                    tar.addfile(info, fh)
                done += info.size
                if progress:
                    progress(done, total)
            else:
                tar.addfile(info)
    data = buf.getvalue()
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest(), files=len(files), raw_bytes=total)
