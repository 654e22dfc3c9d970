"""Storage credentials: the session policy's exact resources, the deadline and refusal after the end, and the
promise that no rendered job carries the platform's S3 keys (every scheduler's rendering)."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from haihe.errors import PermissionDenied
from haihe.jobs.render import render_launch
from haihe.jobs.spec import validate_spec
from haihe.platform.datasets.credentials import (
    JobClock,
    JobGrant,
    deadline_for,
    grant_for,
    policy_document,
)
from haihe.schedulers.base import JobState

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
ARN = "arn:aws:s3:::"


@pytest.mark.parametrize("dataset", ["acme/pics@v3", "other/shared@v1", "public/mnist@v12"])
def test_grant_is_the_resolved_version_the_bundle_and_the_jobs_own_prefixes(dataset: str) -> None:
    grant = grant_for(dataset=dataset, code_uri="s3://haihe-code/bundles/acme/p/abc.tar.gz", org="acme", job_id="J1",
                      datasets_bucket="haihe-datasets", code_bucket="haihe-code")
    org, rest = dataset.split("/")
    name, version = rest.split("@")
    assert grant == JobGrant(
        read_objects=("haihe-code/bundles/acme/p/abc.tar.gz",),
        read_prefixes=(f"haihe-datasets/{org}/{name}/{version}/",),
        write_prefixes=("haihe-code/checkpoints/acme/J1/", "haihe-code/outputs/acme/J1/"),
    )


def test_grant_without_dataset_or_code_has_only_the_jobs_prefixes() -> None:
    grant = grant_for(dataset=None, code_uri=None, org="acme", job_id="J1", datasets_bucket="d", code_bucket="c")
    assert grant == JobGrant(write_prefixes=("c/checkpoints/acme/J1/", "c/outputs/acme/J1/"))


def test_an_unresolved_dataset_is_refused() -> None:
    with pytest.raises(Exception, match="not resolved"):
        grant_for(dataset="acme/pics@latest", code_uri=None, org="acme", job_id="J", datasets_bucket="d",
                  code_bucket="c")


def test_policy_allows_exactly_the_grant_until_the_deadline() -> None:
    grant = JobGrant(read_objects=("c/bundles/acme/b.tar.gz",), read_prefixes=("d/acme/pics/v3/",),
                     write_prefixes=("c/checkpoints/acme/J1/", "c/outputs/acme/J1/"))
    deadline = NOW + dt.timedelta(minutes=5)
    doc = policy_document(grant, deadline)
    until = {"DateLessThan": {"aws:CurrentTime": "2030-01-01T12:05:00Z"}}
    assert doc["Statement"] == [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Condition": until,
         "Resource": [ARN + "c/bundles/acme/b.tar.gz", ARN + "d/acme/pics/v3/*", ARN + "c/checkpoints/acme/J1/*",
                      ARN + "c/outputs/acme/J1/*"]},
        {"Effect": "Allow", "Condition": until,
         "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         "Resource": [ARN + "c/checkpoints/acme/J1/*", ARN + "c/outputs/acme/J1/*"]},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [ARN + "c"],
         "Condition": {**until, "StringLike": {"s3:prefix": ["checkpoints/acme/J1/", "checkpoints/acme/J1/*",
                                                              "outputs/acme/J1/", "outputs/acme/J1/*"]}}},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [ARN + "d"],
         "Condition": {**until, "StringLike": {"s3:prefix": ["acme/pics/v3/", "acme/pics/v3/*"]}}},
    ]
    text = json.dumps(doc)
    for never in ("s3:ListAllMyBuckets", "s3:*", '"arn:aws:s3:::*"', "Deny"):
        assert never not in text
    assert len(json.dumps(doc, separators=(",", ":"))) < 2048  # STS's packed session-policy limit


def _clock(state: JobState = JobState.RUNNING, *, started: dt.datetime | None = NOW,
           ended: dt.datetime | None = None, limit: int | None = 60, restartable: bool = False) -> JobClock:
    return JobClock(state, started, ended, limit, restartable)


def test_deadline_is_the_lease_while_running() -> None:
    assert deadline_for(_clock(), NOW, lease_s=600, margin_s=60) == NOW + dt.timedelta(seconds=600)


def test_deadline_never_passes_walltime_plus_margin() -> None:
    late = NOW + dt.timedelta(minutes=58)
    assert deadline_for(_clock(), late, lease_s=3600, margin_s=60) == NOW + dt.timedelta(minutes=61)
    with pytest.raises(PermissionDenied, match="walltime"):
        deadline_for(_clock(), NOW + dt.timedelta(minutes=61), lease_s=3600, margin_s=60)
    # a requeueable or array job restarts later than started_at says: its walltime counts from now
    later = NOW + dt.timedelta(minutes=90)
    assert deadline_for(_clock(restartable=True), later, lease_s=60, margin_s=60) == later + dt.timedelta(seconds=60)


def test_after_the_end_only_the_margin_then_refused() -> None:
    ended = NOW
    clock = _clock(JobState.SUCCEEDED, ended=ended)
    assert deadline_for(clock, NOW + dt.timedelta(seconds=10), lease_s=3600, margin_s=60) == \
        ended + dt.timedelta(seconds=60)
    with pytest.raises(PermissionDenied, match="ended"):
        deadline_for(clock, NOW + dt.timedelta(seconds=60), lease_s=3600, margin_s=60)
    for state in (JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT):
        with pytest.raises(PermissionDenied):
            deadline_for(_clock(state, ended=ended), NOW + dt.timedelta(hours=1), lease_s=60, margin_s=60)


ROOT_KEY, ROOT_SECRET = "haiheROOTKEY", "root-secret-0123456789abcdef"


@pytest.mark.parametrize(("scheduler", "launcher"), [("slurm", "none"), ("slurm", "torchrun"), ("slurm", "mpi"),
                                                     ("ray", "none"), ("ray", "ray_train")])
def test_no_rendered_job_carries_the_platforms_keys(scheduler: str, launcher: str) -> None:
    """The platform's settings hold the keys; the job service's rendering, the sbatch script and Ray's job
    submission built from it carry neither value, only the job's token and the broker's URL."""
    from haihe.platform.jobs.service import _render_context
    from haihe.platform.settings import Settings

    settings = Settings(database_url="sqlite://", s3_endpoint="http://s3:9000", s3_access_key=ROOT_KEY,
                        s3_secret_key=ROOT_SECRET, s3_sts_access_key="broker", s3_sts_secret_key="broker-secret-1",
                        mlflow_url="http://mlflow:5000", public_url="http://api:8000")
    spec_doc = {"name": "t", "recipe": "digits-cnn", "launcher": launcher, "checkpoint": {"every": 10},
                "resources": {"nodes": 1, "time_limit": 10}}
    job = SimpleNamespace(id="J1", attempt=1, spec=spec_doc, code_uri="s3://haihe-code/bundles/acme/p/b.tar.gz",
                          dataset_ref=None, environment_lock=None, environment_ref=None)
    ctx = _render_context(SimpleNamespace(settings=settings), job, SimpleNamespace(name="acme"),  # type: ignore[arg-type]
                          SimpleNamespace(name="p"), SimpleNamespace(username="u"))  # type: ignore[arg-type]
    launch = render_launch(validate_spec(spec_doc), ctx)
    rendered = [repr(launch), repr(launch.env)]
    if scheduler == "slurm":
        from haihe.schedulers.slurm.sbatch import render_script

        rendered.append(render_script(launch, {}))
    else:
        from haihe.schedulers.ray.translate import submit_body

        rendered.append(json.dumps(submit_body(launch, None)))
    for text in rendered:
        for secret in (ROOT_KEY, ROOT_SECRET, "broker-secret-1"):
            assert secret not in text
        assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    assert launch.env["HAIHE_STORAGE_CREDENTIALS_URL"] == "http://api:8000/api/v1/jobs/J1/storage-credentials"
    assert launch.env["HAIHE_JOB_TOKEN"] == launch.env["MLFLOW_TRACKING_TOKEN"]
    assert "MLFLOW_S3_ENDPOINT_URL" not in launch.env
