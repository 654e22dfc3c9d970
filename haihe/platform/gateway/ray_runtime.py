"""Endpoints on Ray Serve: one Serve application per endpoint generation, called through a DeploymentHandle.

The platform process joins the Ray cluster lazily, on the first Ray endpoint (``ray.init(address=<GCS>)`` with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so Ray keeps to loopback like the head does), and starts Serve with its HTTP
proxy on ``PortPlan.serve_http`` so it never takes a port someone else planned for. A handle call skips Serve's
HTTP proxy: it was the fastest path measured here (ENVIRONMENT.md).

Until this process has made one round trip through an app's handle (``warm``, from the endpoint supervisor's
thread), a request goes through Serve's HTTP proxy on the head instead: a restarted API worker answers at once,
while joining the cluster (seconds of CPU) happens beside it. Where that proxy cannot be reached (an API host that
is not the head: the proxy listens on the head's loopback) the request joins the cluster itself, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

from haihe.errors import SchedulerUnavailable, ServiceUnavailable
from haihe.platform.gateway.runtimes import DeployPlan, Probe

log = logging.getLogger(__name__)

_STATUS_TTL_S = 0.5  # while an app deploys, scales or is unhealthy: the supervisor sees changes at once
_STEADY_TTL_S = 5.0  # while every app runs healthy: Serve's status() is costly (its configs are rebuilt and
# pickled on each call: 7 % of a serving API process's CPU when asked every second), and Serve itself replaces a
# failed replica; a failed model call asks again at once


RAY_GCS_PORT = 6379  # Ray's own defaults, for a cluster whose URL does not say
RAY_SERVE_HTTP_PORT = 8000


def serve_addresses(url: str) -> tuple[str, int]:
    """(GCS address, Serve HTTP port) of the Ray cluster ``ray://host:dashboard[?gcs=host:port&serve_port=N]``:
    what the URL says, else Ray's defaults on the dashboard's host (``haihe up``'s head names both)."""
    parsed = urlparse(url)
    if not parsed.hostname:
        raise SchedulerUnavailable(f"cannot tell the Ray cluster's GCS address from {url!r}; "
                                   "add ?gcs=host:port or set HAIHE_GATEWAY_RAY_ADDRESS")
    options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    gcs = options.get("gcs") or f"{parsed.hostname}:{RAY_GCS_PORT}"
    try:
        port = int(options.get("serve_port") or RAY_SERVE_HTTP_PORT)
    except ValueError:
        raise SchedulerUnavailable(f"Ray scheduler URL {url!r}: serve_port must be a port number") from None
    return gcs, port


class RayServeRuntime:
    backend = "ray"

    def __init__(self, gcs_address: str, http_port: int, *, proxy: httpx.AsyncClient | None = None) -> None:
        self.gcs_address = gcs_address
        self.http_port = http_port
        self._lock = threading.Lock()
        self._connected = False
        self._handles: dict[str, Any] = {}
        self._warm: set[str] = set()  # apps whose handle made a round trip in this process
        self._proxy_url = f"http://{gcs_address.rsplit(':', 1)[0]}:{http_port}"
        self._proxy = proxy  # made on first use unless given (tests)
        self._proxy_reachable = True
        self._status: tuple[float, dict[str, Any]] = (0.0, {})

    def connect(self) -> None:
        with self._lock:
            if self._connected:
                return
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # else Ray swaps 127.0.0.1 for eth0's address
            try:
                import ray
                from ray import serve

                if not ray.is_initialized():
                    ray.init(address=self.gcs_address, namespace="haihe-endpoints", log_to_driver=False,
                             logging_level=logging.WARNING)
                serve.start(http_options={"host": "127.0.0.1", "port": self.http_port})
            except Exception as exc:  # ConnectionError, RaySystemError, ...: the cluster is not there
                raise SchedulerUnavailable(f"Ray cluster at {self.gcs_address} unavailable: {exc}") from None
            self._connected = True

    def deploy(self, plan: DeployPlan) -> dict[str, Any]:
        self.connect()
        from ray import serve

        from haihe.jobs.serving.ray_app import Scaling, build_app

        app = build_app(plan.config, Scaling(plan.min_replicas, plan.max_replicas, plan.cpus_per_replica))
        # _run with _blocking=False: returns once the controller has the app; the supervisor watches it come up
        serve._run(app, name=plan.app_name, route_prefix=f"/{plan.app_name}", _blocking=False)
        self._status = (0.0, {})
        return {"app": plan.app_name, "target": plan.app_name}

    def rescale(self, record: dict[str, Any], plan: DeployPlan) -> None:
        """Same app, new replica bounds: Serve applies a scaling-only change in place, without new replicas."""
        self.deploy(DeployPlan(plan.org, plan.endpoint, record["app"], plan.config, plan.min_replicas,
                               plan.max_replicas, plan.cpus_per_replica, plan.options))

    def _statuses(self, name: str) -> dict[str, Any]:
        """Serve's applications, read again unless a recent read holds ``name`` (sooner unless all were steady)."""
        stamp, cached = self._status
        if name in cached and time.monotonic() - stamp < (_STEADY_TTL_S if _steady(cached) else _STATUS_TTL_S):
            return cached
        apps = self._read_statuses()
        self._status = (time.monotonic(), apps)
        return apps

    def _read_statuses(self) -> dict[str, Any]:
        self.connect()
        from ray import serve

        return dict(serve.status().applications)

    def probe(self, record: dict[str, Any]) -> Probe:
        name = record["app"]
        app = self._statuses(name).get(name)
        if app is None:
            return Probe("gone", f"Serve application {name} is not running")
        status = _state(app)
        message = (app.message or "").strip().splitlines()
        detail = message[-1][:500] if message else ""
        replicas = {"replicas": _running_replicas(app)}  # what the endpoint is charged for (endpoint_quota)
        if status == "RUNNING":
            self.handle(name)  # made here, in the supervisor's thread, so a request never waits for it
            return Probe("ready", target=name, record=replicas)
        if status in ("DEPLOYING", "NOT_STARTED"):
            return Probe("starting", f"Serve application {status.lower()}" + (f": {detail}" if detail else ""),
                         record=replicas)
        if status == "DELETING":
            return Probe("gone", f"Serve application {name} is being deleted")
        return Probe("failed", f"Serve application {status}: {detail or 'no message'}")

    def remove(self, record: dict[str, Any]) -> None:
        self.connect()
        from ray import serve

        name = record["app"]
        self._handles.pop(name, None)
        self._warm.discard(name)
        serve.delete(name, _blocking=False)
        self._status = (0.0, {})

    def handle(self, name: str) -> Any:
        """The app's handle (a process that did not deploy it, e.g. a second API worker, joins the cluster first)."""
        h = self._handles.get(name)
        if h is None:
            self.connect()
            from ray import serve

            h = self._handles[name] = serve.get_app_handle(name)
        return h

    def warm(self, target: str, timeout_s: float) -> None:
        """Join the cluster, open the app's handle and make one round trip through it (its router learns the
        replicas on the first call: seconds on a busy node that a client's request would otherwise wait)."""
        handle = self.handle(target)
        handle.stats.remote().result(timeout_s=timeout_s)
        self._warm.add(target)

    async def infer(self, target: str, rows: list[Any], timeout_s: float) -> list[Any]:
        if target not in self._warm and self._proxy_reachable:
            outputs = await self._via_proxy(target, rows, timeout_s)
            if outputs is not None:
                return outputs
        handle: Any = self._handles.get(target)
        if handle is None:
            handle = await asyncio.to_thread(self.handle, target)
        response = handle.predict.remote(rows)
        try:
            result: list[Any] = await asyncio.wait_for(_awaited(response), timeout_s)
        except TimeoutError:
            response.cancel()
            raise ServiceUnavailable(f"the model did not answer within {timeout_s:g}s") from None
        except ServiceUnavailable:
            raise
        except Exception as exc:  # RayTaskError, replica died, app deleted: the SDK's errors stop here
            self._status = (0.0, {})  # the supervisor's next probe asks Serve again
            raise ServiceUnavailable(f"model server error: {type(exc).__name__}") from None
        return result

    async def _via_proxy(self, target: str, rows: list[Any], timeout_s: float) -> list[Any] | None:
        """The rows through Serve's HTTP proxy (``POST /<app>``, the app's own route); None where the proxy is not
        reachable from here or does not know the app, so the caller takes the handle path."""
        if self._proxy is None:
            self._proxy = httpx.AsyncClient(base_url=self._proxy_url, trust_env=False)
        payload = {"rows": [r.tolist() if hasattr(r, "tolist") else r for r in rows]}
        try:
            r = await self._proxy.post(f"/{target}", json=payload, timeout=httpx.Timeout(timeout_s, connect=1.0))
        except (httpx.ConnectError, httpx.ConnectTimeout):
            self._proxy_reachable = False  # not from this host: every later request takes the handle path at once
            return None
        except (TypeError, ValueError):  # rows JSON cannot carry: the handle takes Python objects
            return None
        except httpx.TimeoutException:
            raise ServiceUnavailable(f"the model did not answer within {timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            log.debug("Serve proxy call to %s failed: %s", target, exc)
            return None
        if r.status_code in (404, 503):  # no such route (yet, or any more), or the proxy sheds load: the handle queues
            return None
        if r.status_code != 200:
            raise ServiceUnavailable(f"model server answered {r.status_code}")
        outputs: list[Any] = r.json()["outputs"]
        return outputs

    def stats(self, target: str) -> dict[str, Any]:
        """Per-replica counters of one app: model calls, rows, batch sizes formed, time in the model."""
        self.connect()
        from ray import serve

        h = serve.get_app_handle(target)
        return dict(h.stats.remote().result())

    def close(self) -> None:
        self._handles.clear()
        self._warm.clear()
        self._proxy = None  # its connections close with the event loop


def _state(obj: Any) -> str:
    return str(getattr(obj.status, "value", obj.status))


def _steady(apps: dict[str, Any]) -> bool:
    """Every app RUNNING with every deployment HEALTHY (none deploying, scaling or unhealthy); False for none."""
    return bool(apps) and all(_state(app) == "RUNNING" and all(
        _state(d) == "HEALTHY" for d in (getattr(app, "deployments", None) or {}).values()) for app in apps.values())


def _running_replicas(app: Any) -> int:
    """Replicas of an application's deployments that hold their resources now (Serve's RUNNING replica state)."""
    total = 0
    for deployment in (getattr(app, "deployments", None) or {}).values():
        for state, count in (getattr(deployment, "replica_states", None) or {}).items():
            if str(getattr(state, "value", state)) == "RUNNING":
                total += int(count)
    return total


async def _awaited(response: Any) -> Any:
    return await response
