"""The local Ray head: ``ray start --head --block`` as one managed child, on loopback, every port pinned.

Used by ``haihe up`` (through LocalStack) and by the test fixture ``ray_head``. Stopping sends SIGTERM to the
head's process group and then sweeps the few Ray processes that detach into their own sessions — by pid, never
``ray stop`` (which kills every Ray on the host, including other people's heads).

Never as root: started by root, the head (and so every Ray worker and job) runs as the unprivileged account
:data:`RAY_USER`, with its temp/session dir in ``/tmp`` owned by that account (mode 700), never under the
platform's state directory. The platform talks to it over HTTP only (dashboard Jobs API; logs come over HTTP too).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

from haihe.cluster import firewall
from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import ManagedProcess, pid_alive, port_open, wait_until
from haihe.cluster.unix import JOBS_GROUP, ensure_user, grant_traverse, is_root, private_dir

# Offsets into PortPlan.ray(...) (base+100 .. base+199). Workers take one port each from the range at the end.
GCS, DASHBOARD, CLIENT_SERVER, NODE_MANAGER, OBJECT_MANAGER = 0, 1, 2, 3, 4
AGENT_LISTEN, AGENT_GRPC, RUNTIME_ENV_AGENT, METRICS_EXPORT = 5, 6, 7, 8
DASHBOARD_METRIC, AUTOSCALER_METRIC = 9, 10
WORKER_MIN, WORKER_MAX = 40, 99

HOST = "127.0.0.1"

# Unix socket paths are limited to ~107 characters, and Ray nests them as
# <temp-dir>/session_<date>_<time>_<pid>/sockets/plasma_store (~60 characters below the temp dir).
_MAX_TEMP_DIR = 40
RAY_USER = "haihe-ray"  # the shared Ray cluster's account when the head is started by root
RAY_GROUP = "haihe-ray"  # its primary group: the firewall tells Ray's own processes from Slurm jobs by it


def default_user() -> str | None:
    """:data:`RAY_USER` when running as root (the head must never run as root), else the caller's own account."""
    return RAY_USER if is_root() else None


def runtime_paths() -> list[Path]:
    """What Ray processes (and sandboxed jobs) must reach read-only: this venv, its base Python, Haihe itself."""
    import haihe

    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable), Path(haihe.__file__).parent]
    return list(dict.fromkeys(paths))


def loopback_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for any Ray process or client here: stay on 127.0.0.1, the venv's bin first on PATH."""
    env = dict(os.environ if base is None else base)
    # Without this Ray swaps 127.0.0.1 for the eth0 address (head AND clients must agree).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    venv_bin = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[:1] != [venv_bin]:
        # Ray jobs run the raylet's `python`: it must be this venv's.
        env["PATH"] = os.pathsep.join([venv_bin, path]) if path else venv_bin
    return env


def default_num_cpus() -> int:
    return max(1, os.cpu_count() or 1)


