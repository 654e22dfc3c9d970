"""Slurm associations as a second wall behind the platform's quotas: accounts and their limits through sacctmgr.

Each org is a Slurm account and each project a sub-account (``<org>.<project>``); GPU/CPU-minute budgets become
``GrpTRESMins`` and concurrency ``GrpTRES``/``GrpJobs``. Writes under slurmrestd's /slurmdb are unreliable on 22.05,
so this always uses ``sacctmgr`` through the injected command runner (the same seam as the CLI transport).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from haihe.errors import InvalidInput, SchedulerUnavailable
from haihe.schedulers.slurm.cli import CommandRunner, SubprocessRunner

_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
TRES_KEYS = ("cpu", "gres/gpu")  # the TRES the platform budgets


@dataclass(frozen=True)
class AccountLimits:
    """One association's limits; None means no limit (sacctmgr's -1)."""

    grp_tres_mins: Mapping[str, int] = field(default_factory=dict)  # e.g. {"cpu": 600, "gres/gpu": 60}
    grp_tres: Mapping[str, int] = field(default_factory=dict)  # concurrency, e.g. {"gres/gpu": 8}
    grp_jobs: int | None = None

    def clause(self) -> str:
        def tres(values: Mapping[str, int]) -> str:
            return ",".join(f"{k}={values.get(k, -1)}" for k in TRES_KEYS)

        jobs = -1 if self.grp_jobs is None else self.grp_jobs
        return f"GrpTRESMins={tres(self.grp_tres_mins)} GrpTRES={tres(self.grp_tres)} GrpJobs={jobs}"


def account_name(org: str, project: str | None = None) -> str:
    name = f"{org}.{project}" if project else org
    if not _ACCOUNT.fullmatch(name):
        raise InvalidInput(f"{name!r} cannot be a Slurm account name", field="account")
    return name


def _parse_tres(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key in TRES_KEYS and value.lstrip("-").isdigit() and int(value) >= 0:
            out[key] = int(value)
    return out


class SlurmAccounts:
    """sacctmgr behind a command runner: ensure accounts and users, set and read association limits."""

    def __init__(self, runner: CommandRunner, cluster: str | None = None) -> None:
        self.runner = runner
        self.cluster = cluster

    @classmethod
    def from_url(cls, url: str, runner: CommandRunner | None = None) -> SlurmAccounts:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
        conf = query.get("conf") or os.environ.get("SLURM_CONF")
        env = {**os.environ, **({"SLURM_CONF": conf} if conf else {})}
        return cls(runner or SubprocessRunner(env, timeout=30.0))

    def _sacctmgr(self, *args: str) -> str:
        result = self.runner(["sacctmgr", "-i", "-P", "-n", *args])
        if result.returncode != 0:
            text = (result.stderr or result.stdout).strip()
            if "already exists" in text or "nothing new added" in text.lower():
                return result.stdout
            if "slurmdbd" in text.lower() or "connection" in text.lower():
                raise SchedulerUnavailable(f"Slurm accounting (slurmdbd) unavailable: {text[:200]}")
            raise InvalidInput(f"sacctmgr {' '.join(args[:3])}: {text[:300]}", field="account")
        return result.stdout

    def available(self) -> bool:
        """True when the cluster has accounting (slurmdbd answers)."""
        try:
            self._sacctmgr("show", "cluster", "format=cluster")
        except (SchedulerUnavailable, InvalidInput):
            return False
        return True

    def accounts(self) -> dict[str, str]:
        """account → parent account."""
        out = self._sacctmgr("show", "account", "withassoc", "format=account,parentname")
        result: dict[str, str] = {}
        for line in out.splitlines():
            name, _, parent = line.partition("|")
            if name:
                result[name] = parent
        return result

    def ensure_account(self, name: str, parent: str | None = None, description: str = "") -> None:
        args = ["add", "account", name, f"Description={description or name}", f"Organization={name.split('.')[0]}"]
        if parent:
            args.append(f"Parent={parent}")
        self._sacctmgr(*args)

    def ensure_user(self, user: str, accounts: Sequence[str]) -> None:
        if accounts:
            self._sacctmgr("add", "user", user, f"Account={','.join(accounts)}")

    def associations(self) -> set[tuple[str, str]]:
        """(account, user) of every user association."""
        out = self._sacctmgr("show", "assoc", "format=account,user")
        pairs = (line.split("|") for line in out.splitlines())
        return {(p[0], p[1]) for p in pairs if len(p) >= 2 and p[0] and p[1]}

    def set_limits(self, name: str, limits: AccountLimits) -> None:
        self._sacctmgr("modify", "account", "where", f"name={name}", "set", *limits.clause().split())

    def limits(self) -> dict[str, AccountLimits]:
        """The account-level association limits of every account."""
        out = self._sacctmgr("show", "assoc", "format=account,user,grptresmins,grptres,grpjobs")
        result: dict[str, AccountLimits] = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) < 5 or not parts[0] or parts[1]:  # user associations carry no account limits here
                continue
            account, _user, mins, tres, jobs = parts[:5]
            result[account] = AccountLimits(grp_tres_mins=_parse_tres(mins), grp_tres=_parse_tres(tres),
                                            grp_jobs=int(jobs) if jobs.isdigit() else None)
        return result
