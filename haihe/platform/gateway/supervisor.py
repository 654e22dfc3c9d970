"""The endpoint supervisor: moves each endpoint toward its desired generation, one small step per cycle.

Rolling update (blue/green by generation): a new generation is deployed beside the serving one; when it is ready
the gateway switches to it, and the old one keeps running for ``drain_s`` and until its in-flight requests are done,
then it is removed — so a switch fails no request. A serving generation that dies (a Slurm job cancelled behind
the platform's back, an app gone from Ray) is replaced the same way; while nothing can serve, the gateway
answers 503 with the reason. Slurm jobs are renewed before their walltime, with overlap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from haihe.errors import HaiheError
from haihe.jobs.serving.predictor import ServeConfig
from haihe.model_zoo.names import ZooRef
from haihe.platform.endpoints.rows import Endpoint
from haihe.platform.gateway.runtimes import DeployPlan, ServingRuntime
from haihe.platform.models import utcnow

log = logging.getLogger(__name__)

MAX_DEPLOY_FAILURES = 3


def app_name(endpoint_id: int, generation: int) -> str:
    return f"ep{endpoint_id}g{generation}"


def pinned_model(ep: Endpoint) -> str:
    ref = ZooRef.parse(ep.model_ref)
    return f"{ref.org}/{ref.name}:{ep.model_version}"


def plan_for(ep: Endpoint, generation: int, mlflow_url: str, mlflow_token: str = "") -> DeployPlan:
    """``mlflow_url``/``mlflow_token``: the platform's proxy and the endpoint's read-only serving token."""
    config = ServeConfig(model=pinned_model(ep), mlflow_url=mlflow_url, task=ep.task,
                         max_batch_size=ep.max_batch_size, batch_wait_ms=ep.batch_wait_ms,
                         threads=max(1, int(ep.cpus_per_replica)),
                         env={"MLFLOW_TRACKING_TOKEN": mlflow_token} if mlflow_token else {})
    return DeployPlan(org=ep.org.name, endpoint=ep.name, app_name=app_name(ep.id, generation), config=config,
                      min_replicas=max(ep.min_replicas, 1), max_replicas=max(ep.max_replicas, 1),
                      cpus_per_replica=ep.cpus_per_replica, options=dict(ep.options or {}))


def serving_target(ep: Endpoint) -> str | None:
    """What the gateway may call now: the serving generation's target, if it came up and has not died."""
    rec = (ep.serving or {}).get(str(ep.generation))
    if not rec or not rec.get("was_ready") or rec.get("dead"):
        return None
    target = rec.get("target")
    return str(target) if target else None


