"""Where a dataset's bytes live in the bucket, and the checks that keep every key inside its dataset's prefix.

::

    <org>/<dataset>/v<N>/<relative path>     the files of version N (immutable once committed)
    <org>/<dataset>/v<N>/manifest.json       the commit marker, written last: no manifest, no version
    <org>/<dataset>/_uploads/<session>.json  open upload sessions (never listed as versions)

Names are checked here, once, and every key is built here, so no other module concatenates user input into a key.
"""

from __future__ import annotations

import re
import unicodedata

from haihe import names
from haihe.errors import InvalidInput

MANIFEST_NAME = "manifest.json"
UPLOADS_DIR = "_uploads"
MAX_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes
MAX_SEGMENT_BYTES = 255  # the usual file-name limit of the node-local file systems we stage onto
MAX_NAME_LEN = names.MAX_RESOURCE_NAME_LEN

_VERSION_DIR_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
_SESSION_RE = re.compile(r"^[0-9a-f]{32}$")


def check_name(value: object, field: str) -> str:
    """Validate an org or dataset name (:func:`haihe.names.check_resource_name`)."""
    return names.check_resource_name(value, field)


def check_version(value: object, field: str = "version") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 10**9:
        raise InvalidInput(f"{field} must be a whole number from 1", field=field)
    return value


def check_session_id(value: object, field: str = "upload_id") -> str:
    if not isinstance(value, str) or not _SESSION_RE.fullmatch(value):
        raise InvalidInput(f"{field} is not an upload id", field=field)
    return value


def check_path(value: object, field: str = "path") -> str:
    """Validate a file's path inside a version: relative, '/'-separated, no '.'/'..' segments, no NUL,
    backslash or control characters, every segment a legal file name, and short enough for the full key."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a non-empty string", field=field)
    shown = repr(value[:80])
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{field} {shown} is not valid UTF-8", field=field) from None
    if "\\" in value:
        raise InvalidInput(f"{field} {shown} contains a backslash; use '/' between directories", field=field)
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidInput(f"{field} {shown} contains NUL or another control character", field=field)
    if value.startswith("/"):
        raise InvalidInput(f"{field} {shown} is absolute; paths are relative to the dataset root", field=field)
    for segment in value.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidInput(f"{field} {shown} has an empty, '.' or '..' segment", field=field)
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidInput(f"{field} {shown} has a name over {MAX_SEGMENT_BYTES} bytes", field=field)
    if value == MANIFEST_NAME:
        raise InvalidInput(f"{field} {MANIFEST_NAME!r} at the root is reserved for the manifest", field=field)
    # the longest prefix a key can have: two names, 'v' + 9 digits, three slashes
    if len(encoded) + 2 * MAX_NAME_LEN + 10 + 3 > MAX_KEY_BYTES:
        raise InvalidInput(f"{field} {shown} is too long (S3 keys are limited to 1024 bytes)", field=field)
    return value


def dataset_prefix(org: str, dataset: str) -> str:
    return f"{check_name(org, 'org')}/{check_name(dataset, 'dataset')}/"


def version_prefix(org: str, dataset: str, version: int) -> str:
    return f"{dataset_prefix(org, dataset)}v{check_version(version)}/"


def file_key(org: str, dataset: str, version: int, path: str) -> str:
    return version_prefix(org, dataset, version) + check_path(path)


def manifest_key(org: str, dataset: str, version: int) -> str:
    return version_prefix(org, dataset, version) + MANIFEST_NAME


def session_key(org: str, dataset: str, session_id: str) -> str:
    return f"{dataset_prefix(org, dataset)}{UPLOADS_DIR}/{check_session_id(session_id)}.json"


def uploads_prefix(org: str, dataset: str) -> str:
    return f"{dataset_prefix(org, dataset)}{UPLOADS_DIR}/"


def parse_version_dir(segment: str) -> int | None:
    """``'v12'`` or ``'v12/'`` → 12; anything else (``_uploads``, ``v01``) → None."""
    match = _VERSION_DIR_RE.fullmatch(segment.rstrip("/"))
    return int(match.group(1)) if match else None
