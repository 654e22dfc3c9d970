"""The CLI transport (``slurm+cli://``): sbatch/squeue/sacct/scancel/sinfo/scontrol through an injected runner.

Unit tests inject a stateful fake runner; production runs the real commands with a short timeout, because every
Slurm client retries for ~9 s when slurmctld is down and a poll loop must not hang on that.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from haihe.errors import SchedulerUnavailable, Unsupported
from haihe.schedulers.slurm.records import partitions_from_scontrol
from haihe.schedulers.slurm.transport import Json, translate


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    def __call__(self, argv: Sequence[str], *, stdin: str | None = None,
                 env: Mapping[str, str] | None = None) -> CommandResult: ...


class SubprocessRunner:
    """Runs Slurm commands for real; timeouts and missing binaries become SchedulerUnavailable."""

    def __init__(self, base_env: Mapping[str, str], timeout: float = 20.0) -> None:
        self.base_env = dict(base_env)
        self.timeout = timeout

    def __call__(self, argv: Sequence[str], *, stdin: str | None = None,
                 env: Mapping[str, str] | None = None) -> CommandResult:
        try:
            proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                                  env=dict(env if env is not None else self.base_env), timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            raise SchedulerUnavailable(f"slurm: {argv[0]} did not answer within {self.timeout:.0f}s") from exc
        except FileNotFoundError as exc:
            raise SchedulerUnavailable(f"slurm: {argv[0]} is not installed on this host") from exc
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def operator_name() -> str:
    """The Unix user this process runs as (not $USER, which a caller can set to anything)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _primary_group(user: str) -> int:
    import pwd

    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError:
        raise Unsupported(f"no Unix account {user!r} on this host", field="user") from None


class CliTransport:
    name = "cli"

    def __init__(self, runner: CommandRunner, *, accounting: bool = True, switch_user: bool | None = None,
                 operator: str | None = None, uid_option: bool = True) -> None:
        self.run = runner
        self.has_accounting = accounting
        # switching users needs root; an unprivileged platform can only submit as itself (or use slurm+rest with
        # jwt_key). sbatch's own --uid/--gid (root only; Slurm 22.05 has them) costs nothing; where a Slurm lacks
        # them (?switch=setpriv in the URL), setpriv around sbatch: one exec (~1.7 ms), no PAM session (runuser ~5)
        self.switch_user = os.geteuid() == 0 if switch_user is None else switch_user
        self.uid_option = uid_option
        self.operator = operator or operator_name()
        self.setpriv = shutil.which("setpriv", path="/usr/sbin:/usr/bin:/sbin:/bin") or "setpriv"

    def as_user(self, user: str | None, argv: Sequence[str]) -> list[str]:
        """``argv`` run as ``user`` (its uid, primary gid and groups) when it is not the operator."""
        if user is None or user == self.operator:
            return list(argv)
        if not self.switch_user:
            raise Unsupported(f"slurm+cli cannot submit as {user!r}: only an API running as root switches users; "
                              "use slurm+rest with jwt_key=<path> in the scheduler URL", field="user")
        gid = _primary_group(user)
        if self.uid_option and argv and argv[0] == "sbatch":
            return [*argv, f"--uid={user}", f"--gid={gid}"]
        return [self.setpriv, f"--reuid={user}", f"--regid={gid}", "--init-groups", "--", *argv]

    def _ok(self, argv: Sequence[str], what: str, stdin: str | None = None,
            env: Mapping[str, str] | None = None) -> str:
        res = self.run(argv, stdin=stdin, env=env)
        if res.returncode != 0:
            raise translate(res.stderr or res.stdout or f"{argv[0]} exited {res.returncode}", what=what)
        return res.stdout

    def _json(self, argv: Sequence[str], key: str) -> list[Json]:
        out = self._ok(argv, what="query")
        try:
            return list(json.loads(out)[key])
        except (ValueError, KeyError, TypeError) as exc:
            raise SchedulerUnavailable(f"slurm: unreadable output of {argv[0]}: {exc}") from exc

    def submit(self, script: str, options: Mapping[str, str], environment: Mapping[str, str],
               user: str | None = None) -> str:
        # the script comes on stdin and carries the options as #SBATCH lines; sbatch exports `environment`
        out = self._ok(self.as_user(user, ["sbatch", "--parsable"]), what="submit", stdin=script, env=environment)
        return out.strip().split(";", 1)[0]

    def jobs(self) -> list[Json]:
        return self._json(["squeue", "--json"], "jobs")

    def accounting(self, job_ids: Sequence[str]) -> list[Json] | None:
        if not self.has_accounting:
            return None
        return self._json(["sacct", "--json", "-a", "-j", ",".join(job_ids)], "jobs")

    def recent_accounting(self, days: int) -> list[Json] | None:
        if not self.has_accounting:
            return None
        return self._json(["sacct", "--json", "-a", "-S", f"now-{days}days"], "jobs")

    def cancel(self, job_id: str) -> None:
        self._ok(["scancel", job_id], what="cancel")

    def nodes(self) -> list[Json]:
        return self._json(["sinfo", "--json"], "nodes")

    def partitions(self) -> list[Json]:
        return partitions_from_scontrol(self._ok(["scontrol", "show", "partition", "-o"], what="query"))

    def qos_names(self) -> list[str] | None:
        if not self.has_accounting:
            return None
        return self._ok(["sacctmgr", "-n", "-P", "show", "qos", "format=name"], what="query").split()