class Step:
    """One supervisor step for one endpoint (the row is changed in place; the caller commits)."""

    def __init__(self, ep: Endpoint, runtime: ServingRuntime, *, mlflow_url: str, drain_s: float,
                 renew_before_s: float, inflight: Callable[[str], int], now: float | None = None,
                 mlflow_token: str = "") -> None:
        self.ep = ep
        self.rt = runtime
        self.mlflow_url = mlflow_url
        self.mlflow_token = mlflow_token
        self.drain_s = drain_s
        self.renew_before_s = renew_before_s
        self.inflight = inflight
        self.now = time.time() if now is None else now
        self.serving: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (ep.serving or {}).items()}
        self.gen = ep.generation
        self.tg = ep.target_generation
        self.state, self.reason = ep.state, ep.reason

    def run(self) -> None:
        if self.ep.max_replicas == 0:
            self._stop_all()
        else:
            self._watch_active()
            if self.tg > self.gen:
                self._advance()
        self._retire()
        self._save()

    # -- parts ----------------------------------------------------------------------------------------------------
    def _stop_all(self) -> None:
        for rec in self.serving.values():
            self._remove(rec)
        self.serving, self.gen = {}, 0
        self.tg = 0
        if self.state != "stopped":  # keep the reason it was stopped for (scaled to zero, quota exhausted)
            self.state, self.reason = "stopped", "scaled to zero replicas"

    def _watch_active(self) -> None:
        active = self.serving.get(str(self.gen)) if self.gen else None
        if active is None:
            return
        p = self.rt.probe(active)
        if p.record:
            active.update(p.record)
        if p.state == "ready":
            active["was_ready"], active["dead"] = True, False
            if p.target:
                active["target"] = p.target
            if self.tg == self.gen:
                self.state, self.reason = "ready", ""
            self._rescale(active)
            self._renew(active)
        elif p.state == "starting" and self.rt.backend == "ray":
            # Serve is changing replicas (scaling, restarting one): the handle queues requests meanwhile
            self.state, self.reason = "ready", p.reason
        else:
            self.state, self.reason = "degraded", p.reason
            if p.state == "gone" or self.rt.backend != "ray":
                active["dead"] = p.state in ("gone", "failed")
            if active.get("dead") and self.tg == self.gen:
                self.tg = self.gen + 1  # replace it: the next step deploys a successor
                self.reason = f"{p.reason}; starting a replacement"

    def _rescale(self, active: dict[str, Any]) -> None:
        scale = [self.ep.min_replicas, self.ep.max_replicas]
        if active.get("scale") not in (None, scale):
            self.rt.rescale(active, plan_for(self.ep, self.gen, self.mlflow_url, self.mlflow_token))
        active["scale"] = scale

    def _renew(self, active: dict[str, Any]) -> None:
        since, limit = active.get("running_since"), active.get("time_limit_min")
        if since is None or limit is None or self.tg != self.gen:
            return
        if self.now - float(since) >= float(limit) * 60 - self.renew_before_s:
            self.tg = self.gen + 1
            self.reason = "renewing the serving job before its walltime"

    def _advance(self) -> None:
        key = str(self.tg)
        rec = self.serving.get(key)
        active = self.serving.get(str(self.gen)) if self.gen else None
        nothing_serves = active is None or bool(active.get("dead"))
        if rec is None:
            try:
                rec = self.rt.deploy(plan_for(self.ep, self.tg, self.mlflow_url, self.mlflow_token))
            except HaiheError as exc:
                self._failed_attempt(f"deploy failed: {exc.message}", nothing_serves)
                return
            rec["scale"] = [self.ep.min_replicas, self.ep.max_replicas]
            rec["model_version"] = self.ep.model_version
            rec["deployed_at"] = self.now
            self.serving[key] = rec
            if nothing_serves and self.state != "degraded":
                self.state, self.reason = "deploying", f"deploying {pinned_model(self.ep)}"
            return
        p = self.rt.probe(rec)
        if p.record:
            rec.update(p.record)
        if p.state == "ready":
            rec["was_ready"], rec["target"] = True, p.target
            if active is not None:
                active["retire_at"] = self.now + self.drain_s
            self.gen = self.tg
            self.state, self.reason = "ready", ""
            self.ep.options = {**(self.ep.options or {}), "deploy_failures": 0}
        elif p.state == "starting":
            if nothing_serves:
                self.state = "degraded" if self.gen else "deploying"
                self.reason = p.reason
        else:
            self._remove(rec)
            self.serving.pop(key, None)
            self._failed_attempt(p.reason, nothing_serves)

    def _failed_attempt(self, why: str, nothing_serves: bool) -> None:
        failures = int((self.ep.options or {}).get("deploy_failures", 0)) + 1
        self.ep.options = {**(self.ep.options or {}), "deploy_failures": failures}
        if failures < MAX_DEPLOY_FAILURES:
            if nothing_serves:
                self.reason = f"{why} (attempt {failures} of {MAX_DEPLOY_FAILURES}, retrying)"
            return
        self.ep.options = {**self.ep.options, "deploy_failures": 0}
        if nothing_serves:
            self.state, self.reason = "failed", why
            self.tg = self.gen  # give up until the endpoint is updated
        else:
            self.reason = f"update to generation {self.tg} failed: {why}; still serving generation {self.gen}"
            self.tg = self.gen

    def _retire(self) -> None:
        for key, rec in list(self.serving.items()):
            g = int(key)
            if g == self.gen or g == self.tg:
                continue
            rec.setdefault("retire_at", self.now + self.drain_s)
            target = rec.get("target")
            busy = self.inflight(str(target)) if target else 0
            if (rec.get("dead") or float(rec["retire_at"]) <= self.now) and busy == 0:
                self._remove(rec)
                self.serving.pop(key)

    def _remove(self, rec: dict[str, Any]) -> None:
        try:
            self.rt.remove(rec)
        except HaiheError as exc:
            log.warning("removing %s failed: %s", rec, exc.message)

    def _save(self) -> None:
        ep = self.ep
        changed = (ep.serving != self.serving or ep.generation != self.gen or ep.target_generation != self.tg
                   or ep.state != self.state or ep.reason != self.reason)
        if changed:
            ep.serving = self.serving
            ep.generation, ep.target_generation = self.gen, self.tg
            ep.state, ep.reason = self.state, self.reason[:2000]
            ep.updated_at = utcnow()
