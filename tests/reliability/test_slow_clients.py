"""Slow clients against a REAL uvicorn: a body dribbled a byte at a time (slowloris) is cut off with 408.

The server runs ``haihe.server:create_app`` as ``haihe up`` does, with ``HAIHE_BODY_READ_TIMEOUT_S`` set low; raw
sockets send the headers of a dataset-upload start and of an inference request, then one byte every 0.2 s. Both
must be answered 408 and closed, and a normal request must be served while they dribble.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from haihe.cluster.procs import ManagedProcess, port_open, wait_until
from haihe.serve import api_process
from tests.fixtures.figures import Figures

READ_TIMEOUT_S = 2.0
DRIBBLE_EVERY_S = 0.2
CUTOFF_BOUND_S = 30.0  # generous: the box is shared; the point is "cut off", not "how fast"


def _port_in_range() -> int:
    """A free port inside this suite's range (HAIHE_TEST_PORT_BASE + 950..999)."""
    base = int(os.environ.get("HAIHE_TEST_PORT_BASE", "21000"))
    for port in range(base + 950, base + 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {base + 950}..{base + 999}")


@dataclass
class Server:
    port: int
    proc: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("slow")
    port = _port_in_range()
    env = {**os.environ, "HAIHE_HOME": str(home), "HAIHE_DATABASE_URL": f"sqlite:///{home / 'haihe.db'}",
           "HAIHE_RECONCILE_INTERVAL_S": "0", "HAIHE_MAINTENANCE_INTERVAL_S": "0", "HAIHE_SCHEDULERS": "{}",
           "HAIHE_BODY_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
    proc = api_process("api", port, log_dir=home, env=env, cwd=home)  # keep-alive 30 s, no access log
    proc.start()
    try:
        wait_until(lambda: port_open("127.0.0.1", port) and httpx.get(f"http://127.0.0.1:{port}/healthz").is_success,
                   timeout=60, what="uvicorn", log_path=home / "api.log", alive=proc.is_running)
        yield Server(port, proc)
    finally:
        proc.stop()


def _dribble(port: int, path: str, declared: int = 4096) -> tuple[int, bytes, float, int]:
    """Send headers, then a byte every DRIBBLE_EVERY_S until the server answers; (status, body, seconds, sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sock.sendall(head)
    t0 = time.monotonic()
    sent = 0
    reply = b""
    sock.settimeout(DRIBBLE_EVERY_S)
    with contextlib.closing(sock):
        while time.monotonic() - t0 < CUTOFF_BOUND_S:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = None
            if chunk == b"":
                break  # closed by the server
            if chunk:
                reply += chunk
                if b"\r\n\r\n" in reply and _complete(reply):
                    break
                continue
            if sent < declared - 1:
                try:
                    sock.sendall(b"{" if sent == 0 else b" ")
                except OSError:
                    break
                sent += 1
        elapsed = time.monotonic() - t0
    head_text, _, body = reply.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1]) if head_text.startswith(b"HTTP/1.1 ") else 0
    return status, body, elapsed, sent


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


@pytest.mark.parametrize("path", ["/api/v1/orgs/acme/datasets/images/versions", "/v2/models/digits/infer"],
                         ids=["dataset-upload-start", "oip-infer"])
def test_dribbled_body_is_cut_off_with_408_while_others_are_served(server: Server, path: str,
                                                                   figures: Figures) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        slow = pool.submit(_dribble, server.port, path)
        # served while the slow client dribbles: the event loop is not held by the waiting request
        served_while_dribbling = 0
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not slow.done() and served_while_dribbling < 5:
                r = client.get("/healthz")
                assert r.status_code == 200
                r = client.post("/api/v1/auth/token", json={"username": "nobody", "password": "x" * 12})
                assert r.status_code in (401, 429), r.text  # a full body is read and answered normally
                served_while_dribbling += 1
        status, body, elapsed, sent = slow.result()
    assert served_while_dribbling >= 1
    assert status == 408, (status, body[:300])
    assert b"request body not received" in body
    assert elapsed < CUTOFF_BOUND_S
    assert sent >= 2  # it really was dribbling, not idle
    figures.record(f"test_dribbled_body_is_cut_off_with_408[{path}]", "headers, then 1 body byte per 0.2 s",
                   {"body_read_timeout_s": READ_TIMEOUT_S, "cutoff_s": round(elapsed, 2), "bytes_dribbled": sent,
                    "normal_requests_served_meanwhile": served_while_dribbling})


def test_idle_body_is_cut_off_and_the_connection_closed(server: Server) -> None:
    """Headers promising a body, then silence: 408 after the per-chunk timeout, and the socket is closed."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=CUTOFF_BOUND_S)
    with contextlib.closing(sock):
        sock.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"request_timeout" in reply or b"request body not received" in reply


def test_a_fast_large_body_is_not_cut_off(server: Server) -> None:
    """Time is earned by sending: a 900 kB body sent in pieces over longer than the timeout still gets through."""
    piece = 90_000
    body = b'{"username": "nobody", "password": "' + b"x" * (piece * 10) + b'"}'
    pause = READ_TIMEOUT_S / 4

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), piece):
            yield body[i:i + piece]
            time.sleep(pause)

    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/api/v1/auth/token", content=chunks(),
                        headers={"content-type": "application/json", "content-length": str(len(body))})
    assert r.status_code in (401, 422, 429), r.text  # answered on its merits, not 408
