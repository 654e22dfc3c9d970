"""RayScheduler: Haihe's scheduler protocol over the Ray Jobs API (``ray://host:dashboard_port``).

The platform's tag is Ray's ``submission_id``, so a second submit of the same tag finds the first job instead
of starting another, and ``find`` after a crash is a lookup in the one ``list`` call. Status of every job is
that one call per reconciler cycle. What Ray cannot do is declared in ``UNSUPPORTED``; walltime, which Ray
does not enforce, is enforced inside the job (see translate.entrypoint) with a platform-side backstop in
haihe.schedulers.walltime, run by the reconciler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx

from haihe.errors import Conflict, InvalidInput, NotFound, Unsupported
from haihe.schedulers.base import (
    BaseScheduler,
    ClusterInfo,
    Feature,
    JobState,
    JobStatus,
    Launch,
    Launcher,
    LogChunk,
    NodeInfo,
    Partition,
)
from haihe.schedulers.ray import translate
from haihe.schedulers.ray.jobs_api import DEFAULT_TIMEOUT, AlreadyExists, JobsApi, RayNode, Usage
from haihe.schedulers.ray.packaging import package_dir

log = logging.getLogger(__name__)


class Capacity:
    """Total and free CPU/GPU of the cluster, from the autoscaler's load report (one HTTP call)."""

    def __init__(self, usage: Usage) -> None:
        self.total: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
        self.free: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
        for resources in usage.values():
            for key in ("CPU", "GPU"):
                used, total = resources.get(key, (0.0, 0.0))
                self.total[key] += total
                self.free[key] += max(total - used, 0.0)

    @property
    def known(self) -> bool:
        return self.total["CPU"] > 0

    def text(self) -> str:
        return translate.free_text(self.free, self.total)


