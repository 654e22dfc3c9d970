"""Serve the API and portal from one of several processes that share a port (``SO_REUSEPORT``).

``haihe up`` runs the app in ``--api-workers`` processes (2 by default), each started as
``python -m haihe.serve --port 8000``: each binds its own socket with ``SO_REUSEPORT`` and the kernel spreads new
connections over the live ones. A worker that dies (``kill -9``, a crash) drops only the requests it was serving;
its siblings keep answering (the inference gateway included) while ``haihe up`` restarts it, and the leader lease
moves the background work to a survivor. The socket is bound before the app starts but listens only after the
app's startup has finished, so no connection is routed to a worker that cannot serve yet. ``--ready-file`` is
written (with the pid) once this worker accepts connections: its supervisor waits for it after a restart.

:func:`api_process` is the one way to start such a process: ``haihe up`` starts its workers with it, and so does
every test that needs the real API server (``--app`` names another app factory, e.g. the browser tests' demo).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from haihe.cluster.procs import ManagedProcess

APP = "haihe.server:create_app"


def api_process(name: str, port: int, *, log_dir: Path, env: Mapping[str, str] | None = None,
                host: str = "127.0.0.1", app: str = APP, ready_file: Path | None = None, cwd: Path | None = None,
                umask: int | None = None, access_log: bool = False) -> ManagedProcess:
    """An API server process (``python -m haihe.serve``) named ``name``: its log and pid file in ``log_dir``,
    configured by ``HAIHE_*`` variables in ``env``; ``start()`` it, ``stop()`` it. ``access_log``: a line per
    request in the log (off by default: it costs CPU on every request)."""
    argv = [sys.executable, "-m", "haihe.serve", "--host", host, "--port", str(port), "--app", app]
    if access_log:
        argv.append("--access-log")
    if ready_file is not None:
        argv += ["--ready-file", str(ready_file)]
    return ManagedProcess(name, argv, log_path=log_dir / f"{name}.log", pid_path=log_dir / f"{name}.pid",
                          env=dict(env) if env is not None else None, cwd=cwd, umask=umask)


def shared_socket(host: str, port: int) -> socket.socket:
    """A bound, not yet listening TCP socket that other processes may bind too."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready_file: Path | None) -> None:
        super().__init__(config)
        self.ready_file = ready_file

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.ready_file is not None and self.started and not self.should_exit:
            tmp = self.ready_file.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.replace(self.ready_file)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m haihe.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--ready-file", type=Path, default=None)
    ap.add_argument("--app", default=APP, help="The app factory, module:function.")
    ap.add_argument("--access-log", action="store_true", help="Log a line per request.")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--timeout-keep-alive", type=int, default=30)
    args = ap.parse_args(argv)
    if args.ready_file is not None:
        args.ready_file.unlink(missing_ok=True)
    config = uvicorn.Config(args.app, factory=True, host=args.host, port=args.port, access_log=args.access_log,
                            log_level=args.log_level, timeout_keep_alive=args.timeout_keep_alive)
    _Server(config, args.ready_file).run(sockets=[shared_socket(args.host, args.port)])


if __name__ == "__main__":
    main()
