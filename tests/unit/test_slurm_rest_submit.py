"""slurmrestd's submit answer as the transport reads it: a job id means queued, even beside an error entry.

slurmrestd 22.05 answers a submit to a partition whose nodes are all drained with ``job_id`` AND ``errors``
(2068 "Required node not available"): the job is queued and waits, as ``sbatch`` queues it. Treating that as a
refusal marked the job FAILED while Slurm kept it - a job that would run later with no platform record.
"""

from __future__ import annotations

import json

import httpx
import pytest

from haihe.errors import HaiheError
from haihe.schedulers.slurm.rest import RestTransport


def _transport(answer: dict[str, object], status: int = 200) -> RestTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/job/submit")
        return httpx.Response(status, text=json.dumps(answer), headers={"content-type": "application/json"})

    client = httpx.Client(base_url="http://slurmrestd.test", transport=httpx.MockTransport(handler))
    return RestTransport("http://slurmrestd.test", user="root", token=lambda: "t", client=client)


OPTS = {"job-name": "j", "comment": "tag", "nodes": "1", "ntasks-per-node": "1", "cpus-per-task": "1", "time": "1",
        "output": "/tmp/%j.out", "chdir": "/tmp", "partition": "cpu"}


def test_a_queued_job_with_a_note_is_submitted() -> None:
    t = _transport({"errors": [{"error_code": 2068, "error": "Required node not available (down, drained or "
                                "reserved)"}], "job_id": 41, "step_id": "BATCH", "job_submit_user_msg": ""})
    assert t.submit("#!/bin/bash\ntrue\n", OPTS, {"PATH": "/usr/bin"}) == "41"


def test_a_refusal_without_a_job_id_is_an_error_naming_slurms_reason() -> None:
    t = _transport({"errors": [{"error_code": 2011, "error": "Invalid account or account/partition combination "
                                "specified"}], "job_id": 0})
    with pytest.raises(HaiheError) as exc:
        t.submit("#!/bin/bash\ntrue\n", OPTS, {"PATH": "/usr/bin"})
    assert "Invalid account" in exc.value.message
