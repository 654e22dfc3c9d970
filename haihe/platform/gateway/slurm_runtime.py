"""Endpoints as Slurm serving jobs: ``python -m haihe.jobs.serving`` on a node, found through the scheduler.

The job prints its address when the model is loaded; the runtime reads it with ``scheduler.endpoint(ref)`` where
the backend implements that hook, else from the job's log through ``scheduler.logs``. A job is *ready* once its
``/healthz`` answers. Requests go through one pooled keep-alive client; a server that cannot be reached is a
503 at once (short connect timeout), never a hang.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx

from haihe import names
from haihe.errors import HaiheError, ServiceUnavailable
from haihe.platform.gateway.runtimes import DeployPlan, Probe, ProbeState
from haihe.schedulers.base import JobState, Launch, Resources, Scheduler
from haihe.schedulers.slurm.accounts import account_name

_LOG_SCAN_BYTES = 256 * 1024


def find_address(scheduler: Scheduler, ref: str) -> str | None:
    """The address a serving job reported: the backend's ``endpoint`` hook, else the marker line in its log."""
    address = scheduler.endpoint(ref)
    if address:
        return address
    offset, text = 0, ""
    while offset < _LOG_SCAN_BYTES:
        chunk = scheduler.logs(ref, offset)
        text += chunk.data
        if not chunk.data or chunk.offset == offset:
            break
        offset = chunk.offset
    return names.serving_address(text)


def serving_command(node_python: str, plan: DeployPlan) -> tuple[str, ...]:
    c = plan.config
    server = ("-m", "haihe.jobs.serving", "--model", c.model, "--mlflow-url", c.mlflow_url,
              "--task", c.task or "", "--max-batch-size", str(c.max_batch_size), "--batch-wait-ms",
              f"{c.batch_wait_ms:g}", "--threads", str(c.threads))
    if plan.options.get("environment"):  # the model's own packages: the server runs in that environment's python
        return (node_python, "-m", "haihe.jobs.runtime.envrun", "--", "python", *server)
    return (node_python, *server)


def _environment_env(plan: DeployPlan) -> dict[str, str]:
    environment = plan.options.get("environment")
    return {"HAIHE_ENVIRONMENT": json.dumps(environment, sort_keys=True)} if environment else {}


class SlurmRuntime:
    backend = "slurm"

    def __init__(self, scheduler: Scheduler, node_python: str, *, time_limit_min: int, connect_timeout_s: float,
                 health: httpx.Client | None = None, http: httpx.AsyncClient | None = None) -> None:
        self.scheduler = scheduler
        self.node_python = node_python
        self.time_limit_min = time_limit_min
        self._health = health or httpx.Client(timeout=connect_timeout_s)
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0))

    def deploy(self, plan: DeployPlan) -> dict[str, Any]:
        opts = plan.options
        time_limit = int(opts.get("time_limit_min") or self.time_limit_min)
        launch = Launch(
            tag=str(uuid.uuid4()),
            name=f"serve-{plan.endpoint}"[:63],
            command=serving_command(self.node_python, plan),
            resources=Resources(cpus_per_task=max(1, math.ceil(plan.cpus_per_replica)),
                                gpus_per_node=int(opts.get("gpus") or 0), time_limit_min=time_limit),
            partition=opts.get("partition") or None,
            # endpoints belong to an org, not a project: the serving job runs on the org's own account
            account=account_name(plan.org),
            # the endpoint creator's Unix account (never root): a model's code runs in the server
            user=opts.get("unix_user") or None,
            env={"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                 **plan.config.env, **_environment_env(plan)},
        )
        ref = self.scheduler.submit(launch)
        return {"ref": ref, "tag": launch.tag, "submitted_at": time.time(), "time_limit_min": time_limit}

    def rescale(self, record: dict[str, Any], plan: DeployPlan) -> None:
        """One job per generation: scaling a Slurm endpoint changes nothing until replicas > 1 are supported."""

    def probe(self, record: dict[str, Any]) -> Probe:
        ref = record["ref"]
        status = self.scheduler.status([ref]).get(ref)
        if status is None:
            return Probe("gone", f"serving job {ref} is unknown to the scheduler")
        if status.state.is_terminal():
            why = f": {status.reason}" if status.reason else ""
            return Probe("gone", f"serving job {ref} ended {status.state.value}{why}")
        if status.state != JobState.RUNNING:
            why = f" ({status.reason})" if status.reason else ""
            return Probe("starting", f"serving job {ref} is {status.state.value}{why}")
        updated = dict(record)
        updated.setdefault("running_since", status.started_at or time.time())
        address = record.get("address") or find_address(self.scheduler, ref)
        if not address:
            return Probe("starting", f"serving job {ref} is loading the model", record=updated)
        updated["address"] = address
        try:
            ok = self._health.get(f"{address}/healthz").status_code == 200
        except httpx.HTTPError as exc:
            ok, why = False, type(exc).__name__
        else:
            why = "health check did not answer 200"
        if ok:
            return Probe("ready", target=address, record=updated)
        state: ProbeState = "failed" if record.get("was_ready") else "starting"
        return Probe(state, f"model server of job {ref} at {address}: {why}", record=updated)

    def remove(self, record: dict[str, Any]) -> None:
        # gone already, or the scheduler is down: the job ends at its walltime anyway
        with contextlib.suppress(HaiheError):
            self.scheduler.cancel(record["ref"])

    def warm(self, target: str, timeout_s: float) -> None:
        """Nothing to prepare: a model server is a plain HTTP address."""

    async def infer(self, target: str, rows: Sequence[Any], timeout_s: float) -> list[Any]:
        payload = {"rows": [r.tolist() if hasattr(r, "tolist") else r for r in rows]}
        try:
            r = await self._http.post(f"{target}/predict", json=payload, timeout=timeout_s)
        except httpx.TimeoutException:
            raise ServiceUnavailable(f"the model did not answer within {timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"model server unreachable ({type(exc).__name__})") from None
        if r.status_code != 200:
            raise ServiceUnavailable(f"model server answered {r.status_code}")
        outputs: list[Any] = r.json()["outputs"]
        return outputs

    def close(self) -> None:
        self._health.close()
