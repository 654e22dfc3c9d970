"""Run the user's command as a child process with the job's environment, forwarding stop signals to it.

Slurm signals the runtime (SIGUSR1 before the walltime, SIGTERM on preemption or cancel); the user's program is
the one that must checkpoint, so every such signal is passed on and the runtime waits for the child's exit code.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from haihe.errors import InvalidInput

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP, signal.SIGCONT)


def run_child(argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> int:
    """Run ``argv`` to completion; return its exit code (``128+N`` when signal N killed it, as shells report)."""
    if not argv:
        raise InvalidInput("no command to run after '--'", field="command")
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd)
    except OSError as exc:
        raise InvalidInput(f"cannot start {argv[0]!r}: {exc.strerror}", field="command") from None

    def forward(signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in FORWARDED:
            previous[int(signum)] = signal.signal(signum, forward)
    try:
        code = proc.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 128 - code if code < 0 else code
