"""Property test: hostile names, commands and env values run literally on both transports (bash really runs them)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haihe.schedulers.base import JobState
from tests.contract.scheduler_contract import wait_state
from tests.integration.slurm_helpers import TRANSPORTS, launch, scheduler_for

pytestmark = pytest.mark.slurm

NASTY = ["'", '"', "$(touch /tmp/h2-pwned)", "`id`", "\n", ";", "&&", "|", "\\", "${HOME}", "*", "天津超算", "é", " ",
         "#SBATCH --partition=gpu", "$'\\x41'", "!!", "<", ">"]
text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(st.characters(blacklist_categories=["Cs", "Cc"]),
                                                          max_size=6)), min_size=1, max_size=6).map("".join)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hostile_values_run_literally(slurm_cluster: Any, transport: str) -> None:
    sched = scheduler_for(slurm_cluster, transport)

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
    @given(name=text, arg=text, value=text)
    def check(name: str, arg: str, value: str) -> None:
        # printf prints the argv and env value between markers; python would add its own escaping, bash does not
        cmd = ("bash", "-c", 'printf "A<%s>\\nV<%s>\\nN<%s>\\n" "$1" "$HAIHE_V" "$HAIHE_JOB_NAME"', "argv0", arg)
        lau = launch(cmd, name=name, env={"HAIHE_V": value})
        ref = sched.submit(lau)
        wait_state(sched, ref, {JobState.SUCCEEDED})
        out = sched.logs(ref).data
        assert f"A<{arg}>\nV<{value}>\nN<{name}>\n" in out
        assert sched.find([lau.tag]) == {lau.tag: ref}

    check()
