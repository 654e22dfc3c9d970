"""The set-up helpers every local service shares: running a command as another account, and a one-off step."""

from __future__ import annotations

import sys

import pytest

from haihe.cluster.procs import StartupError, as_user, run_step


def test_as_user_wraps_in_runuser_only_when_a_user_is_named() -> None:
    assert as_user(["initdb", "-D", "x"], None) == ["initdb", "-D", "x"]
    assert as_user(("munged",), "munge") == ["runuser", "-u", "munge", "--", "munged"]


def test_a_failed_step_is_a_startup_error_with_its_stderr_tail() -> None:
    run_step([sys.executable, "-c", "pass"], what="noop", timeout=30)
    with pytest.raises(StartupError, match=r"postgres: initdb failed \(3\):\nboom"):
        run_step([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
                 what="postgres: initdb", timeout=30)
