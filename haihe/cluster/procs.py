"""Start, watch and stop the local service processes (S3 server, MLflow, Ray head, PostgreSQL, daemons).

Every service is a child started in its own session with its output in a log file and its pid in a pid file
under the state directory, so that ``haihe up`` (foreground) and the test fixtures (background, once per session)
use the same code, and a later run can find and stop what an earlier one left behind — by pid, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartupError(RuntimeError):
    """A service did not become ready; the message carries the tail of its log."""


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """``argv`` run as ``user`` through ``runuser`` (the caller is root), or as it is when no user is named."""
    return ["runuser", "-u", user, "--", *argv] if user else list(argv)


def run_step(argv: Sequence[str], *, what: str, timeout: float, user: str | None = None, umask: int = -1) -> None:
    """Run a one-off set-up command (``initdb``, ``juicefs format``) to its end, as ``user`` when one is named; a
    failure is a StartupError carrying the tail of its stderr."""
    done = subprocess.run(as_user(argv, user), capture_output=True, text=True, check=False, timeout=timeout,
                          umask=umask)
    if done.returncode != 0:
        raise StartupError(f"{what} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    log_path: Path | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``predicate`` until it is true or ``timeout`` passes; fail early if ``alive`` turns false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: S110 - a probe that raises simply means "not yet"
            pass
        if alive is not None and not alive():
            raise StartupError(f"{what}: process exited during start-up\n{tail(log_path) if log_path else ''}")
        if time.monotonic() > deadline:
            raise StartupError(f"{what}: not ready after {timeout:.0f}s\n{tail(log_path) if log_path else ''}")
        time.sleep(interval)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return not _zombie(pid)  # another's zombie (an init that reaps slowly, in a container) has ended too


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] == "Z"  # the state follows the command name, which may hold spaces


@dataclass
class ManagedProcess:
    """One long-running child with a pid file and a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    pid_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None  # run as this user (setpriv); for daemons that refuse root, services off root
    umask: int | None = None  # e.g. 0o077: whatever the service creates is private to its account

    def pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def start(self) -> int:
        """Start the child detached in its own session; returns its pid. Refuses if already running."""
        if self.is_running():
            raise StartupError(f"{self.name} already running (pid {self.pid()}, {self.pid_path})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        argv = list(self.argv)
        env = dict(os.environ if self.env is None else self.env)
        if self.user:
            # setpriv execs: the pid we keep is the service's own, so a crash of the service is seen as one (a
            # runuser parent would outlive it, or be killed alone and leave the service holding its port)
            import pwd

            pw = pwd.getpwnam(self.user)
            argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
            home = pw.pw_dir if os.path.isdir(pw.pw_dir) else str(self.cwd or self.log_path.parent)
            env.update({"HOME": home, "USER": self.user, "LOGNAME": self.user})
        with open(self.log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
                umask=-1 if self.umask is None else self.umask,
            )
        self.pid_path.write_text(str(proc.pid))
        self._proc = proc
        return proc.pid

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM the child's process group, wait, then SIGKILL. True if something was stopped."""
        pid = self.pid()
        if pid is None or not pid_alive(pid):
            if pid is not None:  # the leader died (a crash): its session's leftovers (e.g. workers) go too
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            self.pid_path.unlink(missing_ok=True)
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < deadline:
                if not pid_alive(pid):
                    break
                time.sleep(0.1)
            if not pid_alive(pid):
                break
        self.pid_path.unlink(missing_ok=True)
        return True


def start_service(
    proc: ManagedProcess,
    *,
    name: str,
    host: str,
    port: int,
    ready: Callable[[], bool],
    timeout: float,
    prepare: Callable[[], object] | None = None,
    stop: Callable[[], object] | None = None,
) -> None:
    """Start a local service the same way everywhere: reuse our running child; refuse a port another process
    holds; ``prepare`` (format, initdb) and start; wait until ``ready``; on failure stop what was started."""
    if not proc.is_running():
        if port_open(host, port):
            raise StartupError(f"{name}: port {host}:{port} is already taken by another process")
        if prepare is not None:
            prepare()
        proc.start()
    try:
        wait_until(ready, timeout=timeout, what=name, log_path=proc.log_path, alive=proc.is_running)
    except StartupError:
        (stop or proc.stop)()
        raise


class LocalService:
    """What the embedded stack's servers share: one managed process (``_process``), and readiness as an open port
    plus a real call that must succeed (``_answers``: a health check, an authenticated S3 call, ``SELECT 1``)."""

    host: str
    port: int

    def _process(self) -> ManagedProcess:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def stop(self) -> bool:
        return self._process().stop()

    def is_running(self) -> bool:
        return self._process().is_running()

    def is_ready(self) -> bool:
        return port_open(self.host, self.port) and self._answers()
