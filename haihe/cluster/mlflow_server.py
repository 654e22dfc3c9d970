"""The local MLflow tracking server: SQLite backend store, artifacts proxied to the S3 server.

Clients talk only to MLflow (``--serve-artifacts``): they need no S3 keys, and runs started inside Ray or
Slurm jobs reach artifacts through the same URL. The S3 keys reach the server through its environment only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from haihe.cluster import firewall
from haihe.cluster.procs import LocalService, ManagedProcess, start_service
from haihe.cluster.unix import service_home


@dataclass
class MlflowServer(LocalService):
    """One ``mlflow server`` process with its database, log and pid under ``home``."""

    home: Path
    port: int
    s3_endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    bucket: str = "mlflow"
    host: str = "127.0.0.1"
    workers: int = 1  # one uvicorn worker: the box has 2 cores and the server is mostly idle
    backend_store_uri: str | None = None  # default: sqlite under home
    user: str | None = None  # run as this account, owning home (mode 700); None: the caller's account

    def __post_init__(self) -> None:
        self.home = Path(self.home)

    # ---- command line (pure) ----
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "mlflow.log"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{self.bucket}/artifacts"

    def store_uri(self) -> str:
        return self.backend_store_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.store_uri(),
            "--artifacts-destination",
            self.artifacts_destination,
            "--serve-artifacts",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(
            {
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
                # else the server forks a job runner with ~7 extra workers (~2.5 GB)
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            }
        )
        # a tracking URI inherited from a test or job environment would be meaningless to the server itself
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def client_env(self) -> dict[str, str]:
        """Environment a client (or a Ray/Slurm job) needs to track runs here."""
        return {"MLFLOW_TRACKING_URI": self.url}

    def _process(self) -> ManagedProcess:
        return ManagedProcess(
            name="mlflow",
            argv=self.argv(),
            log_path=self.log_path,
            pid_path=self.home / "mlflow.pid",
            env=self.env(),
            cwd=self.home,
            user=self.user,
            umask=0o077,  # the tracking database and logs private to the server's account
        )

    # ---- lifecycle ----
    def start(self, timeout: float = 120.0) -> None:
        """Start the server (or reuse a running one) and wait for ``/health``."""
        service_home(self.home, self.user)
        start_service(self._process(), name="mlflow", host=self.host, port=self.port, ready=self.is_ready,
                      timeout=timeout)
        # no authentication of its own: jobs reach tracking only through the platform's proxy
        firewall.reject_from([self.port], gids=firewall.JOB_GROUPS)

    def _answers(self) -> bool:
        """True when the server answers ``GET /health`` with 200."""
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=3.0).status_code == 200
        except httpx.HTTPError:
            return False
