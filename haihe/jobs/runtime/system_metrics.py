"""CPU, memory, disk, network and GPU figures of the node, logged to the job's run every few seconds.

The metric names are MLflow's own (``system/cpu_utilization_percentage``, ``system/gpu_0_utilization_percentage``,
...), so MLflow's UI groups them as it does for its own monitor; this one logs through the runtime's REST client
and so does not import MLflow. It needs ``psutil`` (off without it, said in the log); GPU figures need NVIDIA's
``pynvml`` (``nvidia-ml-py``) and a driver, and are left out otherwise. A continued run (requeue) goes on from the
last step it logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from haihe.jobs.runtime.mlflow_rest import Metric

log = logging.getLogger(__name__)

PREFIX = "system/"
DEFAULT_EVERY_S = 10.0
MB = 1e6


class _Client(Protocol):
    def log_batch(self, run_id: str, metrics: Any = ..., params: Any = ..., tags: Any = ...) -> None: ...

    def latest_metrics(self, run_id: str) -> dict[str, Metric]: ...


def _gpu_reader() -> Callable[[], dict[str, float]] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no pynvml, no driver, no GPU: the other figures are still worth logging
        return None

    def figures(i: int, h: Any) -> dict[str, float]:
        memory = pynvml.nvmlDeviceGetMemoryInfo(h)
        out = {f"gpu_{i}_memory_usage_megabytes": memory.used / MB,
               f"gpu_{i}_memory_usage_percentage": 100.0 * memory.used / memory.total,
               f"gpu_{i}_utilization_percentage": float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)}
        try:  # some boards do not report power
            milliwatts = pynvml.nvmlDeviceGetPowerUsage(h)
            out[f"gpu_{i}_power_usage_watts"] = milliwatts / 1000
            out[f"gpu_{i}_power_usage_percentage"] = 100.0 * milliwatts / pynvml.nvmlDeviceGetEnforcedPowerLimit(h)
        except pynvml.NVMLError:
            pass
        return out

    def read() -> dict[str, float]:
        out: dict[str, float] = {}
        for i, h in enumerate(handles):
            try:
                out.update(figures(i, h))
            except pynvml.NVMLError as exc:  # a GPU that fell off the bus: the others are still reported
                log.debug("GPU %d not read: %s", i, exc)
        return out

    return read


class SystemSampler(threading.Thread):
    """A daemon thread: ``sample()`` every ``every`` seconds, logged as one batch at the next step; ``stop()``
    ends it. A failed write is dropped (these figures are not worth holding training for)."""

    def __init__(self, client: _Client, run_id: str, every: float = DEFAULT_EVERY_S) -> None:
        super().__init__(name="haihe-system-metrics", daemon=True)
        import psutil

        self._psutil, self.client, self.run_id, self.every = psutil, client, run_id, every
        self._halt = threading.Event()
        self._gpu = _gpu_reader()
        self._net = psutil.net_io_counters()
        psutil.cpu_percent()  # the first call only sets the baseline of the next
        self.step = 0
        self.logged = 0

    def sample(self) -> dict[str, float]:
        ps = self._psutil
        memory = ps.virtual_memory()
        disk = ps.disk_usage("/")
        net = ps.net_io_counters()
        out = {"cpu_utilization_percentage": ps.cpu_percent(),
               "system_memory_usage_megabytes": memory.used / MB, "system_memory_usage_percentage": memory.percent,
               "disk_usage_percentage": disk.percent, "disk_usage_megabytes": disk.used / MB,
               "disk_available_megabytes": disk.free / MB,
               "network_receive_megabytes": (net.bytes_recv - self._net.bytes_recv) / MB,
               "network_transmit_megabytes": (net.bytes_sent - self._net.bytes_sent) / MB}
        if self._gpu is not None:
            out.update(self._gpu())
        return out

    def run(self) -> None:
        try:
            known = [m.step for k, m in self.client.latest_metrics(self.run_id).items() if k.startswith(PREFIX)]
            self.step = max(known) + 1 if known else 0
        except Exception:  # a new run, or MLflow busy: start at 0
            self.step = 0
        while not self._halt.wait(self.every):
            now = int(time.time() * 1000)
            batch = [Metric(PREFIX + k, float(v), now, self.step) for k, v in self.sample().items()]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
                self.logged += 1
            except Exception as exc:
                log.debug("system metrics not logged: %s", exc)
            self.step += 1

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


def start(client: _Client, run_id: str, every: float = DEFAULT_EVERY_S) -> SystemSampler | None:
    try:
        sampler = SystemSampler(client, run_id, every)
    except ImportError:
        log.info("system metrics off: psutil is not installed")
        return None
    sampler.start()
    return sampler
