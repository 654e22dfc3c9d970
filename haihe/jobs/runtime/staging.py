"""Bring a job's inputs onto the node: the dataset version (hash-checked, into the node-local cache) and the code
bundle (``HAIHE_CODE_URI``, a tar.gz unpacked once per node).

Several ranks on a node may call these at once: the datasets cache serialises them with a per-version file lock
(the first downloads, the others wait and reuse), and the code bundle is unpacked under its own lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from haihe.errors import InvalidInput
from haihe.jobs.runtime.contract import RuntimeEnv

log = logging.getLogger(__name__)


def s3_credentials(env: RuntimeEnv) -> Any:
    """The job's credentials provider: temporary credentials from ``HAIHE_STORAGE_CREDENTIALS_URL`` (one provider
    per process, refreshed before expiry), or None to use static keys (a site's own nodes, tests)."""
    if not env.credentials_url:
        return None
    return _broker(env.credentials_url, env.job_token)


@functools.lru_cache(maxsize=4)
def _broker(url: str, token: str) -> Any:
    from haihe.datasets.credentials import BrokerCredentials

    return BrokerCredentials(url, token)


def s3_store(env: RuntimeEnv, bucket: str) -> Any:
    """The datasets library's MinIO-backed ObjectStore for ``bucket`` at ``HAIHE_S3_ENDPOINT``."""
    from haihe.datasets.store import MinioStore

    if not env.s3_endpoint:
        raise InvalidInput("HAIHE_S3_ENDPOINT is not set", field="HAIHE_S3_ENDPOINT")
    credentials = s3_credentials(env)
    if credentials is not None:
        return MinioStore(env.s3_endpoint, "", "", bucket, credentials=credentials)
    return MinioStore(env.s3_endpoint, env.s3_access_key, env.s3_secret_key, bucket)


def stage_dataset(env: RuntimeEnv, *, store: Any = None, local_main: bool = True) -> tuple[Path, str] | None:
    """Stage ``HAIHE_DATASET`` into ``HAIHE_CACHE_DIR``; return (directory, resolved ``org/name@vN``), or None.

    With ``HAIHE_DATASET_MOUNT`` the local main rank also points that path (a symlink) at the staged tree.
    """
    ref = env.dataset_ref
    if ref is None:
        return None
    from haihe.datasets.stage import stage  # pydantic manifests and the S3 client: 0.2 s, only when staging
    from haihe.datasets.versions import latest_version

    store = store if store is not None else s3_store(env, env.datasets_bucket)
    version = ref.version if ref.version is not None else latest_version(store, ref.org, ref.name)
    tree = stage(store, ref.org, ref.name, version, Path(env.cache_dir) / "datasets")
    resolved = f"{ref.org}/{ref.name}@v{version}"
    log.info("dataset %s staged at %s", resolved, tree)
    if env.dataset_mount and local_main:
        try:
            point_at(Path(env.dataset_mount), tree)
        except PermissionError:
            # jobs run as unprivileged accounts: a mount point such as /data may be out of their reach (on Ray the
            # sandbox provides it); the staged tree is always at $HAIHE_DATA_DIR
            log.warning("cannot create the dataset mount point %s as uid %d; use $HAIHE_DATA_DIR (%s)",
                        env.dataset_mount, os.getuid(), tree)
    return tree, resolved


def point_at(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, atomically (a rename over the old link)."""
    if link.exists() and not link.is_symlink():
        if link.is_dir() and not any(link.iterdir()):
            link.rmdir()  # an empty mount point made by someone else: replace it
        else:
            raise InvalidInput(f"HAIHE_DATASET_MOUNT={link} exists and is not a symlink", field="HAIHE_DATASET_MOUNT")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


def stage_code(env: RuntimeEnv, *, store: Any = None) -> Path | None:
    """Download and unpack ``HAIHE_CODE_URI`` (``s3://bucket/key.tar.gz``) once per node; return its directory."""
    from filelock import FileLock

    if not env.code_uri:
        return None
    parts = urlsplit(env.code_uri)
    if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        raise InvalidInput(f"HAIHE_CODE_URI={env.code_uri!r}: expected s3://bucket/key.tar.gz", field="HAIHE_CODE_URI")
    key = parts.path.lstrip("/")
    store = store if store is not None else s3_store(env, parts.netloc)
    root = Path(env.cache_dir) / "code"
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(env.code_uri.encode()).hexdigest()[:32]
    dest = root / digest
    with FileLock(str(root / f"{digest}.lock"), timeout=1800):
        if (dest / ".haihe-complete").exists():
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        work = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
        try:
            archive = work / "bundle.tar.gz"
            stream = store.open(key)
            try:
                with archive.open("wb") as fh:
                    while chunk := stream.read(1 << 20):
                        fh.write(chunk)
            finally:
                stream.close()
            tree = work / "tree"
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tree, filter="data")  # refuses absolute paths, '..' and device files
            (tree / ".haihe-complete").touch()
            os.replace(tree, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("code %s unpacked at %s", env.code_uri, dest)
    return dest
