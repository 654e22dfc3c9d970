"""Settings: env and TOML sources, documented fields, unsafe defaults refused outside development."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from haihe.platform.settings import Settings, describe_settings


def test_default_secret_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="HAIHE_SECRET_KEY"):
        Settings(mode="production")
    with pytest.raises(ValidationError, match="COOKIE_SECURE"):
        Settings(mode="production", secret_key="x" * 40, cookie_secure=False)
    assert Settings(mode="production", secret_key="x" * 40).secure_cookies


def test_env_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "haihe.toml"
    cfg.write_text('mlflow_url = "http://toml:5000"\nmax_body_bytes = 4096\n'
                   '[schedulers]\nray = "ray://127.0.0.1:8265"\n')
    monkeypatch.setenv("HAIHE_CONFIG", str(cfg))
    monkeypatch.setenv("HAIHE_MLFLOW_URL", "http://env:5000")
    s = Settings()
    assert s.mlflow_url == "http://env:5000"
    assert s.max_body_bytes == 4096
    assert s.schedulers == {"ray": "ray://127.0.0.1:8265"}


def test_schedulers_from_json_env_and_default_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAIHE_SCHEDULERS", '{"slurm": "slurm+cli://"}')
    assert Settings().schedulers == {"slurm": "slurm+cli://"}
    with pytest.raises(ValidationError, match="default_scheduler"):
        Settings(default_scheduler="ray")


def test_every_setting_is_documented() -> None:
    rows = describe_settings()
    assert len(rows) >= 15
    assert all(desc for _, _, desc in rows)
    assert all(env.startswith("HAIHE_") for env, _, _ in rows)
