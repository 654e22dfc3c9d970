"""``haihe up``: the embedded default on one machine — S3 server, MLflow, Ray head, (Slurm), API and portal.

The services come from :mod:`haihe.cluster` (the same code the test fixtures use); the API runs in ``api_workers``
processes sharing its port (:mod:`haihe.serve`), configured through ``HAIHE_*`` variables, so that one of them
dying leaves the portal, the API and the inference gateway answering while it is restarted. On the first run a
platform admin is created and its password printed once (and kept in ``$HAIHE_HOME/admin.json``, mode 600).
Ctrl-C stops every child; a second run reuses all state.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import ManagedProcess, StartupError, tail, wait_until

Echo = Callable[[str], Any]
HOST = "127.0.0.1"
API_STOP_GRACE_S = 3.0  # in-flight requests finish; an open log stream would hold uvicorn forever


def default_home() -> Path:
    return Path(os.environ.get("HAIHE_HOME") or Path.home() / ".local/share/haihe")


@dataclass(frozen=True)
class EmbeddedOptions:
    home: Path | None = None
    api_port: int = 8000
    port_base: int = 20000
    with_ray: bool = True
    with_slurm: bool = False
    detach: bool = False
    supervise_only: bool = False  # the background copy `--detach` leaves: attach to the running stack, watch it
    api_workers: int = 2  # API processes on the one port: a crash of one leaves the others answering
    admin_username: str = "admin"

    @property
    def resolved_home(self) -> Path:
        return (self.home or default_home()).expanduser().resolve()


def _write_private(path: Path, data: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)


def secure_home(home: Path) -> None:
    """The state directory: mode 711 (others may traverse to a service's own dir, e.g. slurm/, never list it);
    the database, credentials and secrets in it mode 600, whatever an older version left (docs/security.md)."""
    from haihe.cluster.unix import private_dir

    private_dir(home, mode=0o711)
    for name in ("haihe.db", "haihe.db-wal", "haihe.db-shm", "admin.json", "up.json", "haihe.toml"):
        path = home / name
        if path.exists():
            path.chmod(0o600)
    for name in ("api", "services"):  # made here, before a child's log creates them with the default mode
        (home / name).mkdir(exist_ok=True)
        (home / name).chmod(0o700 if name == "api" else 0o711)


@dataclass
class ApiWorker:
    """One of the API processes sharing the port; ready once its ready file names its current pid."""

    process: ManagedProcess
    ready_file: Path

    @property
    def name(self) -> str:
        return self.process.name

    def start(self, url: str) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.process.start()
        wait_until(self.is_ready, timeout=120, what=f"{self.name} to serve", log_path=self.process.log_path,
                   alive=self.process.is_running)
        wait_until(lambda: _ready(url), timeout=120, what="API /readyz", log_path=self.process.log_path,
                   alive=self.process.is_running)

    def is_ready(self) -> bool:
        try:
            return int(self.ready_file.read_text()) == self.process.pid()
        except (OSError, ValueError):
            return False


def _api_workers(home: Path, port: int, env: dict[str, str], count: int) -> list[ApiWorker]:
    """``count`` API processes on one port (``api``, ``api-2``, …); pid files under ``<home>/api``."""
    from haihe.serve import api_process

    workers = []
    for i in range(1, max(1, count) + 1):
        name = "api" if i == 1 else f"api-{i}"
        ready = home / "api" / f"{name}.ready"
        # umask 077: the database (and its WAL), logs and anything else the API writes are private to its account
        proc = api_process(name, port, log_dir=home / "api", env=env, host=HOST, ready_file=ready, cwd=home,
                           umask=0o077)
        workers.append(ApiWorker(proc, ready))
    return workers


def _stale_api_workers(home: Path, port: int) -> list[ApiWorker]:
    """Every API process a pid file under ``<home>/api`` names (an earlier run's, whatever its worker count)."""
    names = {p.stem for p in (home / "api").glob("api*.pid")} if (home / "api").is_dir() else set()
    count = max((int(n.split("-", 1)[1]) for n in names if n.startswith("api-") and n[4:].isdigit()), default=1)
    return _api_workers(home, port, dict(os.environ), count)


def _stack(options: EmbeddedOptions) -> Any:
    from haihe.cluster.stack import LocalStack, StackConfig

    home = options.resolved_home
    return LocalStack(StackConfig(home=home / "services", ports=PortPlan(options.port_base), ray=options.with_ray))


def _api_env(options: EmbeddedOptions, stack: Any, slurm: Any | None) -> dict[str, str]:
    home = options.resolved_home
    endpoints = stack.endpoints()
    client = stack.client_env()
    schedulers: dict[str, str] = {}
    ray = stack.services.get("ray")
    if "ray" in endpoints and ray is not None:
        schedulers["ray"] = ray.scheduler_url  # names its GCS and Serve ports for the gateway
    env = {**os.environ, **client}
    if slurm is not None:
        # slurmrestd with a per-user JWT, as a site runs it; the CLI transport (sbatch --uid as root) only when
        # slurmrestd is not up, or when HAIHE_SLURM_TRANSPORT=cli asks for it
        transport = os.environ.get("HAIHE_SLURM_TRANSPORT", "rest")
        if transport == "rest" and not slurm.rest_ready():
            transport = "cli"
        schedulers["slurm"] = slurm.scheduler_url(transport)
        env.update(slurm.env)
    env.update({
        "HAIHE_HOME": str(home),
        "HAIHE_MODE": "development",
        "HAIHE_SECRET_KEY": stack.secrets.app_secret,
        "HAIHE_PUBLIC_URL": f"http://{HOST}:{options.api_port}",
        "HAIHE_S3_ENDPOINT": endpoints.get("s3", ""),
        "HAIHE_S3_ACCESS_KEY": client.get("AWS_ACCESS_KEY_ID", ""),
        "HAIHE_S3_SECRET_KEY": client.get("AWS_SECRET_ACCESS_KEY", ""),
        "HAIHE_S3_STS_ACCESS_KEY": stack.secrets.s3_sts_access_key if endpoints.get("s3") else "",
        "HAIHE_S3_STS_SECRET_KEY": stack.secrets.s3_sts_secret_key if endpoints.get("s3") else "",
        "HAIHE_MLFLOW_URL": endpoints.get("mlflow", ""),
        "HAIHE_SCHEDULERS": json.dumps(schedulers),
        "HAIHE_DEFAULT_SCHEDULER": "ray" if "ray" in schedulers else next(iter(schedulers), ""),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # the API workers on the one port share each key's rate limit (haihe.platform.gateway.shared_buckets)
        "HAIHE_GATEWAY_SHARED_BUCKETS": str(home / "api" / "rate-buckets.bin"),
    })
    return env


def _first_admin(options: EmbeddedOptions, url: str, echo: Echo) -> None:
    """Create the first platform admin once; print its password once; sign the CLI in."""
    from haihe import errors
    from haihe.client import HaiheClient, save_credentials

    path = options.resolved_home / "admin.json"
    if path.exists():
        echo(f"admin credentials: {path}")
        return
    import secrets as _secrets

    password = _secrets.token_urlsafe(15)
    with HaiheClient(url, token="") as c:
        try:
            c.setup(options.admin_username, password)
        except errors.Conflict:
            echo("platform already has an admin (created elsewhere); not creating one")
            return
        token = c.login(options.admin_username, password)
    _write_private(path, {"url": url, "username": options.admin_username, "password": password})
    save_credentials(url, token.token, options.admin_username)
    echo(f"[bold]first run:[/] platform admin [cyan]{options.admin_username}[/], password [cyan]{password}[/]"
         f" (saved in {path}, mode 600; the CLI is signed in)")


def _seed_zoo(stack: Any, home: Path, echo: Echo) -> None:
    """First run: register public/minilm-l6 in the background (~13 s; a separate process, so Ctrl-C stays quick)."""
    from haihe.platform.zoo.seed import start_in_background

    if start_in_background(stack.endpoints().get("mlflow", ""), home) is not None:
        echo(f"  zoo: seeding public/minilm-l6 in the background (log: {home / 'zoo-seed.log'})")


def _spawn_supervisor(options: EmbeddedOptions, home: Path) -> int:
    """`haihe up --detach` leaves a background `haihe up --supervise-only` that keeps the children running."""
    import subprocess

    argv = [sys.executable, "-m", "haihe.cli", "up", "--home", str(home), "--port", str(options.api_port),
            "--port-base", str(options.port_base), "--ray" if options.with_ray else "--no-ray",
            "--slurm" if options.with_slurm else "--no-slurm", "--api-workers", str(options.api_workers),
            "--supervise-only"]
    with open(home / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc.pid


def _supervise_running(options: EmbeddedOptions, echo: Echo) -> int:
    """Attach to the stack a `haihe up --detach` started (found by its pid files) and supervise it until SIGTERM."""
    home = options.resolved_home
    stack = _stack(options)
    slurm = None
    if options.with_slurm and (home / "slurm").exists():
        from haihe.cluster.slurm.bringup import load_cluster

        slurm = load_cluster(home / "slurm")
    api = _api_workers(home, options.api_port, _api_env(options, stack, slurm), options.api_workers)
    return _wait_and_stop(api, slurm, stack, home, echo, f"http://{HOST}:{options.api_port}")


class Interrupts:
    """SIGINT/SIGTERM from the first moment of `haihe up`: during start-up they unwind it (KeyboardInterrupt, and the
    caller stops what has started); once up they only set ``stop`` for the wait loop. A Ctrl-C that lands between
    "ready" and the wait loop is therefore never lost, not even when the shell started us with SIGINT ignored (as a
    non-interactive shell does for a background job). CI found that window: readiness answered, the test's Ctrl-C
    came while `haihe up` was still printing its summary, and it ran on."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.starting = True
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.stop.set()
        if self.starting:
            self.starting = False  # a second signal during the clean-up only sets stop
            raise KeyboardInterrupt


def run_embedded(options: EmbeddedOptions, echo: Echo = print) -> int:
    """Bring everything up; in the foreground, wait for Ctrl-C and stop it all. Returns an exit code."""
    if options.supervise_only:
        return _supervise_running(options, echo)
    with Interrupts() as interrupts:
        return _run_embedded(options, echo, interrupts)


def _run_embedded(options: EmbeddedOptions, echo: Echo, interrupts: Interrupts) -> int:
    home = options.resolved_home
    secure_home(home)
    t0 = time.monotonic()
    echo(f"Haihe home: {home}")
    _write_private(home / "up.json", {"api_port": options.api_port, "port_base": options.port_base,
                                      "with_ray": options.with_ray, "with_slurm": options.with_slurm,
                                      "api_workers": options.api_workers})
    stack = _stack(options)
    slurm = None
    api: list[ApiWorker] = []
    try:
        stack.start(progress=lambda m: echo(f"  {m}"))
        if options.with_slurm:
            from haihe.cluster.slurm import cluster_up

            slurm = cluster_up(home / "slurm", PortPlan(options.port_base), accounting=False,
                               description_path=None, progress=lambda m: echo(f"  slurm: {m}"))
        for stale in _stale_api_workers(home, options.api_port):  # an earlier run's, killed without cleanup
            stale.process.stop()
        api = _api_workers(home, options.api_port, _api_env(options, stack, slurm), options.api_workers)
        url = f"http://{HOST}:{options.api_port}"
        for worker in api:  # one after the other: the first migrates the database
            worker.start(url)
        echo(f"  api: ready, {len(api)} process{'es' if len(api) > 1 else ''} on port {options.api_port}"
             f" ({time.monotonic() - t0:.1f}s since start)")
        _first_admin(options, url, echo)
        _seed_zoo(stack, home, echo)
        interrupts.starting = False  # from here a signal only asks the wait loop to stop
    except (StartupError, KeyboardInterrupt) as exc:
        interrupts.starting = False
        echo(f"[red]start-up failed:[/] {exc}" if isinstance(exc, StartupError) else "\ninterrupted during start-up")
        _stop_all(api, slurm, stack, home, echo)
        return 1 if isinstance(exc, StartupError) else 130
    endpoints = stack.endpoints()
    echo(f"\n[green]Haihe is up[/] in {time.monotonic() - t0:.1f}s")
    echo(f"  portal and API   {url}/      (API reference {url}/docs, readiness {url}/readyz)")
    for name, where in endpoints.items():
        echo(f"  {name:<16} {where}")
    if slurm is not None:
        echo(f"  slurm            SLURM_CONF={slurm.slurm_conf}")
    if options.detach:
        pid = _spawn_supervisor(options, home)
        echo(f"running in the background, supervised (pid {pid}, log {home / 'supervisor.log'}); "
             "stop with `haihe down`")
        return 0
    echo("press Ctrl-C to stop")
    return _wait_and_stop(api, slurm, stack, home, echo, url, interrupts.stop)


def _ready(url: str) -> bool:
    import httpx

    return httpx.get(url + "/readyz", timeout=5).status_code == 200


def _supervisor(api: list[ApiWorker], stack: Any, home: Path, url: str, echo: Echo) -> Any:
    """Every child of `haihe up`, restarted on its own when it dies (the others, and running jobs, untouched)."""
    from haihe.cluster.supervisor import Child, Supervisor

    def restarter(worker: ApiWorker) -> Callable[[], None]:
        def restart() -> None:
            worker.process.stop()
            worker.start(url)

        return restart

    children = {w.name: Child(w.name, w.process.is_running, restarter(w), w.process.log_path) for w in api}
    for name, service in stack.services.items():
        alive = getattr(service, "is_running", None) or service.is_ready
        log_path = getattr(service, "log_path", None) or getattr(getattr(service, "process", None), "log_path", None)
        children[name] = Child(name, alive, _starter(service), log_path)
    return Supervisor(children, home / "supervisor.json", say=lambda m: echo(f"  {m}"))


def _starter(service: Any) -> Callable[[], None]:
    def start() -> None:
        service.stop()  # what the dead one left behind (workers holding its port) goes first
        service.start(timeout=120)

    return start


def _wait_and_stop(api: list[ApiWorker], slurm: Any, stack: Any, home: Path, echo: Echo, url: str = "",
                   stop: threading.Event | None = None) -> int:
    """Supervise until ``stop`` is set (by the caller's :class:`Interrupts`; without one, SIGINT/SIGTERM here)."""
    own = stop is None
    stop = stop or threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)} if own else {}
    code = 0
    supervisor = _supervisor(api, stack, home, url, echo)
    try:
        while not stop.wait(1.0):
            supervisor.step()
            crashing = [w for w in api if w.name in supervisor.given_up()]
            if crashing:
                log_path = crashing[0].process.log_path
                echo(f"[red]the API process keeps crashing[/]; last lines of {log_path}:\n{tail(log_path)}")
                code = 1
                break
    finally:
        echo("\nstopping…")
        _stop_all(api, slurm, stack, home, echo)
        (home / "supervisor.json").unlink(missing_ok=True)
        for s, h in previous.items():
            signal.signal(s, h)
    return code


def _stop_all(api: list[ApiWorker], slurm: Any, stack: Any, home: Path, echo: Echo) -> None:
    """The API workers first (together), then Slurm's daemons beside the other services."""
    began = time.monotonic()
    stopping = [threading.Thread(target=w.process.stop, kwargs={"timeout": API_STOP_GRACE_S}) for w in api
                if w.process.is_running()]
    for t in stopping:
        t.start()
    for t in stopping:
        t.join()
    if stopping:
        echo(f"  api: stopped in {time.monotonic() - began:.1f}s")
    slurm_stop = None
    if slurm is not None:
        from haihe.cluster.slurm import cluster_down

        def down() -> None:
            cluster_down(home / "slurm")
            echo("  slurm: stopped")

        slurm_stop = threading.Thread(target=down, name="stop-slurm")
        slurm_stop.start()
    try:
        stack.stop(progress=lambda m: echo(f"  {m}"))
    finally:
        if slurm_stop is not None:
            slurm_stop.join()


def stop_embedded(home: Path | None, echo: Echo = print) -> None:
    """Stop a detached stack from another process: its supervisor first (it stops its children), then whatever
    pid files still name."""
    from haihe.cluster.procs import pid_alive

    resolved = EmbeddedOptions(home=home).resolved_home
    try:
        supervisor_pid = int(json.loads((resolved / "supervisor.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        supervisor_pid = None
    if supervisor_pid is not None and supervisor_pid != os.getpid() and pid_alive(supervisor_pid):
        os.kill(supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while pid_alive(supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        echo("  supervisor: stopped")
    try:
        saved = json.loads((resolved / "up.json").read_text())
    except (OSError, ValueError):
        saved = {}
    options = EmbeddedOptions(home=home, api_port=int(saved.get("api_port", 8000)),
                              port_base=int(saved.get("port_base", 20000)), with_ray=bool(saved.get("with_ray", True)))
    api = _stale_api_workers(resolved, options.api_port)
    slurm_dir = resolved / "slurm"
    slurm_marker = slurm_dir if slurm_dir.exists() else None
    _stop_all(api, None, _stack(options), resolved, echo)
    if slurm_marker is not None:
        from haihe.cluster.slurm import cluster_down

        cluster_down(slurm_dir)
        echo("  slurm: stopped")
