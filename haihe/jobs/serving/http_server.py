"""A plain HTTP model server for Slurm serving jobs: the same predictor and batching as the Ray deployment.

``GET /healthz`` answers 200 once the model is loaded; ``POST /predict {"rows": [...]}`` returns
``{"outputs": [...]}``. When ready it prints ``HAIHE_SERVING_ADDRESS=http://host:port`` to its log (and writes the
address to ``--address-file`` when given): the platform reads it back through the scheduler to route requests.
Request bodies are never logged. Only the standard library is used, so a compute node needs no web framework.
"""

from __future__ import annotations

import json
import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from haihe import names
from haihe.jobs.serving.batcher import MicroBatcher
from haihe.jobs.serving.predictor import Predictor

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 2**20


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


class ModelHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], batcher: MicroBatcher, model: str) -> None:
        super().__init__(address, _Handler)
        self.batcher = batcher
        self.model = model


class _Handler(BaseHTTPRequestHandler):
    server: ModelHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: the gateway pools connections

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logs: they would hold client addresses and paths, never needed here."""

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"ready": True, "model": self.server.model})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != "/predict":
            self._reply(404, {"error": "not found"})
            return
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": "body too large"})
            return
        try:
            rows = json.loads(self.rfile.read(length))["rows"]
            if not isinstance(rows, list):
                raise ValueError("rows must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(400, {"error": f"bad request: {type(exc).__name__}"})
            return
        try:
            outputs = self.server.batcher.submit(rows).result(timeout=120)
        except Exception as exc:  # the model failed on this input: say so without echoing the payload
            self._reply(500, {"error": f"model error: {type(exc).__name__}"})
            return
        self._reply(200, {"outputs": [_jsonable(o) for o in outputs]})


def advertised_host(bind_host: str) -> str:
    """An address the platform can reach: the bind address, or this node's resolvable name, else loopback."""
    if bind_host not in ("0.0.0.0", ""):  # noqa: S104 - comparing, not binding
        return bind_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def serve_forever(predictor: Predictor, *, model: str, host: str = "0.0.0.0", port: int = 0,  # noqa: S104
                  max_batch_size: int = 16, batch_wait_ms: float = 5.0, address_file: Path | None = None) -> None:
    batcher = MicroBatcher(predictor.predict, max_batch_size, batch_wait_ms / 1000.0)
    server = ModelHTTPServer((host, port), batcher, model)
    address = f"http://{advertised_host(host)}:{server.server_address[1]}"
    if address_file is not None:
        tmp = address_file.with_suffix(".tmp")
        tmp.write_text(address + "\n")
        tmp.replace(address_file)
    print(f"{names.SERVING_ADDRESS_MARKER}{address}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        batcher.close()
