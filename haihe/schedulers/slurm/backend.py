"""Build a SlurmScheduler from its URL (the registry maps ``slurm+cli`` and ``slurm+rest`` here).

``slurm+cli://?conf=/etc/slurm/slurm.conf&jobs=/shared/haihe/jobs``
``slurm+rest://host:6820?conf=…&jobs=…&user=root&jwt_key=/etc/slurm/jwt.key`` (the operator's own token from
``scontrol token`` unless given; jobs are submitted as their Unix user with a short token minted from ``jwt_key``)
``qos=a,b,c`` in the query means "no slurmdbd: check QoS names here and do not pass --qos to Slurm".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from haihe.errors import InvalidInput
from haihe.schedulers.slurm.accounts import SlurmAccounts
from haihe.schedulers.slurm.cli import CliTransport, CommandRunner, SubprocessRunner
from haihe.schedulers.slurm.sbatch import LauncherConfig
from haihe.schedulers.slurm.scheduler import SlurmScheduler, ctld_probe_from_conf
from haihe.schedulers.slurm.transport import SlurmTransport


def default_job_env(conf: str | None) -> dict[str, str]:
    """The base environment every job starts from (never the server's full environment)."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {
        "PATH": path if path.startswith(venv_bin) else f"{venv_bin}:{path}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    if conf:
        env["SLURM_CONF"] = conf  # the launchers call scontrol on the first node
    return env


def _token_from_scontrol(runner: CommandRunner, user: str, lifespan: int) -> Callable[[], str]:
    def mint() -> str:
        res = runner(["scontrol", "token", f"username={user}", f"lifespan={lifespan}"])
        if res.returncode != 0:
            from haihe.errors import SchedulerUnavailable

            raise SchedulerUnavailable(f"cannot mint a Slurm JWT: {res.stderr.strip()}")
        return res.stdout.strip().split("=", 1)[1]

    return mint


def build(url: str, *, runner: CommandRunner | None = None, transport: SlurmTransport | None = None,
          token: str | Callable[[], str] | None = None, job_env: Mapping[str, str] | None = None,
          timeout: float | None = None, **_: Any) -> SlurmScheduler:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    conf = query.get("conf") or os.environ.get("SLURM_CONF")
    jobs = query.get("jobs")
    if not jobs:
        raise InvalidInput(f"{url}: needs jobs=<dir shared with the compute nodes> for job logs", field="scheduler")
    qos = tuple(q for q in query["qos"].split(",") if q) if "qos" in query else None
    accounting = qos is None
    # SLURM_BITSTR_LEN=0: squeue prints a pending array's whole task-id expression, not 64 chars and '...'
    cmd_env = {**os.environ, **({"SLURM_CONF": conf} if conf else {}), "SLURM_BITSTR_LEN": "0"}
    runner = runner or SubprocessRunner(cmd_env, timeout=timeout or 20.0)
    if transport is None:
        if parts.scheme == "slurm+cli":
            transport = CliTransport(runner, accounting=accounting, uid_option=query.get("switch") != "setpriv")
        elif parts.scheme == "slurm+rest":
            from haihe.schedulers.slurm.jwt import UserTokens
            from haihe.schedulers.slurm.rest import RestTransport  # httpx only when REST is used

            user = query.get("user", "root")
            source = (lambda: token) if isinstance(token, str) else (token or _token_from_scontrol(runner, user, 3600))
            user_tokens = UserTokens(query["jwt_key"]) if query.get("jwt_key") else None
            transport = RestTransport(f"http://{parts.netloc}", user=user, token=source, accounting=accounting,
                                      timeout=timeout or 5.0, user_token=user_tokens)
        else:
            raise InvalidInput(f"{url}: not a Slurm URL (slurm+cli://, slurm+rest://)", field="scheduler")
    launchers = LauncherConfig(torchrun=(query.get("python", sys.executable), "-m", "torch.distributed.run"),
                               batch_signal=parts.scheme != "slurm+rest")
    return SlurmScheduler(
        url,
        transport,
        jobs_dir=jobs,
        job_env=job_env if job_env is not None else default_job_env(conf),
        launchers=launchers,
        qos=qos,
        ctld_probe=ctld_probe_from_conf(conf) if conf and Path(conf).exists() else None,
        accounts=SlurmAccounts(runner) if accounting else None,
    )
