"""Jobs' storage credentials against the real S3 server (the JuiceFS gateway's STS): a job's temporary credentials
read its dataset version and code bundle and write its own prefixes, and nothing else; once the job has ended
(+ the margin) none are issued and the ones it held stop working."""

from __future__ import annotations

import datetime as dt
import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from minio import Minio
from minio.error import S3Error

from haihe.cluster.ports import PortPlan
from haihe.cluster.s3 import S3Server
from haihe.datasets.credentials import BrokerCredentials
from haihe.datasets.store import MinioStore
from haihe.errors import StorageUnavailable
from haihe.jobs.runtime.checkpoint import open_store
from haihe.platform.models import Job
from haihe.platform.settings import Settings
from tests.fixtures.platform import PASSWORD
from tests.integration.test_zoo_api import LiveApp

pytestmark = pytest.mark.s3

MARGIN_S = 3
LEASE_S = 4


@dataclass
class World:
    app: LiveApp
    http: httpx.Client
    s3: S3Server
    root: dict[str, str]
    orgs: dict[str, str]  # a, b → org name
    users: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def world(s3_server: S3Server, port_plan: PortPlan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    port = port_plan.base + 482
    home = tmp_path_factory.mktemp("storage-creds")
    settings = Settings(database_url=f"sqlite:///{home / 'db.sqlite'}", home=home,
                        s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                        s3_secret_key=s3_server.secret_key, s3_sts_access_key=s3_server.broker_access_key,
                        s3_sts_secret_key=s3_server.broker_secret_key, job_credentials_lease_s=LEASE_S,
                        job_credentials_margin_s=MARGIN_S, schedulers={"fake": "fake://"},
                        default_scheduler="fake", reconcile_interval_s=0, public_url=f"http://127.0.0.1:{port}")
    with LiveApp(settings, port) as app, httpx.Client(base_url=app.url, timeout=60) as http:
        assert http.post("/api/v1/setup", json={"username": "root", "password": PASSWORD}).status_code == 201
        root = _login(http, "root")
        orgs, users = {}, {}
        for key in ("a", "b"):
            org = f"sc{uuid.uuid4().hex[:8]}"
            assert http.post("/api/v1/orgs", json={"name": org}, headers=root).status_code == 201
            assert http.post(f"/api/v1/orgs/{org}/projects", json={"name": "p"}, headers=root).status_code == 201
            user = f"{key}-{uuid.uuid4().hex[:6]}"
            r = http.post(f"/api/v1/orgs/{org}/users", headers=root,
                          json={"username": user, "role": "researcher", "password": PASSWORD})
            assert r.status_code == 201, r.text
            orgs[key], users[key] = org, _login(http, user)
        yield World(app, http, s3_server, root, orgs, users)


def _login(http: httpx.Client, username: str) -> dict[str, str]:
    r = http.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


@dataclass
class JobFixture:
    id: str
    env: dict[str, str]
    dataset_key: str
    code_key: str


def _job(w: World, who: str) -> JobFixture:
    """A job of org ``who`` with a dataset version and a code bundle in S3 (as submit stores them)."""
    org = w.orgs[who]
    admin = w.s3.client()
    dataset_key = f"{org}/ds/v1/data.bin"
    admin.put_object("haihe-datasets", dataset_key, io.BytesIO(b"data of " + org.encode()), 8 + len(org))
    code_key = f"bundles/{org}/p/{uuid.uuid4().hex}.tar.gz"
    admin.put_object("haihe-code", code_key, io.BytesIO(b"code"), 4)
    spec = {"name": "train", "entrypoint": "python train.py", "resources": {"time_limit": 30}}
    r = w.http.post(f"/api/v1/orgs/{org}/projects/p/jobs", json={"spec": spec}, headers=w.users[who])
    assert r.status_code == 201, r.text
    job_id = str(r.json()["id"])
    with w.app.ctx.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.dataset_ref, job.code_uri = f"{org}/ds@v1", f"s3://haihe-code/{code_key}"
    env = dict(w.app.scheduler.jobs[r.json()["native_id"]].launch.env)
    return JobFixture(job_id, env, dataset_key, code_key)


def _client(creds: dict[str, Any], endpoint: str) -> Minio:
    # region given: without it minio asks GetBucketLocation first, which the session policy denies
    return Minio(endpoint.split("://", 1)[1], access_key=creds["access_key"], secret_key=creds["secret_key"],
                 session_token=creds["session_token"], secure=False, region="us-east-1")


def _denied(call: Any) -> str:
    try:
        call()
    except S3Error as exc:
        return exc.code
    return "allowed"


def _issue(w: World, job: JobFixture, **body: Any) -> httpx.Response:
    return w.http.post(job.env["HAIHE_STORAGE_CREDENTIALS_URL"].removeprefix(w.app.url), json=body,
                       headers={"Authorization": f"Bearer {job.env['HAIHE_JOB_TOKEN']}"})


def test_job_env_carries_a_token_and_no_platform_key(world: World) -> None:
    job = _job(world, "a")
    text = repr(job.env)
    assert world.s3.access_key not in text and world.s3.secret_key not in text
    assert world.s3.broker_secret_key not in text
    assert "AWS_ACCESS_KEY_ID" not in job.env and "AWS_SECRET_ACCESS_KEY" not in job.env
    assert job.env["HAIHE_STORAGE_CREDENTIALS_URL"] == f"{world.app.url}/api/v1/jobs/{job.id}/storage-credentials"
    assert job.env["HAIHE_JOB_TOKEN"].startswith("hjt_")


def test_credentials_reach_exactly_the_jobs_data(world: World) -> None:
    a, b = _job(world, "a"), _job(world, "b")
    r = _issue(world, a, duration_s=600)
    assert r.status_code == 200, r.text
    creds = r.json()
    assert creds["access_key"] != world.s3.access_key and creds["session_token"]
    c = _client(creds, world.s3.endpoint)
    org_a, org_b = world.orgs["a"], world.orgs["b"]
    # what job A may do
    assert c.get_object("haihe-datasets", a.dataset_key).read().startswith(b"data of ")
    assert c.get_object("haihe-code", a.code_key).read() == b"code"
    for prefix in (f"checkpoints/{org_a}/{a.id}", f"outputs/{org_a}/{a.id}"):
        c.put_object("haihe-code", f"{prefix}/x.bin", io.BytesIO(b"x"), 1)
        assert c.get_object("haihe-code", f"{prefix}/x.bin").read() == b"x"
        assert [o.object_name for o in c.list_objects("haihe-code", prefix=f"{prefix}/")] == [f"{prefix}/x.bin"]
        c.remove_object("haihe-code", f"{prefix}/x.bin")
    # and every attempt outside it, each named
    attempts = {
        "list buckets": lambda: c.list_buckets(),
        "read B's dataset": lambda: c.get_object("haihe-datasets", b.dataset_key),
        "read another version of A's dataset": lambda: c.get_object("haihe-datasets", f"{org_a}/ds/v2/data.bin"),
        "list the datasets bucket": lambda: list(c.list_objects("haihe-datasets", prefix=f"{org_b}/")),
        "read B's code bundle": lambda: c.get_object("haihe-code", b.code_key),
        "read B's checkpoint": lambda: c.get_object("haihe-code", f"checkpoints/{org_b}/{b.id}/x"),
        "list B's checkpoints": lambda: list(c.list_objects("haihe-code", prefix=f"checkpoints/{org_b}/")),
        "write B's outputs": lambda: c.put_object("haihe-code", f"outputs/{org_b}/{b.id}/x", io.BytesIO(b"x"), 1),
        "write another job's checkpoints of A":
            lambda: c.put_object("haihe-code", f"checkpoints/{org_a}/other/x", io.BytesIO(b"x"), 1),
        "overwrite A's code bundle": lambda: c.put_object("haihe-code", a.code_key, io.BytesIO(b"evil"), 4),
        "write A's dataset": lambda: c.put_object("haihe-datasets", f"{org_a}/ds/v1/x", io.BytesIO(b"x"), 1),
        "read MLflow's artifacts": lambda: list(c.list_objects("mlflow", prefix="artifacts/")),
        "make a bucket": lambda: c.make_bucket(f"evil{uuid.uuid4().hex[:6]}"),
    }
    results = {what: _denied(call) for what, call in attempts.items()}
    assert results == dict.fromkeys(attempts, "AccessDenied")


def test_the_runtime_refreshes_through_the_broker_and_checkpoints(world: World) -> None:
    """The runtime's provider (what staging and checkpoints use) works across a refresh of short leases."""
    a = _job(world, "a")
    provider = BrokerCredentials(a.env["HAIHE_STORAGE_CREDENTIALS_URL"], a.env["HAIHE_JOB_TOKEN"])
    store = open_store(f"s3://haihe-code/checkpoints/{world.orgs['a']}/{a.id}", endpoint=world.s3.endpoint,
                       credentials=provider)
    store.write("step-1", b"state")
    first = provider.retrieve().access_key
    deadline = time.monotonic() + 30
    while provider.retrieve().access_key == first:  # a lease of LEASE_S s: refreshed at half of it
        assert time.monotonic() < deadline, "the credentials were never refreshed"
        time.sleep(0.2)
    assert store.read("step-1") == b"state" and store.names() == ["step-1"]
    data = MinioStore(world.s3.endpoint, "", "", "haihe-datasets", credentials=provider)
    assert data.stat(a.dataset_key).size > 0


def test_after_the_end_plus_margin_nothing_is_issued_and_old_credentials_stop(world: World) -> None:
    a = _job(world, "a")
    assert _issue(world, a).status_code == 200
    r = world.http.post(f"/api/v1/jobs/{a.id}/cancel", headers=world.users["a"])
    assert r.status_code in (200, 202), r.text
    with world.app.ctx.db.session() as session:  # the reconciler is off: record the end as it would
        job = session.get(Job, a.id)
        assert job is not None
        job.state, job.ended_at = "CANCELLED", dt.datetime.now(dt.UTC)
    within = _issue(world, a, duration_s=3600)  # inside the margin: issued, but only until end + margin
    assert within.status_code == 200, within.text
    creds = within.json()
    expiry = dt.datetime.strptime(creds["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert expiry <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=MARGIN_S + 1)
    c = _client(creds, world.s3.endpoint)
    assert c.get_object("haihe-datasets", a.dataset_key).read()
    deadline = time.monotonic() + 30
    while (refused := _issue(world, a)).status_code == 200:
        assert time.monotonic() < deadline, "still issuing after the end + margin"
        time.sleep(0.2)
    assert refused.status_code == 403 and "ended" in refused.json()["error"]["message"]
    while _denied(lambda: c.get_object("haihe-datasets", a.dataset_key)) != "AccessDenied":
        assert time.monotonic() < deadline, "the job's credentials still work after the end + margin"
        time.sleep(0.2)
    provider = BrokerCredentials(a.env["HAIHE_STORAGE_CREDENTIALS_URL"], a.env["HAIHE_JOB_TOKEN"])
    with pytest.raises(StorageUnavailable, match="refused"):
        MinioStore(world.s3.endpoint, "", "", "haihe-datasets", credentials=provider).stat(a.dataset_key)


def test_only_the_jobs_own_token_is_accepted(world: World) -> None:
    a, b = _job(world, "a"), _job(world, "b")
    url = f"/api/v1/jobs/{a.id}/storage-credentials"
    for headers in ({}, world.users["a"], world.root, {"Authorization": f"Bearer {b.env['HAIHE_JOB_TOKEN']}"},
                    {"Authorization": "Bearer hjt_forged.token"}):
        r = world.http.post(url, json={}, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert "access_key" not in r.text
