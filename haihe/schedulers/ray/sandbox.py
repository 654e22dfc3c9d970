"""Per-job bubblewrap sandbox for Ray job entrypoints (Ray itself has no per-job user isolation).

Every job on a shared Ray cluster runs as the one Ray account, so the sandbox is what keeps jobs apart: the
entrypoint runs under ``bwrap`` with read-only system paths and runtime (venv, base Python, Haihe), a private
``/tmp``, a private writable work dir (a copy of the job's working dir, mounted where Ray put the original so
``PYTHONPATH`` still works), its own PID and IPC namespaces (it can neither see nor signal other processes) and
nothing else: not the platform's state directory, not other jobs' work dirs, not the Ray session dir. The
network is shared: the job reaches the platform's MLflow proxy, S3 and — for ``ray_train`` drivers, which are Ray
clients — the GCS and the raylet's sockets (bound read-only; ``connect`` needs no write access).

Runs on the Ray node as the entrypoint prefix rendered by haihe.schedulers.ray.translate::

    python -m haihe.schedulers.ray.sandbox --job TAG [--ray-client] -- COMMAND...

:func:`bwrap_argv` is the pure part (unit tested); :func:`main` finds the paths, makes the work dir, runs the
sandbox and removes the work dir afterwards. Without ``bwrap`` it refuses to run (exit 126): never unsandboxed.
Ray Train workers are Ray actors in Ray's own worker processes, outside any entrypoint's sandbox (docs/security.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

EXIT_NO_SANDBOX = 126  # the command cannot run: no bwrap on this node (or it failed to set up)
WORK_ROOT = "haihe_jobs"  # under the Ray session dir: <session>/haihe_jobs/<job>, mode 700
TEMP_DIR_ENV = "HAIHE_RAY_TEMP_DIR"  # set by RayHead: where the session dirs are (Ray's default: /tmp/ray)
NODE_ID_ENV = "HAIHE_RAY_NODE_ID"  # read by the ray_train launcher: Ray finds its raylet with ps otherwise
SYSTEM_RO = ("/usr", "/etc", "/opt")  # read-only system paths (Debian's merged /usr: /bin, /lib… are symlinks)
MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SANDBOX_TMP = "/tmp"  # noqa: S108 - inside the sandbox: a fresh private tmpfs
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class SandboxPaths:
    """Host paths one sandbox is built from."""

    work_dir: Path  # private, writable: the job's own copy of its working dir
    mount_at: Path  # where the job sees it (and its cwd): Ray's path of the working dir
    runtime: tuple[Path, ...] = ()  # read-only: venv, base Python, the Haihe package
    ray_sockets: Path | None = None  # ray_train drivers: <session>/sockets (raylet, plasma store), read-only
    ray_logs: Path | None = None  # ray_train drivers: <session>/logs, hidden behind a private tmpfs
    ray_node_id: str | None = None  # ray_train drivers: the local raylet's node id (ps cannot see it in here)
    env_cache: Path | None = None  # jobs with their own Python environment: the org's cache, writable, kept
    system: tuple[str, ...] = field(default=SYSTEM_RO)


def job_dir_name(job: str) -> str:
    name = _UNSAFE.sub("_", job).strip("._") or "job"
    return name[:100]


def _symlink_args(links: Sequence[str]) -> list[str]:
    out: list[str] = []
    for link in links:
        p = Path(link)
        if p.is_symlink():
            out += ["--symlink", os.readlink(p), link]
        elif p.is_dir():
            out += ["--ro-bind", link, link]
    return out


def bwrap_argv(job: str, paths: SandboxPaths, command: Sequence[str], *, bwrap: str = "bwrap",
               links: Sequence[str] = MERGED_USR_LINKS) -> list[str]:
    """The ``bwrap`` command line for one job (pure apart from reading which of ``links`` are symlinks)."""
    argv = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", f"haihe-{job_dir_name(job)}"[:63]]
    for p in paths.system:
        argv += ["--ro-bind-try", p, p]
    argv += _symlink_args(links)
    argv += ["--ro-bind-try", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev", "--tmpfs", SANDBOX_TMP]
    system = tuple(Path(p) for p in paths.system)
    for rt in paths.runtime:
        if not any(rt == s or s in rt.parents for s in system):
            argv += ["--ro-bind", str(rt), str(rt)]
    if paths.ray_sockets is not None:
        argv += ["--ro-bind", str(paths.ray_sockets), str(paths.ray_sockets)]
    if paths.ray_logs is not None:
        argv += ["--tmpfs", str(paths.ray_logs)]
    if paths.ray_node_id:
        argv += ["--setenv", NODE_ID_ENV, paths.ray_node_id]
    if paths.env_cache is not None:
        cache = str(paths.env_cache)
        argv += ["--bind", cache, cache, "--setenv", "HAIHE_ENV_DIR", cache]
    argv += ["--bind", str(paths.work_dir), str(paths.mount_at), "--chdir", str(paths.mount_at),
             "--setenv", "HOME", str(paths.mount_at), "--setenv", "TMPDIR", SANDBOX_TMP,
             "--setenv", "HAIHE_JOB_WORKDIR", str(paths.mount_at), "--"]
    return argv + list(command)


# ---- on the node ----
def runtime_paths() -> tuple[Path, ...]:
    """This interpreter's venv, its base Python (symlink targets included) and the Haihe package."""
    import haihe

    found = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent,
             Path(haihe.__file__).resolve().parent]
    return tuple(dict.fromkeys(found))


