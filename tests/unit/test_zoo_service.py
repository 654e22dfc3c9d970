"""The zoo service through the API: visibility, aliases, publishing, deleting, lineage, a job's runs and metrics.

The registry is the library's stateful in-memory fake (``FakeRegistry``) and MLflow's REST API a stateful fake
behind an httpx transport (``FakeMlflow``), injected as the app's ``ZooServices``; jobs go to a fake scheduler.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from haihe.model_zoo import Lineage, ModelZoo
from haihe.model_zoo.tracking import TrackingClient
from haihe.platform.context import PlatformContext
from haihe.platform.models import Job
from haihe.platform.settings import Settings
from haihe.platform.zoo import catalog as svc
from tests.fixtures.fake_scheduler import FakeFactory
from tests.fixtures.platform import Tenancy
from tests.unit.test_model_zoo_names import card_dict
from tests.unit.test_model_zoo_registry import FakeRegistry
from tests.unit.test_model_zoo_tracking import FakeMlflow

SPEC = {"name": "digits", "recipe": "digits-cnn", "resources": {"nodes": 1, "time_limit": "00:10:00"}}


class Env:
    def __init__(self, client: TestClient, ctx: PlatformContext, registry: FakeRegistry, mlflow: FakeMlflow,
                 zoo: ModelZoo) -> None:
        self.client, self.ctx, self.registry, self.mlflow, self.zoo = client, ctx, registry, mlflow, zoo
        t = self.t = Tenancy(client).bootstrap()
        self.a, self.b = t.org(), t.org()
        self.project = t.project(self.a)
        self.a_user = t.login(t.user(self.a))
        self.a_admin = t.login(t.user(self.a, role="org_admin"))
        self.b_user = t.login(t.user(self.b))
        self.b_admin = t.login(t.user(self.b, role="org_admin"))

    def get(self, path: str, headers: dict[str, str], **params: Any) -> httpx.Response:
        return self.client.get(f"/api/v1{path}", headers=headers, params=params)

    def submit(self) -> str:
        r = self.client.post(f"/api/v1/orgs/{self.a}/projects/{self.project}/jobs", json={"spec": SPEC},
                             headers=self.a_user)
        assert r.status_code == 201, r.text
        job_id = str(r.json()["id"])
        with self.ctx.db.session() as session:  # as if submitted with `dataset: wafers@v3` (resolved at submit)
            job = session.get(Job, job_id)
            assert job is not None
            job.dataset_ref = f"{self.a}/wafers@v3"
        return job_id


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", schedulers={"fake": "fake://"},
                        default_scheduler="fake", reconcile_interval_s=0, mlflow_url="http://mlflow.test")
    ctx = PlatformContext.from_settings(settings)
    ctx.registry.register("fake", FakeFactory())
    registry, mlflow = FakeRegistry(), FakeMlflow()
    zoo = ModelZoo(registry, cache_dir=tmp_path / "cache")
    tracking = TrackingClient("http://mlflow.test", http=httpx.Client(transport=httpx.MockTransport(mlflow.handler)))
    app = create_app(settings, ctx=ctx)
    ctx.provide("zoo", svc.ZooServices(zoo=zoo, tracking=tracking))
    with TestClient(app) as client:
        yield Env(client, ctx, registry, mlflow, zoo)


def _register(env: Env, ref: str, *, visibility: str = "private", uri: str = "models:/m-1", **lineage: Any) -> None:
    env.zoo.register(ref, card_dict(description=f"model {ref}"), model_uri=uri, visibility=visibility,  # type: ignore[arg-type]
                     lineage=Lineage(**lineage))


def test_each_org_sees_its_own_and_the_public_models(env: Env) -> None:
    _register(env, f"{env.a}/secret")
    _register(env, f"{env.a}/shared", visibility="public")

    mine = [m["ref"] for m in env.get("/models", env.a_user).json()]
    theirs = [m["ref"] for m in env.get("/models", env.b_user).json()]
    assert mine == [f"{env.a}/secret", f"{env.a}/shared"]
    assert theirs == [f"{env.a}/shared"]
    assert [m["ref"] for m in env.get("/models", env.a_user, q="SECRET").json()] == [f"{env.a}/secret"]
    assert env.get("/models", env.a_user, task="image-classification").json() == []

    r = env.get(f"/models/{env.a}/secret", env.b_user)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    shown = env.get(f"/models/{env.a}/shared", env.b_user).json()
    assert shown["visibility"] == "public" and (shown["can_write"], shown["can_admin"]) == (False, False)
    own = env.get(f"/models/{env.a}/secret", env.a_user).json()
    assert (own["can_write"], own["can_admin"]) == (True, False)
    assert env.get(f"/models/{env.a}/secret", env.a_admin).json()["can_admin"] is True


def test_aliases_by_owner_org_members_only(env: Env) -> None:
    _register(env, f"{env.a}/shared", visibility="public")
    _register(env, f"{env.a}/secret")
    path = f"/api/v1/models/{env.a}/shared/aliases/production"

    r = env.client.put(path, json={"version": 1}, headers=env.b_admin)
    assert r.status_code == 403 and "may use it but not change it" in r.json()["error"]["message"]
    r = env.client.put(f"/api/v1/models/{env.a}/secret/aliases/production", json={"version": 1}, headers=env.b_user)
    assert r.status_code == 404
    assert env.zoo.get(f"{env.a}/shared").model.aliases == {}

    r = env.client.put(path, json={"version": 1}, headers=env.a_user)
    assert r.status_code == 200 and r.json()["aliases"] == ["production"]
    r = env.client.put(path, json={"version": 7}, headers=env.a_user)  # no such version: 4xx, nothing changes
    assert r.status_code == 422 and r.json()["error"]["field"] == "version"
    assert dict(env.zoo.get(f"{env.a}/shared").model.aliases) == {"production": 1}
    assert env.client.put(path, json={"version": None}, headers=env.a_user).status_code == 200
    assert env.zoo.get(f"{env.a}/shared").model.aliases == {}


def test_publishing_and_deleting_need_the_owner_org_admin(env: Env) -> None:
    _register(env, f"{env.a}/m")
    vis = f"/api/v1/models/{env.a}/m/visibility"
    assert env.client.put(vis, json={"visibility": "public"}, headers=env.a_user).status_code == 403
    assert env.client.put(vis, json={"visibility": "public"}, headers=env.b_admin).status_code == 404
    assert env.client.put(vis, json={"visibility": "everyone"}, headers=env.a_admin).status_code == 422
    r = env.client.put(vis, json={"visibility": "public"}, headers=env.a_admin)
    assert r.status_code == 200 and r.json()["visibility"] == "public"
    assert env.get(f"/models/{env.a}/m", env.b_user).status_code == 200

    assert env.client.delete(f"/api/v1/models/{env.a}/m", headers=env.b_admin).status_code == 403
    assert env.client.delete(f"/api/v1/models/{env.a}/m", headers=env.a_user).status_code == 403
    assert env.client.delete(f"/api/v1/models/{env.a}/m", headers=env.a_admin).status_code == 204
    assert env.get(f"/models/{env.a}/m", env.a_admin).status_code == 404
    audit = env.client.get("/api/v1/audit", headers=env.t.admin_headers, params={"org": env.a}).json()
    assert {"model.visibility", "model.delete"} <= {e["action"] for e in audit}


def test_lineage_links_job_run_and_dataset_both_ways(env: Env) -> None:
    job_id = env.submit()
    dataset = f"{env.a}/wafers@v3"
    _register(env, f"{env.a}/cnn", job_id=job_id, dataset=dataset)
    _register(env, f"{env.a}/other", uri="models:/m-2")

    version = env.get(f"/models/{env.a}/cnn", env.a_user).json()["versions"][0]
    lin = version["lineage"]
    assert (lin["job_id"], lin["run_id"], lin["dataset"]) == (job_id, "a" * 32, dataset)
    assert lin["job"]["id"] == job_id and lin["job"]["dataset"] == dataset and lin["job"]["org"] == env.a

    found = env.get("/dataset-models", env.a_user, dataset=dataset).json()
    assert [(m["model"], m["version"], m["job_id"]) for m in found] == [(f"{env.a}/cnn", 1, job_id)]
    assert env.get("/dataset-models", env.b_user, dataset=dataset).json() == []  # private: not B's to see
    assert env.get("/dataset-models", env.a_user, dataset="nope").status_code == 422


def test_job_runs_and_metric_histories_for_the_portal(env: Env) -> None:
    job_id = env.submit()
    env.mlflow.experiments[f"{env.a}/{env.project}"] = {"experiment_id": "7", "name": f"{env.a}/{env.project}"}
    run = "c" * 32
    env.mlflow.add_run(run, "7", {"haihe.job_id": job_id}, start=5)
    env.mlflow.add_run("d" * 32, "7", {"haihe.job_id": "another-job"}, start=6)
    env.mlflow.runs[run]["data"]["params"] = [{"key": "lr", "value": "0.01"}]
    env.mlflow.runs[run]["data"]["metrics"] = [{"key": "loss", "value": 0.2}]
    env.mlflow.history[(run, "loss")] = [{"step": s, "value": v, "timestamp": s} for s, v in
                                         [(0, 0.9), (1, 0.5), (2, 0.2)]]

    runs = env.get(f"/jobs/{job_id}/run", env.a_user).json()
    assert [(r["run_id"], r["params"]) for r in runs] == [(run, {"lr": "0.01"})]
    metrics = env.get(f"/jobs/{job_id}/metrics", env.a_user).json()
    assert [(p["step"], p["value"]) for p in metrics[0]["histories"]["loss"]] == [(0, 0.9), (1, 0.5), (2, 0.2)]
    assert env.get(f"/jobs/{job_id}/metrics", env.b_user).status_code == 404
    assert env.get("/jobs/not-a-job/run", env.a_user).status_code == 404


def test_registering_a_job_model_through_the_api(env: Env) -> None:
    job_id = env.submit()
    env.mlflow.experiments[f"{env.a}/{env.project}"] = {"experiment_id": "7", "name": f"{env.a}/{env.project}"}
    env.mlflow.add_run("a" * 32, "7", {"haihe.job_id": job_id}, start=5)  # the run that logged models:/m-1
    path = f"/api/v1/models/{env.a}/cnn/versions"
    bad = card_dict()
    del bad["license"]
    r = env.client.post(path, json={"job_id": job_id, "card": bad}, headers=env.a_user)
    assert r.status_code == 422 and r.json()["error"]["field"] == "card.license"
    assert env.registry.models == {}  # nothing half-registered
    r = env.client.post(f"/api/v1/models/{env.b}/cnn/versions", json={"job_id": job_id, "card": card_dict()},
                        headers=env.b_user)
    assert r.status_code == 404  # B cannot see A's job
    r = env.client.post(path, json={"job_id": job_id, "card": card_dict()}, headers=env.a_user)
    assert r.status_code == 201, r.text
    assert r.json()["lineage"]["dataset"] == f"{env.a}/wafers@v3" and r.json()["lineage"]["run_id"] == "a" * 32


def test_tracking_outage_is_a_503(env: Env) -> None:
    env.registry.fail.add("search_models")
    r = env.get("/models", env.a_user)
    assert r.status_code == 503 and r.json()["error"]["code"] == "tracking_unavailable"
    assert env.get("/models", env.a_user).status_code == 200  # the outage was one call


def test_a_job_naming_a_zoo_model_it_cannot_read_is_refused_before_anything_is_stored(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import func, select

    from haihe.platform.jobs import service as jobs
    from haihe.platform.models import LedgerEntry

    monkeypatch.setattr(jobs, "_require_tracking", lambda ctx, spec: None)  # MLflow itself is the fake here
    _register(env, f"{env.b}/theirs")  # private to org b
    _register(env, f"{env.a}/mine")

    def counts() -> tuple[int, int]:
        with env.ctx.db.session() as s:
            return s.scalar(select(func.count()).select_from(Job)) or 0, \
                s.scalar(select(func.count()).select_from(LedgerEntry)) or 0

    def submit(ref: str) -> httpx.Response:
        spec = {"name": "ft", "entrypoint": ["python", "-V"], "model": {"from_zoo": ref}}
        return env.client.post(f"/api/v1/orgs/{env.a}/projects/{env.project}/jobs", json={"spec": spec},
                               headers=env.a_user)

    before = counts()
    for ref in (f"{env.a}/nope@production", f"{env.b}/theirs:1", f"{env.a}/mine:7", f"{env.a}/mine@latest"):
        r = submit(ref)
        assert r.status_code == 422, (ref, r.text)
        body = r.json()
        assert body["error"]["field"] == "model.from_zoo" and ref in body["error"]["message"], body
    assert counts() == before  # no job row, no reservation
    assert submit(f"{env.a}/mine:1").status_code == 201
