"""Zoo references (``org/name``, ``org/name@alias``, ``org/name:version``) and their MLflow registered-model names.

MLflow refuses ``/`` and ``:`` in registered-model names, and a ``/`` inside ``models:/<name>/<version>`` would be
ambiguous anyway. A zoo model ``org/name`` is therefore registered as ``org~name``: ``~`` is an RFC 3986
unreserved character (safe in ``models:/`` URIs, REST paths and query strings without escaping) and can never occur
in an org or model name, so the encoding is one-to-one and ``decode(encode(x)) == x``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from haihe import names
from haihe.errors import InvalidInput

SEPARATOR = "~"
MAX_NAME_LEN = names.MAX_RESOURCE_NAME_LEN

_ALIAS_RE = re.compile(f"^{names.ALIAS}$")
_RESERVED_ALIAS_RE = re.compile(f"^({names.RESERVED_ALIAS})$")
_REF_RE = re.compile(r"^(?P<org>[^/@:]+)/(?P<name>[^/@:]+)(?:@(?P<alias>[^/@:]+)|:(?P<version>[^/@:]+))?$")
_DATASET_REF_RE = re.compile(r"^(?P<org>[^/@]+)/(?P<name>[^/@]+)@v(?P<version>[1-9][0-9]{0,8})$")

STANDARD_ALIASES = ("production", "staging")


def check_name(value: object, field: str) -> str:
    """Validate an org or model name (:func:`haihe.names.check_resource_name`)."""
    return names.check_resource_name(value, field)


def check_alias(value: object, field: str = "alias") -> str:
    if not isinstance(value, str) or not _ALIAS_RE.fullmatch(value):
        raise InvalidInput(
            f"{field} {str(value)[:80]!r} is not allowed: use 1-63 lower-case letters, digits, '_' or '-', "
            "starting with a letter (e.g. 'production', 'staging')",
            field=field,
        )
    if _RESERVED_ALIAS_RE.fullmatch(value):
        raise InvalidInput(f"{field} {value!r} is reserved by MLflow ('latest' and 'v<N>')", field=field)
    return value


def check_version(value: object, field: str = "version") -> int:
    """A model version number (MLflow numbers them from 1); digit strings are accepted."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 9:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 10**9:
        raise InvalidInput(f"{field} must be a whole number from 1", field=field)
    return value


@dataclass(frozen=True)
class ZooRef:
    """A reference to a zoo model, optionally pinned to an alias or a version (never both)."""

    org: str
    name: str
    alias: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        check_name(self.org, "org")
        check_name(self.name, "name")
        if self.alias is not None and self.version is not None:
            raise InvalidInput("a zoo reference names an alias or a version, not both", field="ref")
        if self.alias is not None:
            check_alias(self.alias)
        if self.version is not None:
            check_version(self.version)

    @classmethod
    def parse(cls, text: object, field: str = "ref") -> ZooRef:
        """Parse ``org/name``, ``org/name@alias`` or ``org/name:version``."""
        if not isinstance(text, str) or len(text) > 2 * MAX_NAME_LEN + 80:
            raise InvalidInput(f"{field} must be 'org/name', 'org/name@alias' or 'org/name:version'", field=field)
        match = _REF_RE.fullmatch(text)
        if match is None:
            raise InvalidInput(
                f"{field} {text[:80]!r} is not 'org/name', 'org/name@alias' or 'org/name:version'", field=field
            )
        version = match["version"]
        try:
            return cls(
                org=match["org"],
                name=match["name"],
                alias=match["alias"],
                version=check_version(version, field) if version is not None else None,
            )
        except InvalidInput as exc:
            raise InvalidInput(f"{field}: {exc.message}", field=field) from None

    @property
    def model(self) -> ZooRef:
        """The same model, unpinned."""
        return ZooRef(self.org, self.name)

    @property
    def registered_name(self) -> str:
        return encode(self.org, self.name)

    def pinned(self) -> bool:
        return self.alias is not None or self.version is not None

    def __str__(self) -> str:
        base = f"{self.org}/{self.name}"
        if self.alias is not None:
            return f"{base}@{self.alias}"
        if self.version is not None:
            return f"{base}:{self.version}"
        return base


def as_ref(ref: ZooRef | str, field: str = "ref") -> ZooRef:
    return ref if isinstance(ref, ZooRef) else ZooRef.parse(ref, field)


def encode(org: str, name: str) -> str:
    """The MLflow registered-model name of zoo model ``org/name``."""
    return f"{check_name(org, 'org')}{SEPARATOR}{check_name(name, 'name')}"


def decode(registered_name: str) -> ZooRef | None:
    """The zoo model behind an MLflow registered-model name, or None when the name is not a zoo name."""
    org, sep, name = registered_name.partition(SEPARATOR)
    if not sep:
        return None
    try:
        return ZooRef(org, name)
    except InvalidInput:
        return None


@dataclass(frozen=True)
class DatasetRef:
    """A dataset version ``org/name@v<N>`` (the lineage link from a model version to its training data)."""

    org: str
    name: str
    version: int

    @classmethod
    def parse(cls, text: object, field: str = "dataset") -> DatasetRef:
        match = _DATASET_REF_RE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidInput(
                f"{field} must be a dataset version 'org/name@v<N>', e.g. 'acme/sensors@v3'", field=field
            )
        try:
            return cls(check_name(match["org"], field), check_name(match["name"], field), int(match["version"]))
        except InvalidInput as exc:
            raise InvalidInput(f"{field}: {exc.message}", field=field) from None

    def __str__(self) -> str:
        return f"{self.org}/{self.name}@v{self.version}"