def default_object_store_bytes() -> int:
    """10% of RAM, between 256 MiB and 2 GB (Ray's own default of 30% is too much for a shared box)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2**30
    return int(min(max(total // 10, 256 * 2**20), 2_000_000_000))


class RayHead:
    """One Ray head under ``home``; ``start``/``stop`` are idempotent and safe to call from another run."""

    def __init__(
        self,
        home: Path,
        ports: PortPlan,
        num_cpus: int | None = None,
        object_store_bytes: int | None = None,
        user: str | None = None,
    ) -> None:
        self.home = Path(home)
        # None: RAY_USER when root; "": the account of whoever starts it.
        self.user = (user or None) if user is not None else default_user()
        self.ports = ports
        self.num_cpus = num_cpus if num_cpus is not None else default_num_cpus()
        self.object_store_bytes = object_store_bytes or default_object_store_bytes()
        self.temp_dir = self._short_temp_dir()
        self.process = ManagedProcess(
            name="ray-head",
            argv=self.launch_argv(),
            log_path=self.home / "logs" / "ray-head.log",
            pid_path=self.home / "run" / "ray-head.pid",
            env=self.env(),
            cwd=self.temp_dir if self.user else self.home,
        )

    # -- addresses --------------------------------------------------------------------------------------
    @property
    def dashboard_port(self) -> int:
        return self.ports.ray(DASHBOARD)

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"{HOST}:{self.ports.ray(GCS)}"

    @property
    def scheduler_url(self) -> str:
        """The URL the scheduler registry takes for this head, naming its GCS and Serve ports for the gateway."""
        return f"ray://{HOST}:{self.dashboard_port}?gcs={self.gcs_address}&serve_port={self.ports.serve_http}"

    # -- command line -----------------------------------------------------------------------------------
    def _short_temp_dir(self) -> Path:
        preferred = self.home / "ray"
        if not self.user and len(str(preferred)) <= _MAX_TEMP_DIR:
            return preferred
        digest = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:10]
        root = Path("/tmp") / f"haihe-ray-{digest}"  # noqa: S108 - a per-instance dir, named for its home
        # Run as another account, the session dir stays out of the state directory (which that account must
        # not traverse): under /tmp, in a mode-700 dir of that account's (Ray makes its own temp dir 777).
        return root / "r" if self.user else root

    @property
    def private_root(self) -> Path:
        """The directory to remove on wipe: the temp dir, or its private parent when run as another account."""
        return self.temp_dir.parent if self.user else self.temp_dir

    def argv(self) -> list[str]:
        p = self.ports.ray
        ray_bin = Path(sys.executable).parent / "ray"
        return [
            str(ray_bin) if ray_bin.exists() else "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address", HOST,
            "--port", str(p(GCS)),
            "--dashboard-host", HOST,
            "--dashboard-port", str(p(DASHBOARD)),
            "--ray-client-server-port", str(p(CLIENT_SERVER)),
            "--node-manager-port", str(p(NODE_MANAGER)),
            "--object-manager-port", str(p(OBJECT_MANAGER)),
            "--dashboard-agent-listen-port", str(p(AGENT_LISTEN)),
            "--dashboard-agent-grpc-port", str(p(AGENT_GRPC)),
            "--runtime-env-agent-port", str(p(RUNTIME_ENV_AGENT)),
            "--metrics-export-port", str(p(METRICS_EXPORT)),
            "--min-worker-port", str(p(WORKER_MIN)),
            "--max-worker-port", str(p(WORKER_MAX)),
            "--num-cpus", str(self.num_cpus),
            "--object-store-memory", str(self.object_store_bytes),
            "--temp-dir", str(self.temp_dir),
            "--disable-usage-stats",
            "--include-dashboard", "true",
        ]  # fmt: skip

    def launch_argv(self) -> list[str]:
        """``argv()``, under ``setpriv`` as :attr:`user` when set: setpriv execs, so the pid we keep is Ray's own
        (runuser would stay as a root parent)."""
        if not self.user:
            return self.argv()
        return ["setpriv", f"--reuid={self.user}", f"--regid={RAY_GROUP}", "--init-groups", "--", *self.argv()]

    def env(self) -> dict[str, str]:
        env = loopback_env()
        env["DASHBOARD_METRIC_PORT"] = str(self.ports.ray(DASHBOARD_METRIC))
        env["AUTOSCALER_METRIC_PORT"] = str(self.ports.ray(AUTOSCALER_METRIC))
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env.pop("RAY_ADDRESS", None)  # an inherited address would make `ray start` join another cluster
        if self.user:
            env["HOME"] = env["TMPDIR"] = str(self.temp_dir)  # never root's (private) home
            for key in [k for k in env if k.startswith(("AWS_", "MLFLOW_", "HAIHE_", "MINIO_"))]:
                env.pop(key)  # the platform's keys and settings never reach Ray processes (and so jobs)
        env["HAIHE_RAY_TEMP_DIR"] = str(self.temp_dir)  # where job sandboxes find the session dir
        return env

    # -- lifecycle --------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.process.is_running()

    def is_ready(self) -> bool:
        """The GCS listens and the dashboard's Jobs API answers (the job agent registered)."""
        if not port_open(HOST, self.ports.ray(GCS)):
            return False
        import httpx

        try:
            r = httpx.get(f"{self.dashboard_url}/api/jobs/", timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def start(self, timeout: float = 60.0) -> None:
        """Start the head (no-op if this home's head already runs) and wait until the Jobs API answers."""
        if self.is_running():
            wait_until(self.is_ready, timeout=timeout, what="ray head", log_path=self.process.log_path)
            return
        self._prepare_dirs()
        self.process.start()
        try:
            wait_until(
                self.is_ready,
                timeout=timeout,
                what="ray head",
                log_path=self.process.log_path,
                alive=self.process.is_running,
            )
        except Exception:
            self.stop()
            raise
        self._guard()

    def _guard_sets(self) -> tuple[list[int], list[int]]:
        """(every port of this head, its control ports): Slurm jobs may use none of them, Ray's own jobs not the
        control ports (the Jobs API would let a sandboxed job submit an unsandboxed one; Serve's HTTP proxy would
        let a job call any org's endpoint without a key, its rate limit or its meter: only the gateway may)."""
        every = [self.ports.ray(i) for i in range(100)] + [self.ports.serve_http]
        control = [self.ports.ray(DASHBOARD), self.ports.ray(CLIENT_SERVER), self.ports.serve_http]
        return every, control

    def _guard(self) -> None:
        if not self.user:
            return
        every, control = self._guard_sets()
        firewall.reject_from(every, gids=[JOBS_GROUP])
        firewall.reject_from(control, gids=[RAY_GROUP])

    def _prepare_dirs(self) -> None:
        if not self.user:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            return
        # its own primary group (the firewall tells Ray's processes from Slurm jobs by it), and the jobs group for
        # the traverse grants to the runtime
        ensure_user(self.user, group=RAY_GROUP, extra_groups=(JOBS_GROUP,))
        grant_traverse(runtime_paths(), group=JOBS_GROUP)  # e.g. the venv's python under /root/.pyenv
        private_dir(self.private_root, owner=self.user, mode=0o700)
        private_dir(self.temp_dir, owner=self.user, mode=0o700)

    def stop(self, timeout: float = 1.0) -> bool:
        """SIGTERM the head's process group; then SIGKILL the strays that detached into their own sessions.

        A short grace: Ray's own orderly shutdown takes ~20 s and saves nothing (the head keeps no state the
        platform needs; running jobs end either way), and `haihe up` must stop within seconds.

        Ray puts workers in their own process groups and job drivers in their own sessions, so the group
        signal does not reach them; we note the head's whole process tree first and finish it off by pid.
        """
        pid = self.process.pid()
        tree = _descendants(pid) if pid is not None and pid_alive(pid) else {}
        stopped = self.process.stop(timeout=timeout)
        if self.user:
            every, control = self._guard_sets()
            firewall.allow_again(every, gids=[JOBS_GROUP])
            firewall.allow_again(control, gids=[RAY_GROUP])
        strays = {p: t for p, t in tree.items() if _start_time(p) == t}
        for p, t in self._marked().items():
            strays.setdefault(p, t)
        for p in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while any(pid_alive(p) for p in strays) and time.monotonic() < deadline:
            time.sleep(0.1)
        return stopped or bool(strays)

    def _marked(self) -> dict[int, int]:
        """This head's processes by argv: Ray puts its temp dir (or a session dir below it) on argv."""
        marker = re.compile(re.escape(str(self.temp_dir)) + r"(/|\s|$)")
        found: dict[int, int] = {}
        for p, (_, cmdline, start) in _proc_table().items():
            if p != os.getpid() and marker.search(cmdline):
                found[p] = start
        return found

    def wipe(self) -> None:
        """Remove the head's temp dir (sessions, logs, spilled objects); only when stopped."""
        if not self.is_running():
            shutil.rmtree(self.private_root, ignore_errors=True)


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, cmdline, start time in clock ticks) for every process we can read."""
    table: dict[int, tuple[int, str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # the command name in parentheses may hold spaces: split after the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), cmdline, int(fields[19]))
    return table


def _start_time(pid: int) -> int | None:
    """A process's start time, to tell it from a later process that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _descendants(root: int) -> dict[int, int]:
    """Every process below ``root`` (pid -> start time), ``root`` included."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for p, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        p = todo.pop()
        if p in table and p not in out:
            out[p] = table[p][2]
            todo.extend(children.get(p, []))
    return out
