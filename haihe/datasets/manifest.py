"""The manifest of a dataset version: what files it holds (path, size, sha256) and who made it, validated on load.

The manifest is the version's commit marker (``v<N>/manifest.json``, written last). Loading one that is malformed
raises InvalidInput naming ``manifest.json`` and the field, never a bare pydantic error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from haihe.datasets import layout
from haihe.errors import InvalidInput

MANIFEST_FORMAT = "haihe.dataset/1"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: object, field: str = "sha256") -> str:
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise InvalidInput(f"{field} must be 64 lower-case hex digits", field=field)
    return value


class FileEntry(BaseModel):
    """One file of a version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _as_value_error(layout.check_path, value, "path")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        return _as_value_error(check_sha256, value, "sha256")


class VersionMeta(TypedDict, total=False):
    """What a version says about itself besides its files: given when its upload starts (``Uploads.start``), kept in
    the upload session and written into the manifest (``Manifest.build``). Left out, a field is empty."""

    created_by: str
    description: str
    licence: str
    data_format: str
    schema_hint: dict[str, Any] | None


def meta_fields(meta: VersionMeta) -> dict[str, Any]:
    """``meta`` as the fields of a session or manifest (a missing ``schema_hint`` is ``{}``); a key that is not a
    field of ``VersionMeta`` is a TypeError, as an unknown keyword argument would be."""
    unknown = meta.keys() - VersionMeta.__annotations__.keys()
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    return {**meta, "schema_hint": meta.get("schema_hint") or {}}


class Manifest(BaseModel):
    """A committed version: its files plus descriptive metadata (licence, format and schema hints)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = MANIFEST_FORMAT
    org: str
    dataset: str
    version: int
    files: tuple[FileEntry, ...]
    total_size: int = Field(ge=0)
    created_by: str = ""
    created_at: datetime
    description: str = Field(default="", max_length=10_000)
    licence: str = Field(default="", max_length=200)
    data_format: str = Field(default="", max_length=50)  # hint: "webdataset", "parquet", "raw", ...
    schema_hint: dict[str, Any] = Field(default_factory=dict)
    upload_id: str = ""

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {value!r} (expected {MANIFEST_FORMAT!r})")
        return value

    @field_validator("org", "dataset")
    @classmethod
    def _name(cls, value: str, info: Any) -> str:
        return _as_value_error(layout.check_name, value, info.field_name)

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        return _as_value_error(layout.check_version, value, "version")

    @model_validator(mode="after")
    def _totals(self) -> Manifest:
        seen: set[str] = set()
        for entry in self.files:
            if entry.path in seen:
                raise ValueError(f"path {entry.path!r} is listed twice")
            seen.add(entry.path)
        if sum(entry.size for entry in self.files) != self.total_size:
            raise ValueError("total_size is not the sum of the files' sizes")
        return self

    @classmethod
    def build(
        cls,
        *,
        org: str,
        dataset: str,
        version: int,
        files: list[FileEntry],
        upload_id: str = "",
        created_at: datetime | None = None,
        **meta: Unpack[VersionMeta],
    ) -> Manifest:
        ordered = tuple(sorted(files, key=lambda f: f.path))
        return cls.model_validate(
            {
                "org": org,
                "dataset": dataset,
                "version": version,
                "files": ordered,
                "total_size": sum(f.size for f in ordered),
                "created_at": created_at or datetime.now(UTC),
                "upload_id": upload_id,
                **meta_fields(meta),
            }
        )

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str = layout.MANIFEST_NAME) -> Manifest:
        """Parse and validate; errors name the source file and the first bad field."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{source}: not valid JSON ({exc})", field=source) from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput(_describe(exc, source), field=_first_field(exc, source)) from None


def _as_value_error(check: Callable[[Any, str], Any], value: Any, field: str) -> Any:
    """Run a layout check inside a pydantic validator, so the error keeps its location (``files.3.path``)."""
    try:
        return check(value, field)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


def _first_field(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    loc = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
    return f"{source}:{loc}" if loc else source


def _describe(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{source}: field {loc}: {first['msg']}"
