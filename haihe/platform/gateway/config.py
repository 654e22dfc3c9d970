"""Gateway knobs, read from ``HAIHE_GATEWAY_*`` environment variables (documented in docs/endpoints.md); the
platform's ``Settings.gateway`` holds them, so a process reads its configuration in one place (explicit argument >
environment > default, as for every setting).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewayConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HAIHE_GATEWAY_", extra="ignore")

    rate_per_s: float = Field(100.0, gt=0, description="Default per-key token-bucket refill rate per endpoint.")
    burst: int = Field(200, ge=1, description="Default per-key bucket size (requests allowed back to back).")
    flush_interval_s: float = Field(5.0, gt=0, description="Seconds between metering flushes into the ledger; "
                                    "a crash loses at most this much metering.")
    supervise_interval_s: float = Field(1.0, gt=0, description="Seconds between endpoint supervisor cycles.")
    auth_cache_s: float = Field(1.0, ge=0, description="How long a checked key is trusted without the database "
                                "(so a revocation takes effect within this time).")
    quota_refresh_s: float = Field(5.0, gt=0, description="How often an org's request quota limit is re-read.")
    request_timeout_s: float = Field(60.0, gt=0, description="Longest wait for a model's answer before 503.")
    connect_timeout_s: float = Field(2.0, gt=0, description="Connect timeout to a Slurm-hosted model server.")
    max_rows: int = Field(1024, ge=1, description="Most input rows (batch items) in one inference request.")
    max_body_bytes: int = Field(4 * 2**20, ge=1024, description="Largest inference request body.")
    max_response_bytes: int = Field(32 * 2**20, ge=1024, description="Largest inference response body.")
    drain_s: float = Field(3.0, ge=0, description="How long a replaced generation keeps serving after a switch.")
    ray_address: str = Field("", description="Ray GCS address (host:port). Empty: the Ray scheduler URL's "
                             "?gcs=host:port, else Ray's default port 6379 on the dashboard's host.")
    serve_http_port: int = Field(0, ge=0, description="Ray Serve HTTP proxy port. 0: the Ray scheduler URL's "
                                 "?serve_port=N, else Ray Serve's default 8000.")
    slurm_renew_before_s: float = Field(300.0, ge=0, description="Start a successor Slurm serving job this long "
                                        "before the current one's walltime ends (overlap, so no gap).")
    slurm_time_limit_min: int = Field(24 * 60, ge=1, description="Walltime of each Slurm serving job.")
    quota_window_s: float = Field(3600.0, ge=1, description="Endpoint quota window: deploying or scaling up "
                                  "reserves max_replicas × per-replica GPUs/CPUs for this long; the supervisor "
                                  "charges replica-time and renews the reservation at each window's end.")
    shared_buckets: str = Field("", description="File that holds the per-key token buckets for every gateway "
                                "process on this host (several API workers on one port). Empty: in memory, "
                                "per process.")
    log_payloads: bool = Field(False, description="Log request/response bodies (debugging only; off by default).")
