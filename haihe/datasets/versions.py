"""Committed versions: list them, read a manifest, hand out presigned download URLs, delete a version (GC).

A version exists exactly when its ``manifest.json`` does; objects under ``v<N>/`` without one are leftovers of an
unfinished upload and are invisible here.
"""

from __future__ import annotations

from datetime import timedelta

from haihe.datasets import layout
from haihe.datasets.manifest import Manifest
from haihe.datasets.store import ObjectStore, read_all
from haihe.errors import InvalidInput, NotFound


def list_datasets(store: ObjectStore, org: str) -> list[str]:
    """Dataset names that have a prefix under ``org`` (committed or not)."""
    prefix = f"{layout.check_name(org, 'org')}/"
    names = []
    for info in store.list(prefix, recursive=False):
        name = info.key[len(prefix) :].rstrip("/")
        if info.is_dir and name:
            names.append(name)
    return sorted(names)


def committed_versions(store: ObjectStore, org: str, dataset: str) -> list[int]:
    """Version numbers whose manifest exists, ascending."""
    prefix = layout.dataset_prefix(org, dataset)
    candidates = []
    for info in store.list(prefix, recursive=False):
        if info.is_dir:
            number = layout.parse_version_dir(info.key[len(prefix) :])
            if number is not None:
                candidates.append(number)
    found = []
    for number in sorted(candidates):
        try:
            store.stat(layout.manifest_key(org, dataset, number))
        except NotFound:
            continue
        found.append(number)
    return found


def read_manifest(store: ObjectStore, org: str, dataset: str, version: int) -> Manifest:
    """The manifest of a committed version (NotFound if there is none), checked against where it was found."""
    key = layout.manifest_key(org, dataset, version)
    try:
        data = read_all(store, key)
    except NotFound:
        raise NotFound(f"dataset {org}/{dataset} has no version {version}") from None
    manifest = Manifest.from_json(data, source=key)
    if (manifest.org, manifest.dataset, manifest.version) != (org, dataset, version):
        raise InvalidInput(
            f"{key}: the manifest describes {manifest.org}/{manifest.dataset} v{manifest.version}", field=key
        )
    return manifest


def latest_version(store: ObjectStore, org: str, dataset: str) -> int:
    versions = committed_versions(store, org, dataset)
    if not versions:
        raise NotFound(f"dataset {org}/{dataset} has no committed version")
    return versions[-1]


def download_urls(store: ObjectStore, manifest: Manifest, *, expires: timedelta = timedelta(hours=1)) -> dict[str, str]:
    """Presigned GET URL per file path, so a client can pull without S3 credentials (and without the API server
    in the data path)."""
    return {
        entry.path: store.presign(
            "GET", layout.file_key(manifest.org, manifest.dataset, manifest.version, entry.path), expires=expires
        )
        for entry in manifest.files
    }


def delete_version(store: ObjectStore, org: str, dataset: str, version: int) -> int:
    """Delete a version's objects and return how many were removed.

    The manifest goes first, so the version disappears at once and a crash half-way leaves only invisible
    leftovers that a second call removes; incomplete multipart uploads under the prefix are aborted too."""
    prefix = layout.version_prefix(org, dataset, version)
    store.delete([layout.manifest_key(org, dataset, version)])
    for upload in store.multiparts(prefix):
        try:
            upload.abort()
        except NotFound:
            continue
    keys = [info.key for info in store.list(prefix) if not info.is_dir]
    store.delete(keys)
    return len(keys)
