"""Keep tenants' code away from the platform's internal services on the local cluster (iptables owner match).

MLflow, PostgreSQL and the Ray head's control ports have no authentication of their own: the platform is their only
intended client (jobs reach tracking through the platform's authenticated proxy). At a site they sit on a network
the compute nodes cannot reach. On one machine everything is loopback, so the local bring-up rejects connections to
those ports from the job accounts: Slurm jobs (primary group :data:`~haihe.cluster.unix.JOBS_GROUP`) and Ray jobs
(the Ray head's account). Needs root and ``iptables``; without them it says so and changes nothing.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable

from haihe.cluster.unix import JOBS_GROUP, ensure_group

log = logging.getLogger(__name__)
# the primary groups of job processes: Slurm jobs' accounts, and the shared Ray cluster's account (ray_head.RAY_GROUP)
JOB_GROUPS: tuple[str, ...] = (JOBS_GROUP, "haihe-ray")
COMMENT = "haihe: internal service, not for jobs"


def available() -> bool:
    import os

    return os.geteuid() == 0 and shutil.which("iptables") is not None


def _spans(ports: Iterable[int]) -> list[str]:
    """Ports as iptables ``--dport`` values, contiguous runs as one ``first:last`` range (one rule, not a hundred)."""
    out: list[str] = []
    run: list[int] = []
    for port in sorted(set(ports)):
        if run and port != run[-1] + 1:
            out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(port)
    if run:
        out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
    return out


def _rule(dport: str, *, uid: str | None = None, gid: str | None = None) -> list[str]:
    owner = ["--uid-owner", uid] if uid else ["--gid-owner", str(gid)]
    return ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", dport, "-m", "owner", *owner,
            "-m", "comment", "--comment", COMMENT, "-j", "REJECT", "--reject-with", "tcp-reset"]


def _iptables(*args: str) -> int:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, check=False).returncode


def reject_from(ports: Iterable[int], *, uids: Iterable[str] = (), gids: Iterable[str] = ()) -> bool:
    """Reject TCP connections to ``ports`` on loopback from processes of those users/primary groups (idempotent).
    False when the machine cannot do it (not root, or no iptables)."""
    if not available():
        log.warning("iptables not available (or not root): internal service ports stay reachable from jobs")
        return False
    for g in gids:
        ensure_group(g)  # a rule names the group: it must exist before the service it is for
    owners = [{"uid": u} for u in uids] + [{"gid": g} for g in gids]
    for span in _spans(ports):
        for owner in owners:
            rule = _rule(span, **owner)
            if _iptables("-C", *rule) != 0 and _iptables("-I", *rule) != 0:
                log.warning("could not add the firewall rule %s", " ".join(rule))
    return True


def allow_again(ports: Iterable[int], *, uids: Iterable[str] = (), gids: Iterable[str] = ()) -> None:
    """Remove the rules :func:`reject_from` added (a stopped service frees its port for anyone)."""
    if not available():
        return
    owners = [{"uid": u} for u in uids] + [{"gid": g} for g in gids]
    for span in _spans(ports):
        for owner in owners:
            rule = _rule(span, **owner)
            while _iptables("-C", *rule) == 0:
                if _iptables("-D", *rule) != 0:
                    break
