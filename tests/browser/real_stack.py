"""The portal on REAL services for the browser's end-to-end flow: the API server process (uvicorn) wired to the
session's real Slurm cluster, MLflow server and S3 server, on this session's own port plan.

Endpoints deploy as Slurm-hosted model servers (``python -m haihe.jobs.serving`` under sbatch on the default
``debug`` partition), so no Ray head is needed; their walltime is kept inside that partition's 30-minute limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import ManagedProcess, port_open, wait_until
from haihe.serve import api_process
from tests.browser.conftest import Server
from tests.fixtures.platform import PASSWORD

REPO = Path(__file__).resolve().parents[2]
SERVING_WALLTIME_MIN = 20  # inside the debug partition's MaxTime (30), far beyond the module's run
START_TIMEOUT_S = 120.0  # generous: several engineers share a 2-core host


@dataclass
class RealStack(Server):
    """The browser fixtures' ``Server`` (api, tenant) plus the process behind it."""

    home: Path = Path()
    process: ManagedProcess | None = None


def start_real_stack(home: Path, ports: PortPlan, slurm: Any, s3: Any, mlflow: Any) -> Iterator[RealStack]:
    """Generator for a module fixture: the API on ``ports.api`` wired to Slurm (CLI backend), S3 and MLflow."""
    port = ports.api
    if port_open("127.0.0.1", port):
        raise RuntimeError(f"port {port} of this session's plan is taken: another stack is still running")
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **dict(slurm.env),
           "HAIHE_DATABASE_URL": f"sqlite:///{home / 'haihe.db'}",
           "HAIHE_HOME": str(home),
           "HAIHE_SCHEDULERS": json.dumps({"slurm": slurm.scheduler_url("cli")}),
           "HAIHE_DEFAULT_SCHEDULER": "slurm",
           "HAIHE_RECONCILE_INTERVAL_S": "1",
           "HAIHE_PUBLIC_URL": url,
           "HAIHE_S3_ENDPOINT": s3.endpoint, "HAIHE_S3_ACCESS_KEY": s3.access_key,
           "HAIHE_S3_SECRET_KEY": s3.secret_key,
           "HAIHE_S3_STS_ACCESS_KEY": s3.broker_access_key, "HAIHE_S3_STS_SECRET_KEY": s3.broker_secret_key,
           "HAIHE_MLFLOW_URL": mlflow.url,
           "HAIHE_GATEWAY_SLURM_TIME_LIMIT_MIN": str(SERVING_WALLTIME_MIN),
           "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = api_process("api", port, log_dir=home, env=env, cwd=REPO)
    proc.start()
    try:
        wait_until(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, timeout=START_TIMEOUT_S,
                   what="portal on real services", log_path=proc.log_path, alive=proc.is_running)
        r = httpx.post(url + "/api/v1/setup", json={"username": "root", "password": PASSWORD})
        assert r.status_code == 201, r.text
        token = httpx.post(url + "/api/v1/auth/token", json={"username": "root", "password": PASSWORD}).json()
        stack = RealStack(url, token["token"], home, proc)
        try:
            yield stack
        finally:
            _remove_endpoints(stack)  # cancels their Slurm serving jobs
    finally:
        proc.stop()


def _remove_endpoints(stack: RealStack) -> None:
    r = stack.api("GET", "/api/v1/endpoints")
    if r.status_code != 200:
        return
    for ep in r.json().get("items", []):
        stack.api("DELETE", f"/api/v1/orgs/{ep['org']}/endpoints/{ep['name']}")
