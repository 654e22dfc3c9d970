"""The embedded stack of ``haihe up``: S3 server, MLflow, Ray head (and optionally PostgreSQL and the API).

Every service keeps its state under one home directory, and the generated secrets (S3 keys, the app's
secret) persist there in a mode-600 file, so a second ``haihe up`` reuses objects, runs and keys. S3 starts
first (MLflow stores its artifacts there), then MLflow and Ray start in parallel threads, then the API.
This module never imports the platform or the server: the API is just an argv handed in by the CLI.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import StartupError
from haihe.cluster.unix import SERVICE_USER, grant_traverse, is_root, private_dir, service_account
from haihe.errors import InvalidInput

HOST = "127.0.0.1"
DEFAULT_BUCKETS: tuple[str, ...] = ("haihe-datasets", "mlflow", "haihe-code")

# S3 (and PostgreSQL) first, MLflow and Ray together once S3 holds the buckets, the API last.
START_PHASES: tuple[tuple[str, ...], ...] = (("s3", "postgres"), ("mlflow", "ray"), ("api",))
STOP_ORDER: tuple[str, ...] = ("api", "ray", "mlflow", "postgres", "s3")

Progress = Callable[[str], None]


class Service(Protocol):
    """What the stack needs of each service: the classes in haihe.cluster and the test fakes."""

    def start(self, timeout: float = ...) -> None: ...

    def stop(self) -> bool: ...

    def is_ready(self) -> bool: ...


class BucketService(Service, Protocol):
    def ensure_buckets(self, names: Sequence[str]) -> None: ...


# ---- secrets ----
@dataclass(frozen=True)
class StackSecrets:
    """Secrets generated on the first ``haihe up`` and reused after; never shown in a repr or a log."""

    s3_access_key: str = field(repr=False)
    s3_secret_key: str = field(repr=False)
    app_secret: str = field(repr=False)  # signs the API's sessions and CSRF tokens
    # the S3 credentials broker (an IAM user that may AssumeRole): jobs get temporary keys, never the root ones
    s3_sts_access_key: str = field(default="", repr=False)
    s3_sts_secret_key: str = field(default="", repr=False)


_SECRET_MAKERS: dict[str, Callable[[], str]] = {
    "s3_access_key": lambda: "haihe" + secrets.token_hex(6),
    "s3_secret_key": lambda: secrets.token_hex(20),
    "app_secret": lambda: secrets.token_urlsafe(32),
    "s3_sts_access_key": lambda: "haihebroker" + secrets.token_hex(6),
    "s3_sts_secret_key": lambda: secrets.token_hex(20),
}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 600 from the first byte (temp file + atomic rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def load_or_create_secrets(path: Path) -> StackSecrets:
    """Read the secrets file, generating whatever it lacks (all of it on the first run); mode stays 600."""
    path = Path(path)
    stored: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}: not valid JSON ({exc.msg})", field="secrets") from exc
        if not isinstance(loaded, dict):
            raise InvalidInput(f"{path}: expected a JSON object", field="secrets")
        stored = {k: v for k, v in loaded.items() if isinstance(v, str) and v}
    missing = [name for name in _SECRET_MAKERS if name not in stored]
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored.update({name: _SECRET_MAKERS[name]() for name in missing})
        _write_private(path, json.dumps(stored, indent=2, sort_keys=True) + "\n")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return StackSecrets(**{name: stored[name] for name in _SECRET_MAKERS})


# ---- configuration ----
@dataclass(frozen=True)
class StackConfig:
    """What ``haihe up`` (or a test) wants running, and where its state lives."""

    home: Path
    ports: PortPlan = field(default_factory=PortPlan)
    buckets: tuple[str, ...] = DEFAULT_BUCKETS
    mlflow_bucket: str = "mlflow"
    s3: bool = True
    mlflow: bool = True
    ray: bool = True
    postgres: bool = False
    ray_num_cpus: int | None = None
    start_timeout: float = 180.0  # per service; generous because the host is shared and has 2 cores

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))
        if self.mlflow and not self.s3:
            raise InvalidInput("the local MLflow server stores its artifacts in the local S3 server", field="s3")

    @property
    def secrets_path(self) -> Path:
        return self.home / "secrets.json"

    def all_buckets(self) -> tuple[str, ...]:
        names = list(self.buckets)
        if self.mlflow and self.mlflow_bucket not in names:
            names.append(self.mlflow_bucket)
        return tuple(names)

    def endpoints(self) -> dict[str, str]:
        """Where each enabled service listens, from the port plan alone (Ray's comes from its head)."""
        out: dict[str, str] = {}
        if self.s3:
            out["s3"] = f"http://{HOST}:{self.ports.s3}"
        if self.mlflow:
            out["mlflow"] = f"http://{HOST}:{self.ports.mlflow}"
        if self.postgres:
            out["postgres"] = f"postgresql+psycopg://postgres@{HOST}:{self.ports.postgres}/postgres"
        return out


# ---- building the services ----
@dataclass
class ServicePlan:
    """The services to run, by name, and the ones left out with the reason."""

    services: dict[str, Service]
    skipped: dict[str, str] = field(default_factory=dict)


def client_env(config: StackConfig, keys: StackSecrets) -> dict[str, str]:
    """Environment for clients of the stack (the API process, jobs, a shell): S3 and MLflow locations."""
    env: dict[str, str] = {}
    if config.s3:
        endpoint = f"http://{HOST}:{config.ports.s3}"
        env.update(
            {
                "AWS_ACCESS_KEY_ID": keys.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": keys.s3_secret_key,
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_DEFAULT_REGION": "us-east-1",
                "MLFLOW_S3_ENDPOINT_URL": endpoint,
            }
        )
    if config.mlflow:
        env["MLFLOW_TRACKING_URI"] = f"http://{HOST}:{config.ports.mlflow}"
    return env


def default_services(config: StackConfig, keys: StackSecrets) -> ServicePlan:
    """The real services; heavy or optional modules are imported only when the service is wanted."""
    plan = ServicePlan(services={})
    home = config.home
    # Started by root, the services that need no privilege run as the platform's service account (docs/security.md)
    service_user = SERVICE_USER if is_root() else None
    if service_user:
        service_account(service_user)
        grant_traverse([home / "s3"], group=service_user)  # e.g. /root/.local/share/haihe: search only, no list
    if config.s3:
        from haihe.cluster.s3 import S3Server

        plan.services["s3"] = S3Server(home / "s3", config.ports.s3, keys.s3_access_key, keys.s3_secret_key,
                                       broker_access_key=keys.s3_sts_access_key,
                                       broker_secret_key=keys.s3_sts_secret_key, user=service_user)
    if config.postgres:
        from haihe.cluster.postgres import PostgresServer

        plan.services["postgres"] = PostgresServer(home / "postgres", config.ports.postgres)
    if config.mlflow:
        from haihe.cluster.mlflow_server import MlflowServer

        plan.services["mlflow"] = MlflowServer(
            home / "mlflow",
            config.ports.mlflow,
            s3_endpoint=f"http://{HOST}:{config.ports.s3}",
            access_key=keys.s3_access_key,
            secret_key=keys.s3_secret_key,
            bucket=config.mlflow_bucket,
            user=service_user,
        )
    if config.ray:
        try:
            from haihe.cluster.ray_head import RayHead
        except ModuleNotFoundError as exc:
            if exc.name != "haihe.cluster.ray_head":
                raise
            plan.skipped["ray"] = "haihe.cluster.ray_head is not available"
        else:
            plan.services["ray"] = RayHead(home / "ray", config.ports, num_cpus=config.ray_num_cpus)
    return plan


# ---- the stack ----
class LocalStack:
    """Start, check and stop the configured services as one unit."""

    def __init__(
        self,
        config: StackConfig,
        build: Callable[[StackConfig, StackSecrets], ServicePlan] = default_services,
    ) -> None:
        self.config = config
        self.secrets = load_or_create_secrets(config.secrets_path)
        plan = build(config, self.secrets)
        unknown = set(plan.services) - set(STOP_ORDER)
        if unknown:
            raise InvalidInput(f"unknown services {sorted(unknown)}; known: {list(STOP_ORDER)}", field="services")
        self.services: dict[str, Service] = plan.services
        self.skipped: dict[str, str] = plan.skipped
        self.timings: dict[str, float] = {}  # seconds each service took to become ready in the last start()

    def client_env(self) -> dict[str, str]:
        return client_env(self.config, self.secrets)

    def endpoints(self) -> dict[str, str]:
        out = self.config.endpoints()
        ray = self.services.get("ray")
        url = getattr(ray, "dashboard_url", None)
        if url:
            out["ray"] = str(url)
        return out

    def start(self, progress: Progress | None = None) -> None:
        """Start every service phase by phase; on a failure stop what was started and raise StartupError."""
        say = progress or (lambda _msg: None)
        for name, why in self.skipped.items():
            say(f"{name}: skipped ({why})")
        # secrets.json, logs and pid files are the caller's, mode 600/700; others may only traverse to the services'
        # own (mode 700) homes
        private_dir(self.config.home, mode=0o711)
        started: list[str] = []
        try:
            for phase in START_PHASES:
                self._start_phase([n for n in phase if n in self.services], say, started)
        except KeyboardInterrupt:
            # Ctrl-C during `haihe up`: stop everything by pid file, also what a thread was still starting
            self._stop_names(list(self.services), say)
            raise

    def _start_phase(self, names: Sequence[str], say: Progress, started: list[str]) -> None:
        failures: dict[str, BaseException] = {}
        if len(names) == 1:
            self._start_one(names[0], say, started, failures)
        elif names:
            with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="haihe-up") as pool:
                for name in names:
                    pool.submit(self._start_one, name, say, started, failures)
        if not failures:
            return
        self._stop_names(started, say)
        for exc in failures.values():
            if not isinstance(exc, Exception):
                raise exc  # KeyboardInterrupt / SystemExit: cleaned up above, now let it through
        detail = "\n".join(f"{n}: {e}" for n, e in failures.items())
        raise StartupError(f"the local stack did not start:\n{detail}") from next(iter(failures.values()))

    def _start_one(self, name: str, say: Progress, started: list[str], failures: dict[str, BaseException]) -> None:
        service = self.services[name]
        say(f"{name}: starting")
        began = time.monotonic()
        try:
            service.start(timeout=self.config.start_timeout)
            started.append(name)  # list.append is atomic under the GIL; phases join before reading it
            if name == "s3":
                cast(BucketService, service).ensure_buckets(self.config.all_buckets())
                broker = getattr(service, "ensure_broker", None)  # jobs' buckets only, never MLflow's
                if broker is not None:
                    broker([b for b in self.config.buckets if b != self.config.mlflow_bucket])
        except BaseException as exc:  # collected and re-raised by start(), after cleaning up
            failures[name] = exc
            say(f"{name}: failed")
            return
        self.timings[name] = time.monotonic() - began
        say(f"{name}: ready in {self.timings[name]:.1f}s")

    def stop(self, progress: Progress | None = None) -> None:
        """Stop every service, API first and S3 last; works from a fresh process (pid files in home)."""
        self._stop_names(list(self.services), progress or (lambda _msg: None))

    def _stop_names(self, names: Sequence[str], say: Progress) -> None:
        """The API first (nothing writes while the rest goes), then every other service at once: none needs
        another to stop, so stopping takes the slowest one's time, not the sum."""
        errors: list[str] = []
        order = [n for n in STOP_ORDER if n in names and n in self.services]

        def stop_one(name: str) -> None:
            began = time.monotonic()
            try:
                if self.services[name].stop():
                    say(f"{name}: stopped in {time.monotonic() - began:.1f}s")
            except Exception as exc:  # keep stopping the others; report at the end
                errors.append(f"{name}: {exc}")

        if "api" in order:
            stop_one("api")
        rest = [n for n in order if n != "api"]
        threads = [threading.Thread(target=stop_one, args=(n,), name=f"stop-{n}") for n in rest]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise StartupError("some services did not stop:\n" + "\n".join(errors))

    def status(self) -> dict[str, bool]:
        """Whether each configured service answers now (a real request to each, not just a pid check)."""
        out: dict[str, bool] = {}
        for name in STOP_ORDER[::-1]:
            if name in self.services:
                try:
                    out[name] = bool(self.services[name].is_ready())
                except Exception:
                    out[name] = False
        return out
