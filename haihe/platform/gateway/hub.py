"""The gateway's process-wide state and threads: routes, runtimes, key cache, buckets, quota book, meter,
the metering flusher and the endpoint supervisor. One per app, built by the app factory; nothing at import time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from haihe.errors import InvalidInput
from haihe.model_zoo.names import ZooRef
from haihe.platform.context import PlatformContext
from haihe.platform.endpoints import quota as endpoint_quota
from haihe.platform.endpoints.rows import Endpoint
from haihe.platform.gateway.auth import KeyCache
from haihe.platform.gateway.config import GatewayConfig
from haihe.platform.gateway.contract import ModelContract, from_task, load_contract
from haihe.platform.gateway.limits import QuotaBook, TokenBuckets
from haihe.platform.gateway.metering import Flusher, Meter, load_request_quota
from haihe.platform.gateway.runtimes import ServingRuntime
from haihe.platform.gateway.shared_buckets import SharedTokenBuckets
from haihe.platform.gateway.supervisor import Step, serving_target
from haihe.platform.lease import LeaderLease
from haihe.platform.tracking.proxy import serving_tracking

log = logging.getLogger(__name__)

SERVABLE = ("ready", "degraded")  # endpoint states the gateway sends requests to
CONTRACT_RETRY_S = 30.0  # a model contract the zoo could not give is asked for again after this long
REREAD_S = 0.5  # a route held as not servable is read again from the database at most this often
WARM_TIMEOUT_S = 10.0  # one warming round trip to a serving target
WARM_RETRY_S = 30.0  # a target that could not be warmed is tried again after this long


@dataclass(frozen=True)
class Route:
    """What the gateway needs to know about an endpoint, held in memory and refreshed every supervisor cycle."""

    endpoint_id: int
    org_id: int
    name: str
    state: str
    reason: str
    scheduler: str
    task: str
    model: str
    version: int
    target: str | None
    rate_per_s: float | None
    burst: int | None

    @classmethod
    def of(cls, ep: Endpoint) -> Route:
        return cls(ep.id, ep.org_id, ep.name, ep.state, ep.reason, ep.scheduler, ep.task, ep.model_ref,
                   ep.model_version, serving_target(ep), ep.rate_per_s, ep.burst)

    @property
    def pinned_model(self) -> str:
        """``org/name:N``: the zoo version the endpoint resolved to (``model`` is the reference as asked)."""
        ref = ZooRef.parse(self.model)
        return f"{ref.org}/{ref.name}:{self.version}"


def backend_of(url: str) -> str:
    """Which runtime serves on a scheduler: Ray Serve on ``ray://``, an HTTP serving job everywhere else."""
    return "ray" if url.startswith("ray") else "slurm"


