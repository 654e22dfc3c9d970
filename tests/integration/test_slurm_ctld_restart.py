"""slurmctld stops while jobs run: calls fail fast with SchedulerUnavailable; after a restart nothing is lost."""

from __future__ import annotations

import time
from typing import Any

import pytest

from haihe.cluster.procs import wait_until
from haihe.errors import SchedulerUnavailable
from haihe.schedulers.base import JobState
from tests.contract.scheduler_contract import bash, wait_state
from tests.integration.slurm_helpers import TRANSPORTS, launch, scheduler_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_slurmctld_down_fails_fast_and_jobs_survive_restart(slurm_cluster: Any) -> None:
    scheds = {t: scheduler_for(slurm_cluster, t) for t in TRANSPORTS}
    cli = scheds["cli"]
    refs = [cli.submit(launch(bash("echo before; sleep 8; echo after"))) for _ in range(2)]
    for ref in refs:
        wait_state(cli, ref, {JobState.RUNNING})
    ctld = slurm_cluster.slurmctld()
    assert ctld.stop()
    try:
        for sched in scheds.values():
            for call in (lambda s=sched: s.status(refs), lambda s=sched: s.submit(launch(bash("true"))),
                         lambda s=sched: s.describe(), lambda s=sched: s.cancel(refs[0])):
                t0 = time.monotonic()
                with pytest.raises(SchedulerUnavailable) as err:
                    call()
                # "fast" is relative to Slurm's own ~9 s of client retries, with room for a noisy 2-core host
                assert time.monotonic() - t0 < 5.0
                assert "slurmctld" in err.value.message
    finally:
        ctld.start()
        wait_until(slurm_cluster.ping, timeout=60, what="slurmctld restart")
    for sched in scheds.values():
        statuses = sched.status(refs)
        assert set(statuses) == set(refs)
    for ref in refs:
        st = wait_state(cli, ref, {JobState.SUCCEEDED}, timeout=120)
        assert st.exit_code == 0
        assert "after" in cli.logs(ref).data
