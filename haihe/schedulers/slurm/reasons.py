"""Why a Slurm job waits, in words a researcher reads (squeue's ``%r`` / slurmrestd's ``state_reason`` codes).

The portal shows the same in the reader's language (``reason.<code>`` in its catalogue); this English table is
what the API and the CLI say. A code not listed here is shown as Slurm gives it.
"""

from __future__ import annotations

EXPLAINED: dict[str, str] = {
    "Priority": "other jobs are ahead of it in the queue (fair-share priority)",
    "Resources": "waiting for enough free nodes, CPUs or GPUs in its partition",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "PartitionNodeLimit": "it asks for more nodes than its partition allows",
    "PartitionTimeLimit": "its walltime is longer than its partition allows",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is not accepting work",
    "QOSMaxGRESPerUser": "your QoS limit on GPUs in use at once is reached",
    "QOSMaxJobsPerUserLimit": "your QoS limit on running jobs is reached",
    "QOSMaxCpuPerUserLimit": "your QoS limit on CPUs in use at once is reached",
    "QOSGrpGRESMinutes": "the QoS's GPU-minutes budget is used up",
    "AssocGrpGRESMinutes": "your organisation's GPU-minutes limit in Slurm accounting is reached",
    "AssocGrpCPUMinutesLimit": "your organisation's CPU-minutes limit in Slurm accounting is reached",
    "AssocGrpGRES": "your organisation's limit on GPUs in use at once is reached",
    "AssocMaxJobsLimit": "your organisation's limit on running jobs is reached",
    "AssocGrpJobsLimit": "your organisation's limit on running jobs is reached",
    "Dependency": "it waits for another job to finish",
    "DependencyNeverSatisfied": "a job it depends on failed, so it can never start",
    "BeginTime": "it was asked to start later",
    "JobHeldUser": "held by its owner",
    "JobHeldAdmin": "held by an administrator",
    "BadConstraints": "no node has the features it asks for",
    "launch failed requeued held": "its start failed on a node; an administrator must release it",
    "NodeDown": "a node it was given went down",
    "None": "",
}


def explain(reason: str | None) -> str:
    """The reason in words, or the code itself when it is not one we know."""
    if not reason:
        return ""
    return EXPLAINED.get(reason, reason)
