"""The one seam to a Ray cluster: the dashboard's Jobs/cluster REST API over an injected ``httpx.Client``.

Plain HTTP is as fast as the SDK's ``JobSubmissionClient`` (which wraps the same endpoints) and needs no ray
import in the platform process. Responses are parsed here into small typed records; httpx and HTTP errors are
translated into Haihe's error tree here, so nothing above this module sees an SDK exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from haihe.errors import HaiheError, InvalidInput, NotFound, SchedulerUnavailable

# Short timeouts: a dead head must fail a reconciler cycle in seconds, not hang it.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=2.0, pool=5.0)


class AlreadyExists(HaiheError):
    """Ray refused a submission_id it already holds (the job was submitted before)."""


@dataclass(frozen=True)
class RayJob:
    """One submission job as Ray's ``GET /api/jobs/`` reports it."""

    submission_id: str
    status: str  # PENDING RUNNING STOPPED SUCCEEDED FAILED
    message: str | None = None
    error_type: str | None = None
    start_time_ms: int | None = None  # when Ray accepted it (Ray calls it start_time)
    end_time_ms: int | None = None
    driver_exit_code: int | None = None
    entrypoint: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> RayJob:
        return cls(
            submission_id=str(raw.get("submission_id") or raw.get("job_id") or ""),
            status=str(raw.get("status") or "PENDING"),
            message=raw.get("message"),
            error_type=raw.get("error_type"),
            start_time_ms=raw.get("start_time") or None,
            end_time_ms=raw.get("end_time") or None,
            driver_exit_code=raw.get("driver_exit_code"),
            entrypoint=str(raw.get("entrypoint") or ""),
            metadata=dict(raw.get("metadata") or {}),
        )


@dataclass(frozen=True)
class RayNode:
    node_id: str
    ip: str
    state: str  # ALIVE / DEAD
    is_head: bool
    resources_total: Mapping[str, float]


# node id -> resource -> (used, total), from the autoscaler monitor's load report (refreshed every ~5 s)
Usage = dict[str, dict[str, tuple[float, float]]]


def _last_line(text: str) -> str:
    """Ray returns Python tracebacks as error bodies; the last non-empty line carries the reason."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() not in ("", ".")]
    return lines[-1][:500] if lines else ""


class JobsApi:
    """Typed calls to one Ray dashboard (``http://host:port``)."""

    def __init__(self, base_url: str, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.Client(timeout=DEFAULT_TIMEOUT)

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._client.request(method, self.base_url + path, **kwargs)
        except httpx.TransportError as e:
            raise SchedulerUnavailable(
                f"Ray dashboard at {self.base_url} unreachable: {type(e).__name__}: {e}", component="ray"
            ) from e
        if r.status_code == 404:
            raise NotFound(_last_line(r.text) or f"{path} not found", path=path)
        if r.status_code >= 400:
            reason = _last_line(r.text)
            if "already exists" in reason:
                raise AlreadyExists(reason)
            # The head wraps the job agent's 400 (a bad runtime_env, say) in a 500 with the agent's traceback.
            if r.status_code == 400 or "status code 400" in r.text or "ValueError" in reason:
                raise InvalidInput(f"Ray refused the request: {reason}", field="launch")
            raise SchedulerUnavailable(f"Ray dashboard error {r.status_code}: {reason}", component="ray")
        return r

    # -- jobs -------------------------------------------------------------------------------------------
    def submit(self, body: Mapping[str, Any]) -> str:
        r = self._request("POST", "/api/jobs/", json=dict(body))
        return str(r.json()["submission_id"])

    def get(self, submission_id: str) -> RayJob | None:
        try:
            r = self._request("GET", f"/api/jobs/{submission_id}")
        except NotFound:
            return None
        return RayJob.parse(r.json())

    def list_jobs(self) -> list[RayJob]:
        """Every submission job in one call (driver-only jobs, e.g. Serve's, are left out)."""
        r = self._request("GET", "/api/jobs/")
        return [RayJob.parse(j) for j in r.json() if j.get("type", "SUBMISSION") == "SUBMISSION"]

    def stop(self, submission_id: str) -> bool:
        r = self._request("POST", f"/api/jobs/{submission_id}/stop")
        return bool(r.json().get("stopped"))

    def logs(self, submission_id: str) -> str:
        r = self._request("GET", f"/api/jobs/{submission_id}/logs")
        return str(r.json().get("logs") or "")

    # -- runtime-env packages ---------------------------------------------------------------------------
    def package_exists(self, name: str) -> bool:
        try:
            self._request("GET", f"/api/packages/gcs/{name}")
        except NotFound:
            return False
        return True

    def upload_package(self, name: str, data: bytes) -> None:
        self._request("PUT", f"/api/packages/gcs/{name}", content=data, timeout=httpx.Timeout(120.0, connect=2.0))

    # -- cluster ----------------------------------------------------------------------------------------
    def nodes(self) -> list[RayNode]:
        r = self._request("GET", "/api/v0/nodes", params={"detail": "1", "limit": "10000"})
        rows = r.json()["data"]["result"]["result"]
        return [
            RayNode(
                node_id=str(n["node_id"]),
                ip=str(n.get("node_ip") or ""),
                state=str(n.get("state") or "UNKNOWN"),
                is_head=bool(n.get("is_head_node")),
                resources_total={k: float(v) for k, v in (n.get("resources_total") or {}).items()},
            )
            for n in rows
        ]

    def usage(self) -> Usage:
        """Used/total resources per node; empty until the monitor's first report (seconds after start)."""
        r = self._request("GET", "/api/cluster_status")
        data = r.json().get("data") or {}
        report = ((data.get("clusterStatus") or {}).get("loadMetricsReport")) or {}
        by_node = report.get("usageByNode") or {}
        return {
            node: {res: (float(pair[0]), float(pair[1])) for res, pair in resources.items()}
            for node, resources in by_node.items()
        }
