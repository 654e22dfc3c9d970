"""Keep the embedded stack's children running: restart a crashed child with backoff, leave the others alone.

``haihe up`` (attached, or the background copy that ``--detach`` leaves) runs :meth:`Supervisor.run`. Each child
is probed by a cheap liveness check (its pid), never restarted while it is merely slow. A child that dies is
started again after a backoff (1 s, 2 s, 4 s … 30 s); one that dies ``crash_loop[0]`` times within
``crash_loop[1]`` seconds is given up on, with the reason and the tail of its log, and the others keep running.
Every change is written to a small JSON file (``supervisor.json``) that ``haihe status`` reads: per child its state,
restarts and last exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Clock = Callable[[], float]
Say = Callable[[str], None]
BACKOFF_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


@dataclass
class Child:
    """One supervised child: how to tell it is alive, how to start it again, where its log is."""

    name: str
    alive: Callable[[], bool]
    restart: Callable[[], None]
    log_path: Path | None = None


@dataclass
class ChildState:
    state: str = "running"  # running | restarting | crash-loop
    restarts: int = 0
    last_exit: float | None = None  # wall-clock time of the last death seen
    last_error: str = ""
    deaths: list[float] = field(default_factory=list)  # monotonic times of recent deaths (crash-loop window)
    next_try: float | None = None  # monotonic time of the next restart attempt


class Supervisor:
    def __init__(self, children: Mapping[str, Child], state_path: Path | None = None, *,
                 backoff: tuple[float, ...] = BACKOFF_S, crash_loop: tuple[int, float] = (5, 120.0),
                 clock: Clock = time.monotonic, say: Say | None = None) -> None:
        self.children = dict(children)
        self.state_path = state_path
        self.backoff = backoff
        self.crash_loop = crash_loop
        self.clock = clock
        self.say = say or (lambda _m: None)
        self.states = {name: ChildState() for name in self.children}
        self._write()

    def step(self) -> None:
        """One round: notice deaths, restart what is due, give up on crash loops."""
        now = self.clock()
        changed = False
        for name, child in self.children.items():
            st = self.states[name]
            if st.state == "crash-loop":
                continue
            if st.state == "running":
                if _safe(child.alive):
                    continue
                st.deaths = [t for t in st.deaths if now - t <= self.crash_loop[1]] + [now]
                st.last_exit = time.time()
                changed = True
                if len(st.deaths) >= self.crash_loop[0]:
                    st.state = "crash-loop"
                    st.next_try = None
                    st.last_error = (f"{name} died {len(st.deaths)} times within {self.crash_loop[1]:.0f}s; "
                                     "not restarting it again")
                    tail = _tail(child.log_path)
                    self.say(f"{st.last_error}" + (f"; last lines of {child.log_path}:\n{tail}" if tail else ""))
                    continue
                delay = self.backoff[min(len(st.deaths) - 1, len(self.backoff) - 1)]
                st.state, st.next_try = "restarting", now + delay
                self.say(f"{name} exited; restarting in {delay:.0f}s")
            if st.state == "restarting" and st.next_try is not None and now >= st.next_try:
                try:
                    child.restart()
                except Exception as exc:  # a failed start counts as another death, with backoff
                    st.last_error = f"restart failed: {exc}"[:500]
                    st.deaths.append(now)
                    if len(st.deaths) >= self.crash_loop[0]:
                        st.state = "crash-loop"
                        self.say(f"{name}: {st.last_error}; not restarting it again")
                    else:
                        st.next_try = now + self.backoff[min(len(st.deaths) - 1, len(self.backoff) - 1)]
                    changed = True
                    continue
                st.state, st.next_try = "running", None
                st.restarts += 1
                changed = True
                self.say(f"{name} restarted (restart {st.restarts})")
        if changed:
            self._write()

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.wait(interval):
            self.step()

    def given_up(self) -> list[str]:
        return [n for n, st in self.states.items() if st.state == "crash-loop"]

    def snapshot(self) -> dict[str, Any]:
        return {name: {k: v for k, v in asdict(st).items() if k not in ("deaths", "next_try")}
                for name, st in self.states.items()}

    def _write(self) -> None:
        if self.state_path is None:
            return
        tmp = self.state_path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "children": self.snapshot()}, f)
            os.replace(tmp, self.state_path)


def read_state(path: Path) -> dict[str, Any]:
    """What a supervisor last wrote, or {} (no supervisor, or it is gone: its pid is checked)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    pid = data.get("pid")
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return {}
    except PermissionError:
        pass
    return dict(data.get("children") or {})


def _safe(probe: Callable[[], bool]) -> bool:
    try:
        return bool(probe())
    except Exception:
        return False


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