class RayScheduler(BaseScheduler):
    """Jobs on one Ray cluster, through its dashboard's REST API."""

    UNSUPPORTED: ClassVar[Mapping[Feature, str]] = {
        Feature.PARTITIONS: "Ray has no partitions: a Ray cluster is one pool (pick another scheduler URL)",
        Feature.QOS: "Ray has no QoS levels or priorities between jobs",
        Feature.ACCOUNTS: "Ray has no accounts; the platform does the accounting (quotas and ledger)",
        Feature.ARRAYS: "Ray Jobs have no arrays; run the sweep on Slurm, where it is one array",
        Feature.REQUEUE: "Ray never requeues or signals before a walltime; resubmit from a checkpoint",
        Feature.LAUNCHER_TORCHRUN: "no torchrun rendezvous across Ray nodes; use the ray_train launcher",
        Feature.LAUNCHER_MPI: "Ray does not launch MPI ranks; use Slurm for MPI jobs",
    }
    # Ray stops no job at its walltime: the entrypoint runs under `timeout` (exit 124 → TIMEOUT), and the
    # reconciler stops what outlives that (haihe.schedulers.walltime; docs/ray.md)
    ENFORCES_WALLTIME: ClassVar[bool] = False

    def __init__(self, url: str, api: JobsApi, *, sandbox: bool = True) -> None:
        super().__init__(url)
        self.api = api
        # Each entrypoint runs in a per-job bubblewrap sandbox (haihe.schedulers.ray.sandbox); only a cluster
        # dedicated to one org may turn it off (``ray://host:8265?sandbox=off``).
        self.sandbox = sandbox
        # Ray cannot stop a job whose supervisor actor is not yet scheduled (PENDING): the stop waits in the
        # actor's queue and runs when it starts. Remember such requests to say so in status.
        self._cancel_requested: set[str] = set()
        self._lock = threading.Lock()

    # -- submit -----------------------------------------------------------------------------------------
    def capacity(self) -> Capacity:
        cap = Capacity(self.api.usage())
        if cap.known:
            return cap
        # A fresh head has no load report for its first seconds: take totals from the node table and call
        # everything free (Ray still queues what does not fit).
        usage = {
            n.node_id: {k: (0.0, n.resources_total.get(k, 0.0)) for k in ("CPU", "GPU")}
            for n in self.api.nodes()
            if n.state == "ALIVE"
        }
        return Capacity(usage)

    def check(self, launch: Launch) -> None:
        super().check(launch)
        translate.check_shape(launch)

    def _admit(self, launch: Launch) -> None:
        """Refuse what can never start here, and ray_train that cannot start now (it would wait forever)."""
        n = translate.need(launch)
        cap = self.capacity()
        if not cap.known:
            return  # no node has registered yet: let Ray queue it
        if n.cpus > cap.total["CPU"] or n.gpus > cap.total["GPU"]:
            raise Unsupported(
                f"{launch.name}: needs {translate.describe_need(n)} but the Ray cluster has "
                f"{cap.total['CPU']:g} CPU and {cap.total['GPU']:g} GPU in total",
                field="resources",
                need_cpus=n.cpus,
                need_gpus=n.gpus,
                total_cpus=cap.total["CPU"],
                total_gpus=cap.total["GPU"],
            )
        if launch.launcher is Launcher.RAY_TRAIN and (n.cpus > cap.free["CPU"] or n.gpus > cap.free["GPU"]):
            # Ray Train's workers would wait forever behind Serve replicas or other jobs holding the CPUs.
            raise Conflict(
                f"{launch.name}: {n.workers} Ray Train workers need {translate.describe_need(n)} now, "
                f"but only {cap.text()} (Serve replicas or other jobs hold the rest); retry when they finish",
                field="resources",
                need_cpus=n.cpus,
                free_cpus=cap.free["CPU"],
                need_gpus=n.gpus,
                free_gpus=cap.free["GPU"],
            )

    def _submit(self, launch: Launch) -> str:
        existing = self.api.get(launch.tag)
        if existing is not None:
            log.info("tag %s already on %s (%s): not submitting again", launch.tag, self.url, existing.status)
            return existing.submission_id
        self._admit(launch)
        uri = None
        if launch.workdir:
            pkg = package_dir(launch.workdir)
            if not self.api.package_exists(pkg.name):
                self.api.upload_package(pkg.name, pkg.data)
            uri = pkg.uri
        try:
            return self.api.submit(translate.submit_body(launch, uri, sandbox=self.sandbox))
        except AlreadyExists:
            return launch.tag  # a concurrent submit of the same tag won the race: same job

    # -- status -----------------------------------------------------------------------------------------
    def _status(self, refs: list[str]) -> dict[str, JobStatus]:
        jobs = {j.submission_id: j for j in self.api.list_jobs()}
        wanted = [jobs[r] for r in refs if r in jobs]
        queue_reason = self._queue_reason() if any(j.status == "PENDING" for j in wanted) else None
        out: dict[str, JobStatus] = {}
        for ref in refs:
            job = jobs.get(ref)
            if job is None:
                out[ref] = translate.lost_status(ref, self.url)
                continue
            reason = queue_reason
            if job.status == "PENDING" and ref in self._cancel_requested:
                reason = "cancel requested: Ray stops a pending job as soon as it starts"
            out[ref] = translate.to_status(job, queue_reason=reason)
            if out[ref].state.is_terminal():
                self._cancel_requested.discard(ref)
        return out

    def _queue_reason(self) -> str | None:
        try:
            cap = self.capacity()
        except Exception:  # the reason is a courtesy; the status itself came from the list call
            return None
        return f"waiting for resources: {cap.text()}" if cap.known else None

    def _find(self, tags: list[str]) -> dict[str, str]:
        known = {j.submission_id for j in self.api.list_jobs()}
        return {t: t for t in tags if t in known}

    # -- control ----------------------------------------------------------------------------------------
    def _cancel(self, ref: str) -> None:
        job = self.api.get(ref)
        if job is None:
            raise NotFound(f"no Ray job {ref} on {self.url}", ref=ref)
        if translate.to_status(job).state.is_terminal():
            return
        self.api.stop(ref)
        if job.status == "PENDING":
            with self._lock:
                self._cancel_requested.add(ref)

    def _logs(self, ref: str, offset: int) -> LogChunk:
        job = self.api.get(ref)
        if job is None:
            raise NotFound(f"no Ray job {ref} on {self.url}", ref=ref)
        terminal = translate.to_status(job).state.is_terminal()
        # Ray serves the whole driver log; the offset is in characters of that text.
        text = self.api.logs(ref)
        return LogChunk(data=text[offset:], offset=max(len(text), offset), complete=terminal)

    # -- cluster ----------------------------------------------------------------------------------------
    def _describe(self) -> ClusterInfo:
        nodes = self.api.nodes()
        usage = self.api.usage()
        infos = tuple(self._node_info(n, usage.get(n.node_id, {})) for n in nodes)
        alive = [i for i in infos if i.state == "ALIVE"]
        listed = self.api.list_jobs()
        queued = sum(1 for j in listed if j.status == "PENDING")
        running = sum(1 for j in listed if j.status == "RUNNING")
        pool = Partition(
            name="ray",
            nodes=len(alive),
            cpus_total=sum(i.cpus_total for i in alive),
            cpus_free=sum(i.cpus_free for i in alive),
            gpus_total=sum(i.gpus_total for i in alive),
            gpus_free=sum(i.gpus_free for i in alive),
            default=True,
        )
        return ClusterInfo(scheduler=self.url, partitions=(pool,), nodes=infos, queue_length=queued, running=running)

    @staticmethod
    def _node_info(node: RayNode, usage: Mapping[str, tuple[float, float]]) -> NodeInfo:
        def total_free(key: str) -> tuple[int, int]:
            total = node.resources_total.get(key, 0.0)
            used = usage.get(key, (0.0, total))[0] if usage else 0.0
            return int(total), int(max(total - used, 0.0))

        cpus, cpus_free = total_free("CPU")
        gpus, gpus_free = total_free("GPU")
        if node.state != "ALIVE":
            cpus_free = gpus_free = 0
        name = f"{node.ip}:{node.node_id[:8]}" + (" (head)" if node.is_head else "")
        return NodeInfo(name=name, state=node.state, cpus_total=cpus, cpus_free=cpus_free, gpus_total=gpus,
                        gpus_free=gpus_free, partitions=("ray",))  # fmt: skip

    def close(self) -> None:
        self.api.close()


