"""The one Settings class: every knob of the platform, from ``HAIHE_*`` environment variables and a TOML file.

Precedence: explicit arguments > environment (``HAIHE_…``) > the TOML file (``HAIHE_CONFIG`` or
``$HAIHE_HOME/haihe.toml``) > defaults. Defaults are safe for development on one machine; outside development mode
the default secret and insecure cookies are refused at start-up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from haihe.platform.gateway.config import GatewayConfig

DEV_SECRET = "dev-insecure-secret-change-me"


def default_home() -> Path:
    return Path(os.environ.get("HAIHE_HOME") or Path.home() / ".local/share/haihe")


def _config_file() -> Path:
    explicit = os.environ.get("HAIHE_CONFIG")
    return Path(explicit) if explicit else default_home() / "haihe.toml"


class Settings(BaseSettings):
    """Platform settings. Each field's description is the documentation (``haihe config --help`` prints them)."""

    model_config = SettingsConfigDict(env_prefix="HAIHE_", extra="ignore", validate_default=True)

    mode: Literal["development", "production"] = Field(
        "development", description="development allows the built-in secret and plain-HTTP cookies; production does not."
    )
    home: Path = Field(default_factory=default_home, description="State directory of the embedded stack.")
    database_url: str = Field(
        "", description="SQLAlchemy URL. Empty: SQLite (WAL) at $HAIHE_HOME/haihe.db. PostgreSQL: postgresql+psycopg://…"
    )
    secret_key: str = Field(DEV_SECRET, description="Signs sessions and CSRF tokens. Required outside development.")
    public_url: str = Field("http://127.0.0.1:8000", description="Where users reach the API and portal.")

    # services the platform talks to
    s3_endpoint: str = Field("", description="S3/MinIO endpoint URL, e.g. http://127.0.0.1:9000. Empty: none.")
    s3_access_key: str = Field("", description="S3 access key of the platform.")
    s3_secret_key: str = Field("", description="S3 secret key of the platform (never logged).")
    s3_region: str = Field("us-east-1", description="S3 region name used for signing.")
    s3_sts_endpoint: str = Field(
        "", description="STS endpoint that issues jobs' temporary S3 credentials (AssumeRole). Empty: s3_endpoint."
    )
    s3_sts_access_key: str = Field(
        "", description="Access key of the credentials broker: an S3/IAM user (never the root keys) allowed to "
        "AssumeRole, whose policy covers every bucket jobs use. Empty: jobs get no S3 credentials at all (their "
        "runtime's S3 calls fail with exit 6; docs/storage-credentials.md).",
    )
    s3_sts_secret_key: str = Field("", description="Secret key of the credentials broker (never logged).")
    job_credentials_lease_s: int = Field(
        3600, ge=1, description="Default lifetime of a job's temporary S3 credentials; the runtime refreshes them "
        "before they expire. Never beyond the job's walltime + job_credentials_margin_s.",
    )
    job_credentials_margin_s: int = Field(
        600, ge=0, description="Seconds after a job's end (or walltime) during which it may still get or use "
        "storage credentials (last checkpoint and output writes).",
    )
    datasets_bucket: str = Field("haihe-datasets", description="Bucket holding dataset versions.")
    code_bucket: str = Field("haihe-code", description="Bucket holding job code bundles and checkpoints.")
    dataset_retention_days: int = Field(
        7, ge=0, description="Days a deleted dataset is kept (restorable by an admin) before GC removes its objects."
    )
    mlflow_url: str = Field("", description="MLflow tracking server URL. Empty: tracking disabled.")
    schedulers: dict[str, str] = Field(
        default_factory=dict,
        description='Named schedulers by URL, e.g. {"ray": "ray://127.0.0.1:8265", "slurm": "slurm+cli://"}; a '
                    "Ray URL may name its GCS and Serve ports for the gateway (?gcs=host:port&serve_port=N).",
    )
    default_scheduler: str = Field("", description="Name of the scheduler used when a job names none.")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="The inference gateway's knobs "
                                   "(HAIHE_GATEWAY_* variables; docs/endpoints.md).")
    ray_shared_code_orgs: str = Field(
        "*", description="Orgs that may run their own code (entrypoint/workdir jobs) on a shared Ray cluster, "
        "comma-separated; * for all (the embedded default), empty for none: the others run only recipes there "
        "(Ray jobs share one Unix account and are kept apart only by a sandbox; docs/security.md).",
    )
    ray_org_clusters: dict[str, str] = Field(
        default_factory=dict, description='Org → name of a Ray scheduler in HAIHE_SCHEDULERS dedicated to it, e.g. '
        '{"acme": "ray-acme"}: the org\'s Ray jobs go there instead of the shared cluster; no other org may use it.',
    )

    slurm_user: str = Field("", description="Unix user the platform submits Slurm jobs as (associations); "
                            "default: the API process's user.")
    unix_accounts: Literal["local", "site", "none"] | None = Field(
        None, description="Which Unix account a user's Slurm jobs run as. local: the platform creates "
        "hh-<org>-<user> itself (needs root); site: an admin maps each user to an existing account "
        "(`haihe admin users map`); none: as the API process (development only). Default: local in development, "
        "site otherwise.",
    )
    node_python: str = Field(
        default_factory=lambda: sys.executable,
        description="Python on the compute nodes that has Haihe installed (runs python -m haihe.jobs.runtime).",
    )
    container_runtime: Literal["podman", "apptainer", ""] = Field(
        "", description="How Slurm nodes run a job's container image (spec environment.image): podman (rootless) or "
        "apptainer; empty: images are refused at submit.")
    container_args: list[str] = Field(
        default_factory=list, description="Site options for the container runtime, JSON list. podman: options "
        "before `run` (e.g. [\"--runtime\", \"runc\"]) and after it, split by the item \"run\" "
        "(e.g. [\"--runtime\", \"runc\", \"run\", \"--ulimit\", \"nproc=4096:4096\"]); apptainer: options of "
        "`exec`.")
    environment_keep_days: float = Field(
        30.0, ge=0, le=3650, allow_inf_nan=False, description="A job environment (spec environment) that no job "
        "used for this many days is removed from its node's cache by the next job there; 0: never.")
    reconcile_interval_s: float = Field(2.0, ge=0, description="Seconds between reconciler cycles; 0 disables it.")
    maintenance_interval_s: float = Field(
        3600.0, ge=0, description="Seconds between maintenance runs (dataset GC, expired uploads); 0 disables them."
    )
    leader_lease_s: float = Field(
        15.0, ge=1, description="Leader lease of the background work when several API processes share a database: "
        "another process takes over this long after the leader stops renewing (at least 3 reconcile intervals)."
    )

    # API behaviour
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted by JSON routes.")
    token_ttl_hours: int = Field(24 * 7, ge=1, description="Lifetime of tokens issued by `haihe login`.")
    session_ttl_hours: int = Field(12, ge=1, description="Lifetime of a portal session cookie.")
    cookie_secure: bool | None = Field(None, description="Secure flag on cookies; default: on outside development.")
    login_max_failures: int = Field(5, ge=1, description="Failed logins per user and address before throttling.")
    login_lockout_s: int = Field(300, ge=1, description="How long a throttled login stays refused.")
    readiness_timeout_s: float = Field(2.0, gt=0, description="Timeout of each /readyz probe.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        return (init_settings, env_settings, toml)

    @field_validator("schedulers", "ray_org_clusters", mode="before")
    @classmethod
    def _schedulers_from_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            return json.loads(value) if value.strip() else {}
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.mode != "development":
            if self.secret_key == DEV_SECRET or len(self.secret_key) < 32:
                raise ValueError("HAIHE_SECRET_KEY must be set to 32+ random characters outside development mode")
            if self.cookie_secure is False:
                raise ValueError("HAIHE_COOKIE_SECURE=false is refused outside development mode")
            if self.unix_accounts == "none":
                raise ValueError("HAIHE_UNIX_ACCOUNTS=none (jobs run as the API's own user) is refused outside "
                                 "development mode")
        if self.default_scheduler and self.default_scheduler not in self.schedulers:
            raise ValueError(
                f"default_scheduler {self.default_scheduler!r} is not one of the configured schedulers "
                f"({', '.join(sorted(self.schedulers)) or 'none'})"
            )
        for org, name in self.ray_org_clusters.items():
            if not self.schedulers.get(name, "").startswith("ray://"):
                raise ValueError(f"ray_org_clusters[{org!r}] = {name!r} is not a ray:// scheduler in schedulers")
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'haihe.db'}"

    @property
    def effective_unix_accounts(self) -> str:
        return self.unix_accounts or ("local" if self.mode == "development" else "site")

    @property
    def secure_cookies(self) -> bool:
        return self.cookie_secure if self.cookie_secure is not None else self.mode != "development"


def describe_settings() -> list[tuple[str, str, str]]:
    """(env var, default, description) for every setting — the generated documentation."""
    rows = []
    for name, info in Settings.model_fields.items():
        default = "" if info.default_factory is not None else repr(info.default)
        rows.append((f"HAIHE_{name.upper()}", default, info.description or ""))
    return rows
