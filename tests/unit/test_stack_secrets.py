"""Secrets of the local stack: generated once, persisted with mode 600, reused, never shown in a repr."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from haihe.cluster.stack import StackSecrets, load_or_create_secrets
from haihe.errors import InvalidInput


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_run_generates_all_secrets_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "home" / "secrets.json"
    keys = load_or_create_secrets(path)
    assert _mode(path) == 0o600
    stored = json.loads(path.read_text())
    assert stored == {
        "s3_access_key": keys.s3_access_key,
        "s3_secret_key": keys.s3_secret_key,
        "app_secret": keys.app_secret,
        "s3_sts_access_key": keys.s3_sts_access_key,
        "s3_sts_secret_key": keys.s3_sts_secret_key,
    }
    assert keys.s3_sts_access_key != keys.s3_access_key and len(keys.s3_sts_secret_key) >= 32  # the broker user
    # MinIO's rules: access key >= 3 chars, secret >= 8
    assert len(keys.s3_access_key) >= 3
    assert len(keys.s3_secret_key) >= 32
    assert len(keys.app_secret) >= 32


def test_second_run_reuses_the_same_secrets(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    first = load_or_create_secrets(path)
    assert load_or_create_secrets(path) == first


def test_two_homes_get_different_secrets(tmp_path: Path) -> None:
    a = load_or_create_secrets(tmp_path / "a" / "secrets.json")
    b = load_or_create_secrets(tmp_path / "b" / "secrets.json")
    assert a.s3_secret_key != b.s3_secret_key
    assert a.app_secret != b.app_secret


def test_missing_entries_are_added_and_existing_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"s3_access_key": "mykey", "s3_secret_key": "mysecret123"}))
    path.chmod(0o644)
    keys = load_or_create_secrets(path)
    assert (keys.s3_access_key, keys.s3_secret_key) == ("mykey", "mysecret123")
    assert keys.app_secret
    assert json.loads(path.read_text())["app_secret"] == keys.app_secret
    assert _mode(path) == 0o600


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    load_or_create_secrets(path)
    path.chmod(0o644)
    load_or_create_secrets(path)
    assert _mode(path) == 0o600


def test_corrupt_file_is_an_invalid_input_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match=r"secrets\.json"):
        load_or_create_secrets(path)
    assert path.read_text() == "{not json"  # never silently replaced: the old keys still own the data


def test_repr_shows_no_secret(tmp_path: Path) -> None:
    keys = load_or_create_secrets(tmp_path / "secrets.json")
    text = repr(keys) + str(keys)
    for value in (keys.s3_access_key, keys.s3_secret_key, keys.app_secret):
        assert value not in text
    assert isinstance(keys, StackSecrets)
