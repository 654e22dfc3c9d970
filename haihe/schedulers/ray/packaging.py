"""Zip a job's working directory into a Ray ``gcs://`` package, named by the hash of its content.

The Jobs REST API only takes remote URIs for ``runtime_env.working_dir``; the SDK uploads local directories
as content-addressed zips through ``PUT /api/packages/gcs/<name>``. We do the same with plain HTTP, so an
unchanged code bundle is uploaded once and every later submit only checks that it exists.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from haihe.errors import InvalidInput, PayloadTooLarge

# Ray's GCS stores a package as one gRPC message (~512 MiB); code bundles are far smaller. Data goes to S3.
MAX_PACKAGE_BYTES = 100 * 2**20
_SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
# Fixed timestamp: the zip's bytes depend only on names and contents, so its hash is stable.
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Package:
    name: str  # _ray_pkg_<sha256>.zip
    data: bytes

    @property
    def uri(self) -> str:
        return f"gcs://{self.name}"


def _files(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        found.extend(Path(dirpath) / f for f in sorted(filenames))
    return found


def package_dir(workdir: str | Path, *, max_bytes: int = MAX_PACKAGE_BYTES) -> Package:
    """Deterministic zip of ``workdir`` (relative paths, fixed timestamps, caches skipped)."""
    root = Path(workdir)
    if not root.is_absolute() or not root.is_dir():
        raise InvalidInput(f"workdir {str(workdir)!r} must be an existing absolute directory", field="workdir")
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in _files(root):
            if path.is_symlink() or not path.is_file():
                continue
            total += path.stat().st_size
            if total > max_bytes:
                raise PayloadTooLarge(
                    f"workdir {root} holds more than {max_bytes // 2**20} MiB; "
                    "put data in a dataset, not the code bundle",
                    field="workdir",
                )
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_EPOCH)
            info.external_attr = (path.stat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:32]
    return Package(name=f"_ray_pkg_{digest}.zip", data=data)