def session_dir(cwd: Path, env: dict[str, str] | os._Environ[str]) -> Path | None:
    """The Ray session dir: from the working dir's path (``…/session_*/runtime_resources/…``), else
    ``$HAIHE_RAY_TEMP_DIR/session_latest``, else Ray's default ``/tmp/ray/session_latest``."""
    for p in (cwd, *cwd.parents):
        if p.name.startswith("session_") and (p / "sockets").is_dir():
            return p
    for temp in (env.get(TEMP_DIR_ENV), "/tmp/ray"):  # noqa: S108 - Ray's own default temp dir
        if temp and (Path(temp) / "session_latest").is_dir():
            return (Path(temp) / "session_latest").resolve()
    return None


def local_node_id(session: Path) -> str | None:
    """The node id of this session's raylet, from its command line (``--node_id=…``) in /proc."""
    marker = f"--session_dir={session}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/raylet") and marker in args:
            for a in args:
                if a.startswith(b"--node_id="):
                    return a.split(b"=", 1)[1].decode()
    return None


def prepare_work_dir(root: Path, job: str, source: Path | None) -> Path:
    """``root/<job>`` (mode 700) holding a copy of ``source`` (the Ray working dir), fresh each time."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    work = root / job_dir_name(job)
    shutil.rmtree(work, ignore_errors=True)
    if source is not None and source.is_dir():
        shutil.copytree(source, work, symlinks=True)
    else:
        work.mkdir()
    os.chmod(work, 0o700)
    return work


def env_cache_dir(base: Path, org: str) -> Path:
    """``base/haihe_envs/<org>`` (mode 700): job environments of one org, kept across its jobs (and Ray
    sessions); another org's jobs never see them. Jobs of one org share it, as they share the Ray account."""
    root = base / "haihe_envs"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = root / job_dir_name(org or "default")
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m haihe.schedulers.ray.sandbox")
    p.add_argument("--job", required=True, help="the platform's tag (Ray submission id)")
    p.add_argument("--ray-client", action="store_true", help="the command is a Ray driver (ray_train)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    ns = p.parse_args(list(argv))
    if ns.command and ns.command[0] == "--":
        ns.command = ns.command[1:]
    if not ns.command:
        p.error("no command given after --")
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print("haihe sandbox: bwrap (bubblewrap) is not installed on this Ray node; refusing to run the job "
              "unsandboxed", file=sys.stderr, flush=True)
        return EXIT_NO_SANDBOX
    cwd = Path.cwd()
    session = session_dir(cwd, os.environ)
    in_session = session is not None and session in cwd.parents
    root = (session / WORK_ROOT) if session is not None else Path(os.environ.get("TMPDIR", "/tmp")) / WORK_ROOT  # noqa: S108
    work = prepare_work_dir(root, ns.job, cwd if in_session else None)
    env_cache = None
    if os.environ.get("HAIHE_ENVIRONMENT"):
        base = session.parent if session is not None else root.parent
        env_cache = env_cache_dir(base, os.environ.get("HAIHE_ORG", ""))
    paths = SandboxPaths(
        work_dir=work,
        # a job without a working dir starts in Ray's cwd (the node's temp dir): give it its own dir instead
        mount_at=cwd if in_session else work,
        runtime=runtime_paths(),
        ray_sockets=(session / "sockets") if ns.ray_client and session is not None else None,
        ray_logs=(session / "logs") if ns.ray_client and session is not None else None,
        ray_node_id=local_node_id(session) if ns.ray_client and session is not None else None,
        env_cache=env_cache,
    )
    proc = subprocess.Popen(bwrap_argv(ns.job, paths, ns.command, bwrap=bwrap))

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        code = proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    raise SystemExit(main())
