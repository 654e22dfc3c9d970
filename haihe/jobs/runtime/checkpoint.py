"""Checkpoints every N steps and on a stop signal, newest K kept, resume from the newest.

Slurm sends SIGUSR1 ahead of the walltime (``--signal=USR1@<s>``) and SIGTERM on preemption or ``scontrol requeue``;
either makes :meth:`Checkpointer.step_end` write a checkpoint at the end of the current step, wait until every rank
is there, and raise :class:`RequeueRequested` (the runtime exits ``ExitCode.REQUEUE``). The ranks agree on the stop
step (``agree``: an all-reduce), because a signal may reach one rank a step before another.

Checkpoints are ``step-<000000012>.pt`` files (``torch.save`` of a state dict) in a :class:`CheckpointStore`: a local
directory (written to a temporary name, then renamed) or an S3 prefix (one PUT; S3 shows an object only when it is
complete). Only rank 0 writes; every rank reads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol
from urllib.parse import urlsplit

from haihe.errors import InvalidInput, NotFound
from haihe.jobs.runtime.contract import RequeueRequested

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^step-(\d{9})\.pt$")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class CheckpointStore(Protocol):
    """Where checkpoint files live (four verbs)."""

    uri: str

    def write(self, name: str, data: bytes) -> None: ...

    def read(self, name: str) -> bytes: ...

    def names(self) -> list[str]: ...

    def delete(self, name: str) -> None: ...


class LocalDirStore:
    """A directory on a shared or local file system."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / name)  # readers never see half a file
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"checkpoint {name} not found in {self.root}") from None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name).unlink()


class ObjectStoreCheckpoints:
    """A prefix in a bucket, over the datasets library's ``ObjectStore`` seam (MinIO client, or its memory fake)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{store.bucket}/{self.prefix}"

    def write(self, name: str, data: bytes) -> None:
        self.store.put(self.prefix + name, data)

    def read(self, name: str) -> bytes:
        from haihe.datasets.store import read_all

        return read_all(self.store, self.prefix + name)

    def names(self) -> list[str]:
        return sorted(o.key[len(self.prefix) :] for o in self.store.list(self.prefix) if not o.is_dir)

    def delete(self, name: str) -> None:
        self.store.delete([self.prefix + name])


def open_store(uri: str, *, endpoint: str = "", access_key: str = "", secret_key: str = "",
               credentials: Any = None) -> CheckpointStore:
    """``s3://bucket/prefix`` (needs the endpoint and keys, or a credentials provider) or a local directory →
    a CheckpointStore."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidInput(f"HAIHE_CHECKPOINT_URI={uri!r} names no bucket", field="HAIHE_CHECKPOINT_URI")
        if not endpoint:
            raise InvalidInput("HAIHE_S3_ENDPOINT is needed for s3:// checkpoints", field="HAIHE_S3_ENDPOINT")
        from haihe.datasets.store import MinioStore

        return ObjectStoreCheckpoints(MinioStore(endpoint, access_key, secret_key, parts.netloc,
                                                 credentials=credentials), parts.path)
    if parts.scheme not in ("", "file"):
        raise InvalidInput(f"HAIHE_CHECKPOINT_URI={uri!r}: use s3://bucket/prefix or a path",
                           field="HAIHE_CHECKPOINT_URI")  # fmt: skip
    return LocalDirStore(parts.path if parts.scheme == "file" else uri)


class StopSignals:
    """Remembers the first SIGTERM/SIGUSR1; handlers are installed only from the main thread (Ray Train runs the
    train loop in another thread: there the runtime's signal forwarding or Ray's own stop applies)."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning("received %s: will checkpoint at the end of this step and exit for requeue",
                        signal.Signals(signum).name)  # fmt: skip

    def trigger(self, signum: int) -> None:
        """Record a stop as if the signal had arrived."""
        self._handle(signum, None)

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict[str, Any]
    name: str


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.pt"


def _serialise(state: Mapping[str, Any]) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return buf.getvalue()


def _deserialise(data: bytes, map_location: str) -> dict[str, Any]:
    import torch

    loaded = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if not isinstance(loaded, dict):
        raise InvalidInput("checkpoint does not hold a state dict", field="HAIHE_CHECKPOINT_URI")
    return loaded


class Checkpointer:
    """Periodic and on-signal checkpoints for a training loop; see the module docstring."""

    def __init__(
        self,
        store: CheckpointStore | None,
        *,
        every: int = 0,
        keep: int = 2,
        writer: bool = True,
        signals: StopSignals | None = None,
        agree: Callable[[bool], bool] | None = None,
        barrier: Callable[[], None] | None = None,
        check_every: int = 1,
    ) -> None:
        if keep < 1:
            raise InvalidInput("checkpoint keep must be at least 1", field="HAIHE_CHECKPOINT_KEEP")
        self.store = store
        self.every = every
        self.keep = keep
        self.writer = writer
        self.signals = signals or StopSignals()
        self._agree = agree or (lambda flag: flag)
        self._barrier = barrier or (lambda: None)
        self.check_every = max(1, check_every)  # agree on stop signals every N steps (all ranks count alike)
        self.saved: list[int] = []  # steps this process wrote (for logs and tests)

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        if self.store is None:
            return []
        found = (_NAME_RE.fullmatch(n) for n in self.store.names())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self, map_location: str = "cpu") -> Checkpoint | None:
        """The newest checkpoint, or None to start from scratch (every rank calls this)."""
        steps = self.steps()
        if not steps or self.store is None:
            return None
        name = checkpoint_name(steps[-1])
        state = _deserialise(self.store.read(name), map_location)
        log.info("resuming from %s/%s", self.store.uri.rstrip("/"), name)
        return Checkpoint(steps[-1], state, name)

    def due(self, step: int) -> bool:
        return self.enabled and self.every > 0 and step > 0 and step % self.every == 0

    def save(self, step: int, state: Mapping[str, Any]) -> str | None:
        """Write ``state`` as the checkpoint of ``step`` (rank 0 only), then drop all but the newest ``keep``."""
        if self.store is None or not self.writer:
            return None
        name = checkpoint_name(step)
        self.store.write(name, _serialise({**state, "step": step}))
        self.saved.append(step)
        for old in self.steps()[: -self.keep]:
            self.store.delete(checkpoint_name(old))
        return name

    def step_end(self, step: int, state: Callable[[], Mapping[str, Any]]) -> None:
        """Call after each optimizer step: saves when due, and on a stop signal saves and raises RequeueRequested."""
        stop = step % self.check_every == 0 and self._agree(self.signals.received is not None)
        if (stop or self.due(step)) and self.writer and self.store is not None:
            self.save(step, state())
        if stop:
            self._barrier()  # no rank leaves (and gets its siblings killed) before the checkpoint is written
            raise RequeueRequested(step, self.signals.received or signal.SIGTERM)
