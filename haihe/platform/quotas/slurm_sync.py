"""Push the platform's quotas into Slurm's accounting (the second wall) and report drift.

Desired state: every org is a Slurm account, every project a sub-account ``<org>.<project>``, every member with a
Unix account associated with the projects of their org; GPU/CPU-hours become ``GrpTRESMins`` in minutes,
``max_gpus`` ``GrpTRES=gres/gpu``, ``max_jobs`` ``GrpJobs``. ``sync`` makes Slurm match; ``check`` only reports
the differences. Budgets are the whole limit (Slurm counts its own usage, which decays never here:
``PriorityDecayHalfLife=0``).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from haihe.errors import InvalidInput
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.models import Org, Project, Quota, UnixAccount
from haihe.schedulers.slurm.accounts import AccountLimits, SlurmAccounts, account_name


def desired(session: Session) -> dict[str, tuple[str | None, AccountLimits]]:
    """account → (parent, limits) for every org and project; limits from the quotas (none where there is none)."""
    out: dict[str, tuple[str | None, AccountLimits]] = {}
    orgs = {o.id: o for o in session.scalars(select(Org))}
    for o in orgs.values():
        out[account_name(o.name)] = (None, AccountLimits())
    for p in session.scalars(select(Project)):
        if p.org_id in orgs:
            out[account_name(orgs[p.org_id].name, p.name)] = (orgs[p.org_id].name, AccountLimits())
    for q in session.scalars(select(Quota)):
        org = session.get(Org, q.org_id)
        if org is None:
            continue
        project = session.get(Project, q.project_id) if q.project_id else None
        name = account_name(org.name, project.name if project else None)
        mins: dict[str, int] = {}
        if q.cpu_hours is not None:
            mins["cpu"] = int(q.cpu_hours * 60)
        if q.gpu_hours is not None:
            mins["gres/gpu"] = int(q.gpu_hours * 60)
        tres = {"gres/gpu": q.max_gpus} if q.max_gpus is not None else {}
        out[name] = (org.name if project else None, AccountLimits(mins, tres, q.max_jobs))
    return out


def desired_users(session: Session) -> dict[str, set[str]]:
    """Unix account → the project accounts of its org: every mapped member may charge every project of the org."""
    projects: dict[int, list[str]] = {}
    orgs = {o.id: o.name for o in session.scalars(select(Org))}
    for p in session.scalars(select(Project)):
        if p.org_id in orgs:
            projects.setdefault(p.org_id, []).append(account_name(orgs[p.org_id], p.name))
    out: dict[str, set[str]] = {}
    for row in session.scalars(select(UnixAccount)):
        out.setdefault(row.unix_name, set()).update(projects.get(row.org_id, []))
    return {u: a for u, a in out.items() if a}


@dataclass
class SyncReport:
    scheduler: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    in_sync: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)  # "<unix user>@<account>" associations made

    def to_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "created": self.created, "updated": self.updated, "drift": self.drift,
                "in_sync": self.in_sync, "users": self.users}


def _accounts_for(ctx: PlatformContext, scheduler: str) -> SlurmAccounts:
    url = ctx.settings.schedulers.get(scheduler)
    if url is None or not url.startswith("slurm"):
        slurms = [n for n, u in ctx.settings.schedulers.items() if u.startswith("slurm")]
        raise InvalidInput(f"{scheduler!r} is not a Slurm scheduler; Slurm schedulers: {', '.join(slurms) or 'none'}",
                           field="scheduler")
    return SlurmAccounts.from_url(url)


def run(ctx: PlatformContext, session: Session, principal: Principal, scheduler: str, *, apply: bool,
        accounts_factory: Callable[[PlatformContext, str], SlurmAccounts] = _accounts_for) -> SyncReport:
    """Compare (and with ``apply`` make equal) Slurm's associations and the platform's quotas."""
    access.require_platform_admin(principal)
    slurm = accounts_factory(ctx, scheduler)
    want = desired(session)
    have_accounts = slurm.accounts()
    have_limits = slurm.limits()
    report = SyncReport(scheduler)
    for name in sorted(want, key=lambda n: (n.count("."), n)):  # parents before children
        parent, limits = want[name]
        current = have_limits.get(name)
        if name not in have_accounts:
            report.drift.append({"account": name, "slurm": None, "platform": limits.clause()})
            if apply:
                slurm.ensure_account(name, parent)
                slurm.set_limits(name, limits)
                report.created.append(name)
        elif current is None or current.clause() != limits.clause():
            report.drift.append({"account": name, "slurm": current.clause() if current else None,
                                 "platform": limits.clause()})
            if apply:
                slurm.set_limits(name, limits)
                report.updated.append(name)
        else:
            report.in_sync.append(name)
    have_assoc = slurm.associations()
    for user, accounts in sorted(desired_users(session).items()):
        missing = sorted(a for a in accounts if (a, user) not in have_assoc)
        if not missing:
            continue
        report.drift.append({"user": user, "slurm": None, "platform": ",".join(missing)})
        if apply:
            slurm.ensure_user(user, missing)
            report.users.extend(f"{user}@{a}" for a in missing)
    if apply and want:
        slurm.ensure_user(ctx.settings.slurm_user or getpass.getuser(), sorted(want))
        audit.record(session, principal, "quota.sync", target_type="scheduler", target=scheduler,
                     details={"created": report.created, "updated": report.updated})
    return report
