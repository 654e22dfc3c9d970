"""Helpers for the storage/tracking/database fault tests: a throttling TCP relay on a fixed port, the API as its
own process on a fixed port, and the fault tests' own port plan (every port in 32400-33999 comes from here)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import wait_until
from haihe.serve import api_process as start_api

T = TypeVar("T")
MiB = 1024 * 1024

# One plan per test, so each test owns its services' ports and none of them depends on another's state.
UPLOAD, STAGING, TRACKING, DATABASE = PortPlan(32400), PortPlan(32420), PortPlan(32440), PortPlan(32460)
RELAY_OFFSET, API_OFFSET = 5, 10  # relay = base+5, API = base+10


class Relay:
    """A TCP relay on a fixed port in front of a service; ``throttle`` caps one direction's rate so a transfer
    takes seconds, and ``sent``/``received`` count the bytes that crossed (client→server, server→client)."""

    def __init__(self, port: int, upstream_port: int, *, rate: int, throttle: str = "up") -> None:
        if throttle not in ("up", "down"):
            raise ValueError("throttle is 'up' or 'down'")
        self.port, self.upstream_port, self.rate, self.throttle = port, upstream_port, rate, throttle
        self.sent = self.received = 0
        self._lock = threading.Lock()
        self._stop = False
        self._sock = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=3)
            except OSError:
                client.close()  # the service is down: the client sees its connection dropped at once
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        slow = up == (self.throttle == "up")
        try:
            while data := src.recv(64 * 1024):
                dst.sendall(data)
                with self._lock:
                    if up:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
                if slow:
                    time.sleep(len(data) / self.rate)  # the rate limit itself, not a wait for anything
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop = True
        self._sock.close()


class Api:
    """The platform's API server as its own process (uvicorn), on a fixed port, with the given settings."""

    def __init__(self, home: Path, port: int, env: Mapping[str, str]) -> None:
        self.home, self.url = home, f"http://127.0.0.1:{port}"
        full = {**os.environ, "HAIHE_HOME": str(home), "HAIHE_PUBLIC_URL": self.url,
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env}
        self.process = start_api("api", port, log_dir=home, env=full)

    def start(self) -> Api:
        self.home.mkdir(parents=True, exist_ok=True)
        self.process.start()
        wait_until(lambda: httpx.get(self.url + "/healthz", timeout=2).status_code == 200, timeout=120,
                   what="api", log_path=self.process.log_path, alive=self.process.is_running)
        return self

    def stop(self) -> None:
        self.process.stop()

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace") if self.process.log_path.exists() else ""


@contextlib.contextmanager
def api_process(home: Path, port: int, env: Mapping[str, str]) -> Iterator[Api]:
    api = Api(home, port, env)
    try:
        yield api.start()
    finally:
        api.stop()


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """(result, seconds it took) - a figure to record, never asserted against a bound."""
    start = time.monotonic()
    result = fn()
    return result, round(time.monotonic() - start, 3)


def schedulers_env(schedulers: Mapping[str, str], default: str) -> dict[str, str]:
    return {"HAIHE_SCHEDULERS": json.dumps(dict(schedulers)), "HAIHE_DEFAULT_SCHEDULER": default,
            "HAIHE_RECONCILE_INTERVAL_S": "1"}


def error_code(response: httpx.Response) -> Any:
    try:
        return response.json().get("error", {}).get("code")
    except ValueError:
        return None