class EndpointsHub:
    def __init__(self, ctx: PlatformContext, config: GatewayConfig | None = None, *,
                 runtimes: dict[str, ServingRuntime] | None = None, zoo: Any | None = None,
                 zoo_factory: Callable[[], Any] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock  # epoch seconds; the seam through which tests move time for replica-hour metering
        self.config = config or ctx.settings.gateway
        self._runtimes: dict[str, ServingRuntime] = dict(runtimes or {})
        self._zoo = zoo
        self._zoo_factory = zoo_factory
        self.book = QuotaBook(load_request_quota(ctx.db), self.config.quota_refresh_s)
        self.meter = Meter(ctx.db, self.book)
        self.buckets: TokenBuckets | SharedTokenBuckets = (
            SharedTokenBuckets(Path(self.config.shared_buckets)) if self.config.shared_buckets else TokenBuckets())
        self.keys = KeyCache(ctx.db, self.config.auth_cache_s)
        self.routes: dict[tuple[int, str], Route] = {}
        self._reread_at: dict[int, float] = {}
        self._inflight: Counter[str] = Counter()
        self._contracts: dict[tuple[str, str], tuple[float, bool, ModelContract]] = {}
        self._warmed: dict[str, float] = {}  # serving target -> when to warm it again (inf: done)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: Flusher | None = None
        self._thread: threading.Thread | None = None
        self.leader: LeaderLease | None = None  # set by start(); None: this hub steps endpoints unconditionally
        self.cycles = 0

    # -- collaborators ------------------------------------------------------------------------------------------
    def zoo(self) -> Any:
        if self._zoo is None:
            if self._zoo_factory is not None:
                self._zoo = self._zoo_factory()
            else:
                from haihe.model_zoo import ModelZoo

                if not self.ctx.settings.mlflow_url:
                    raise InvalidInput("the platform has no model zoo (HAIHE_MLFLOW_URL is not set)", field="model")
                self._zoo = ModelZoo.connect(self.ctx.settings.mlflow_url)
        return self._zoo

    def runtime(self, scheduler: str) -> ServingRuntime:
        with self._lock:
            rt = self._runtimes.get(scheduler)
            if rt is None:
                rt = self._runtimes[scheduler] = self._build_runtime(scheduler)
            return rt

    def _build_runtime(self, scheduler: str) -> ServingRuntime:
        url = self.ctx.settings.schedulers.get(scheduler)
        if url is None:
            valid = ", ".join(sorted(self.ctx.settings.schedulers)) or "none configured"
            raise InvalidInput(f"unknown scheduler {scheduler!r}; valid: {valid}", field="scheduler")
        if backend_of(url) == "ray":
            from haihe.platform.gateway.ray_runtime import RayServeRuntime, serve_addresses

            gcs, port = serve_addresses(url)
            return RayServeRuntime(self.config.ray_address or gcs, self.config.serve_http_port or port)
        from haihe.platform.gateway.slurm_runtime import SlurmRuntime

        return SlurmRuntime(self.ctx.scheduler(scheduler), self.ctx.settings.node_python,
                            time_limit_min=self.config.slurm_time_limit_min,
                            connect_timeout_s=self.config.connect_timeout_s)

    def backend(self, scheduler: str) -> str:
        url = self.ctx.settings.schedulers.get(scheduler)
        if url is None:
            valid = ", ".join(sorted(self.ctx.settings.schedulers)) or "none configured"
            raise InvalidInput(f"unknown scheduler {scheduler!r}; valid: {valid}", field="scheduler")
        return backend_of(url)

    # -- model contracts: OIP metadata and the checks on inference inputs -----------------------------------------
    def cached_contract(self, route: Route) -> ModelContract | None:
        """The contract from memory, or None when it must be read (``contract``, in a worker thread)."""
        hit = self._contracts.get((route.pinned_model, route.task))
        if hit is not None and (hit[1] or time.monotonic() - hit[0] < CONTRACT_RETRY_S):
            return hit[2]
        return None

    def contract(self, route: Route) -> ModelContract:
        """Blocking on a miss (reads the zoo). A version never changes, so a contract read from the zoo is kept for
        good; without a readable zoo the task's contract serves meanwhile and the zoo is asked again later."""
        hit = self.cached_contract(route)
        if hit is not None:
            return hit
        try:
            contract, final = load_contract(self.zoo(), route.pinned_model, route.task)
        except Exception as exc:  # no zoo configured, or it cannot be reached: metadata must not stop inference
            log.warning("endpoint %s: no model contract from the zoo (%s: %s)", route.name, type(exc).__name__, exc)
            contract, final = from_task(route.task), False
        with self._lock:
            self._contracts[(route.pinned_model, route.task)] = (time.monotonic(), final, contract)
        return contract

    # -- in-flight requests per serving target (a generation is retired only when idle) ----------------------------
    def enter(self, target: str) -> None:
        with self._lock:
            self._inflight[target] += 1

    def leave(self, target: str) -> None:
        with self._lock:
            self._inflight[target] -= 1

    def inflight(self, target: str) -> int:
        with self._lock:
            return self._inflight[target]

    # -- routes -------------------------------------------------------------------------------------------------
    def refresh_routes(self) -> None:
        with self.ctx.db.session() as s:
            rows = s.scalars(select(Endpoint)).all()
            self.routes = {(ep.org_id, ep.name): Route.of(ep) for ep in rows}

    def warm(self, timeout_s: float = WARM_TIMEOUT_S) -> int:
        """Read the routes and warm every servable target (``ServingRuntime.warm``), each once per process, at the
        end of every supervisor cycle (leader or not): a Ray app's requests go through Serve's proxy until then, so
        a restarted API worker answers while it joins the cluster. Returns how many targets were warmed; a failure
        is logged, and tried again after ``WARM_RETRY_S``."""
        self.refresh_routes()
        warmed = 0
        for route in list(self.routes.values()):
            target = route.target
            if route.state not in SERVABLE or not target or self._warmed.get(target, 0.0) > time.monotonic():
                continue
            try:
                self.runtime(route.scheduler).warm(target, timeout_s)
            except Exception as exc:  # the cluster may be away, the app being replaced
                log.info("warming endpoint %s (%s) failed: %s: %s", route.name, target, type(exc).__name__, exc)
                self._warmed[target] = time.monotonic() + WARM_RETRY_S
                continue
            self._warmed[target] = float("inf")
            warmed += 1
        return warmed

    def lookup(self, org_id: int, name: str) -> Route | None:
        """The route, from memory; a miss reads the database (an endpoint created since the last cycle)."""
        route = self.routes.get((org_id, name))
        if route is not None:
            return route
        with self.ctx.db.session() as s:
            ep = s.scalar(select(Endpoint).where(Endpoint.org_id == org_id, Endpoint.name == name))
            return Route.of(ep) if ep is not None else None

    def reread(self, route: Route) -> Route:
        """A route held as not servable, read again from the database (at most every ``REREAD_S`` per endpoint):
        the leader may have made it ready since this process's last cycle, and a client that waited for ``ready``
        must not be told ``deploying`` by another worker."""
        now = time.monotonic()
        if now - self._reread_at.get(route.endpoint_id, 0.0) < REREAD_S:
            return route
        self._reread_at[route.endpoint_id] = now
        with self.ctx.db.session() as s:
            ep = s.get(Endpoint, route.endpoint_id)
            if ep is None:
                return route
            fresh = Route.of(ep)
        self.routes[(fresh.org_id, fresh.name)] = fresh
        return fresh

    # -- supervisor ---------------------------------------------------------------------------------------------
    def supervise_once(self) -> None:
        """One cycle over every endpoint; an endpoint whose backend fails is skipped, the others go on. Only the
        leader (when a lease is set) steps endpoints; every process refreshes its routes."""
        if self.leader is not None and not self.leader.renew():
            self.warm()
            self.cycles += 1
            return
        with self.ctx.db.session() as s:
            ids = list(s.scalars(select(Endpoint.id)))
        for endpoint_id in ids:
            try:
                with self.ctx.db.session() as s:
                    ep = s.scalar(select(Endpoint).options(selectinload(Endpoint.org))
                                  .where(Endpoint.id == endpoint_id))
                    if ep is None:
                        continue
                    now = self.clock()
                    st = self.ctx.settings
                    url, token = serving_tracking(st.mlflow_url, st.public_url, st.secret_key, ep.id, ep.org.name)
                    Step(ep, self.runtime(ep.scheduler), mlflow_url=url, mlflow_token=token,
                         drain_s=self.config.drain_s, renew_before_s=self.config.slurm_renew_before_s,
                         inflight=self.inflight, now=now).run()
                    endpoint_quota.meter(s, ep, self.config.quota_window_s, now)
            except Exception:
                log.exception("supervising endpoint %s failed; retrying next cycle", endpoint_id)
        self.warm()  # the routes, and a first round trip to a target that just became ready
        self.cycles += 1

    def _supervise_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.supervise_once()
            except Exception:
                log.exception("endpoint supervisor cycle failed")
            self._stop.wait(self.config.supervise_interval_s)

    def start(self, supervise: bool = True, leader: LeaderLease | None = None) -> None:
        """Start the flusher (and the supervisor); an app's lifespan may run more than once, so threads are new."""
        self.leader = leader
        self._stop = threading.Event()
        self._flusher = Flusher(self.meter, self.config.flush_interval_s)
        self._flusher.start()
        if supervise:
            self._thread = threading.Thread(target=self._supervise_loop, name="endpoint-supervisor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._flusher is not None:
            self._flusher.stop()  # the drain: everything served is now in the ledger
            self._flusher = None
        else:
            self.meter.flush()
        for rt in self._runtimes.values():
            rt.close()