def dashboard_url(url: str) -> str:
    """``ray://host:port`` (the dashboard's port) → ``http://host:port``; ``http(s)://`` passes through."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return url.rstrip("/")
    if parts.scheme != "ray" or not parts.hostname:
        raise InvalidInput(f"Ray scheduler URL {url!r} must look like ray://host:8265", field="scheduler")
    return f"http://{parts.hostname}:{parts.port or 8265}"


def sandbox_option(url: str) -> bool:
    """``?sandbox=off`` (or ``0``/``false``/``no``) in the URL turns the per-job sandbox off; on by default."""
    values = parse_qs(urlsplit(url).query).get("sandbox", ["on"])
    value = values[-1].strip().lower()
    if value not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
        raise InvalidInput(f"Ray scheduler URL {url!r}: sandbox must be on or off", field="scheduler")
    return value in ("on", "1", "true", "yes")


def build(url: str, *, client: httpx.Client | None = None, **opts: Any) -> RayScheduler:
    """Registry builder for ``ray://host:dashboard_port[?sandbox=off]``; ``client`` is the HTTP seam."""
    timeout = opts.pop("timeout", None)
    if opts:
        raise InvalidInput(f"unknown Ray scheduler options: {', '.join(sorted(opts))}", field="scheduler")
    sandbox = sandbox_option(url)
    if client is None:
        client = httpx.Client(timeout=httpx.Timeout(float(timeout), connect=2.0) if timeout else DEFAULT_TIMEOUT)
    return RayScheduler(url, JobsApi(dashboard_url(url), client), sandbox=sandbox)


__all__ = ["JobState", "RayScheduler", "build", "dashboard_url"]
