"""The Python SDK returns the models the API serves (typed end to end), against the real app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from haihe.client import HaiheClient
from haihe.platform.context import PlatformContext
from haihe.platform.identity.schemas import KeyIssued, ProjectPublic, WhoAmI
from haihe.platform.jobs.schemas import JobEventPublic, JobPage, JobPublic, LogsPublic
from haihe.platform.settings import Settings
from tests.fixtures.fake_scheduler import FakeFactory
from tests.fixtures.platform import Tenancy

SPEC = {"name": "digits", "recipe": "digits-cnn", "resources": {"time_limit": 10}}


class ThroughTestClient(httpx.BaseTransport):
    """The SDK's requests handed to the app in-process (the TestClient runs it), answers read back whole."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.client.request(request.method, str(request.url), headers=dict(request.headers),
                                content=request.read())
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


@contextmanager
def app_with_a_member(tmp_path: Path) -> Iterator[tuple[TestClient, Tenancy, str, str, dict[str, str]]]:
    """The real app on SQLite with the fake scheduler: (client, tenancy, org, project, a researcher's headers)."""
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", schedulers={"fake": "fake://"},
                        default_scheduler="fake", reconcile_interval_s=0)
    ctx = PlatformContext.from_settings(settings)
    ctx.registry.register("fake", FakeFactory())
    with TestClient(create_app(settings, ctx=ctx)) as client:
        t = Tenancy(client).bootstrap()
        org = t.org()
        project = t.project(org)
        yield client, t, org, project, t.login(t.user(org))


@pytest.fixture
def sdk(tmp_path: Path) -> Iterator[tuple[HaiheClient, Tenancy, str, str]]:
    with app_with_a_member(tmp_path) as (client, t, org, project, user):
        token = user["Authorization"].removeprefix("Bearer ")
        hh = HaiheClient("http://testserver", token=token, transport=ThroughTestClient(client))
        yield hh, t, org, project
        hh.close()


def test_sdk_calls_return_the_api_models(sdk: tuple[HaiheClient, Tenancy, str, str]) -> None:
    hh, _t, org, project = sdk
    me = hh.whoami()
    assert isinstance(me, WhoAmI) and [m.org for m in me.user.memberships] == [org]
    projects = hh.list_projects(org)
    assert all(isinstance(p, ProjectPublic) for p in projects) and project in [p.name for p in projects]
    job = hh.submit_job(org, project, SPEC)
    assert isinstance(job, JobPublic) and job.state == "SUBMITTED" and job.native_id
    stored = hh.submit_job(org, project, SPEC, wait=False)
    assert stored.state in ("PENDING", "SUBMITTED")
    page = hh.list_jobs(org=org)
    assert isinstance(page, JobPage) and {job.id, stored.id} <= {j.id for j in page.items}
    assert hh.get_job(job.id).created_at == job.created_at  # a datetime, not a string
    events = hh.job_events(job.id)
    assert events and all(isinstance(e, JobEventPublic) for e in events) and events[0].kind == "created"
    assert isinstance(hh.job_logs(job.id), LogsPublic)
    cancelled = hh.cancel_job(job.id)
    assert cancelled.id == job.id


def test_an_admin_key_is_a_model_and_errors_stay_errors(sdk: tuple[HaiheClient, Tenancy, str, str]) -> None:
    from haihe import errors

    hh, t, org, _project = sdk
    admin = HaiheClient("http://testserver", token=t.admin_headers["Authorization"].removeprefix("Bearer "),
                        transport=ThroughTestClient(t.client))
    issued = admin.create_key(org, "ci", username=t.user(org, role="service_account"))
    assert isinstance(issued, KeyIssued) and issued.key.startswith("hhk_") and issued.prefix in issued.key
    with pytest.raises(errors.NotFound):
        hh.get_job("no-such-job")
