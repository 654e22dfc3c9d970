"""The zoo API and the MLflow proxy against the real MLflow server (artifacts in the real S3 server).

The platform runs as a real HTTP server (uvicorn, in a thread) because the job side is MLflow's own client,
pointed at ``<platform>/mlflow`` with the job token the platform rendered into the job's environment. Jobs go
to a fake scheduler: what runs on the node is played by this test, using the library as a job runtime would.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.ports import PortPlan
from haihe.cluster.s3 import S3Server
from haihe.errors import NotFound, PermissionDenied
from haihe.model_zoo import Lineage, ModelZoo
from haihe.model_zoo.tracking import run_tags
from haihe.platform.context import PlatformContext
from haihe.platform.models import Job
from haihe.platform.settings import Settings
from tests.fixtures.fake_scheduler import FakeFactory, FakeScheduler
from tests.fixtures.platform import PASSWORD

pytestmark = [pytest.mark.mlflow, pytest.mark.s3]

SPEC = {"name": "train", "recipe": "digits-cnn", "resources": {"nodes": 1, "time_limit": "00:10:00"}}


def _card(**over: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "task": "tabular-regression", "description": "a tiny MLP trained by a job",
        "input_schema": [{"name": "x", "type": "tensor", "dtype": "float32", "shape": [-1, 4]}],
        "output_schema": [{"name": "y", "type": "tensor", "dtype": "float32", "shape": [-1, 2]}],
        "intended_use": "tests", "limitations": "tiny", "license": "Apache-2.0", "owner": "zoo api tests",
    }
    card.update(over)
    return card


class LiveApp:
    """The platform app served by uvicorn in a thread on a port of this session's range."""

    def __init__(self, settings: Settings, port: int) -> None:
        import uvicorn

        from haihe.server import create_app

        self.ctx = PlatformContext.from_settings(settings)
        self.factory = FakeFactory()
        self.ctx.registry.register("fake", self.factory)  # type: ignore[arg-type]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(create_app(settings, ctx=self.ctx), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="zoo-api", daemon=True)

    def __enter__(self) -> LiveApp:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the API did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def scheduler(self) -> FakeScheduler:
        return self.factory.instance


@dataclass
class World:
    app: LiveApp
    http: httpx.Client
    a: str
    b: str
    a_project: str
    b_project: str
    a_user: dict[str, str]
    a_admin: dict[str, str]
    b_user: dict[str, str]

    def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> httpx.Response:
        return self.http.request(method, f"/api/v1{path}", headers=headers, **kw)

    def submit(self, org: str, project: str, headers: dict[str, str], dataset: str | None = None) -> tuple[str, str]:
        """A job, and the job token the platform rendered into its environment."""
        r = self.call("POST", f"/orgs/{org}/projects/{project}/jobs", headers, json={"spec": SPEC})
        assert r.status_code == 201, r.text
        job_id = str(r.json()["id"])
        launch = self.app.scheduler.jobs[r.json()["native_id"]].launch
        assert launch.env["MLFLOW_TRACKING_URI"] == f"{self.app.url}/mlflow"
        if dataset:  # as if submitted with `dataset:` (resolving it needs the datasets service, tested elsewhere)
            with self.app.ctx.db.session() as session:
                job = session.get(Job, job_id)
                assert job is not None
                job.dataset_ref = dataset
        return job_id, launch.env["MLFLOW_TRACKING_TOKEN"]


def _login(http: httpx.Client, username: str) -> dict[str, str]:
    r = http.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.fixture(scope="module")
def world(mlflow_server: MlflowServer, s3_server: S3Server, port_plan: PortPlan,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    port = port_plan.base + 481
    home = tmp_path_factory.mktemp("zoo-api")
    settings = Settings(database_url=f"sqlite:///{home / 'db.sqlite'}", home=home, mlflow_url=mlflow_server.url,
                        s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                        s3_secret_key=s3_server.secret_key, schedulers={"fake": "fake://"},
                        default_scheduler="fake", reconcile_interval_s=0, public_url=f"http://127.0.0.1:{port}")
    with LiveApp(settings, port) as app, httpx.Client(base_url=app.url, timeout=120) as http:
        assert http.post("/api/v1/setup", json={"username": "root", "password": PASSWORD}).status_code == 201
        root = _login(http, "root")
        names: dict[str, str] = {}
        for key in ("a", "b"):
            org = f"zoo{uuid.uuid4().hex[:8]}"
            assert http.post("/api/v1/orgs", json={"name": org}, headers=root).status_code == 201
            assert http.post(f"/api/v1/orgs/{org}/projects", json={"name": "vision"}, headers=root).status_code == 201
            names[key] = org
            for role in ("researcher", "org_admin"):
                user = f"{key}-{role.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
                r = http.post(f"/api/v1/orgs/{org}/users", headers=root,
                              json={"username": user, "role": role, "password": PASSWORD})
                assert r.status_code == 201, r.text
                names[f"{key}_{role}"] = user
        yield World(app, http, names["a"], names["b"], "vision", "vision", _login(http, names["a_researcher"]),
                    _login(http, names["a_org_admin"]), _login(http, names["b_researcher"]))


@pytest.fixture
def as_job(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Switch MLflow's client to a job's identity (tracking URI + token), as the runtime's environment does."""
    import mlflow

    previous = mlflow.get_tracking_uri()

    def use(url: str, token: str) -> Any:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        mlflow.set_tracking_uri(url)
        return mlflow

    yield use
    mlflow.set_tracking_uri(previous)


def _train(mlflow: Any, experiment: str, tags: dict[str, str]) -> tuple[str, str]:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_params({"lr": 0.01, "epochs": 3})
        for step, loss in enumerate([0.9, 0.5, 0.2]):
            mlflow.log_metric("loss", loss, step=step)
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"])
    return run.info.run_id, info.model_uri


def test_a_jobs_run_model_and_lineage_through_the_proxy_and_the_api(world: World, as_job: Any,
                                                                     tmp_path: Path) -> None:
    w = world
    dataset = f"{w.a}/wafers@v3"
    job_id, token = w.submit(w.a, w.a_project, w.a_user, dataset=dataset)
    proxy = f"{w.app.url}/mlflow"

    # the job, through the proxy with its own token: a run with params and a loss curve, a model, a registration
    mlflow = as_job(proxy, token)
    tags = run_tags(job_id=job_id, org=w.a, project=w.a_project, user="alice", dataset=dataset)
    run_id, model_uri = _train(mlflow, f"{w.a}/{w.a_project}", tags)
    zoo = ModelZoo.connect(proxy, cache_dir=tmp_path / "a-cache")
    ref = f"{w.a}/tiny"
    version = zoo.register(ref, _card(), model_uri=model_uri, lineage=Lineage(job_id=job_id, dataset=dataset))
    assert version.lineage == Lineage(job_id, run_id, dataset)

    # the portal's reads: params and the metric history of the job's run
    runs = w.call("GET", f"/jobs/{job_id}/run", w.a_user).json()
    assert [(r["run_id"], r["params"]["lr"]) for r in runs] == [(run_id, "0.01")]
    metrics = w.call("GET", f"/jobs/{job_id}/metrics", w.a_user).json()
    assert [(p["step"], p["value"]) for p in metrics[0]["histories"]["loss"]] == [(0, 0.9), (1, 0.5), (2, 0.2)]
    assert w.call("GET", f"/jobs/{job_id}/metrics", w.b_user).status_code == 404

    # lineage both ways: version → job, run, dataset; dataset → version
    shown = w.call("GET", f"/models/{ref}", w.a_user).json()
    lin = shown["versions"][0]["lineage"]
    assert (lin["job"]["id"], lin["run_id"], lin["dataset"]) == (job_id, run_id, dataset)
    found = w.call("GET", "/dataset-models", w.a_user, params={"dataset": dataset}).json()
    assert [(m["model"], m["version"]) for m in found] == [(ref, 1)]

    # pull: presigned S3 URLs, the bytes bypass the API
    manifest = w.call("GET", f"/models/{ref}/download", w.a_user).json()
    assert manifest["presigned"] is True and manifest["version"] == 1
    mlmodel = next(f for f in manifest["files"] if f["path"] == "MLmodel")
    assert not mlmodel["url"].startswith(w.app.url)
    assert "pytorch" in httpx.get(mlmodel["url"], timeout=30).text
    streamed = w.call("GET", f"/models/{ref}/download", w.a_user, params={"path": "MLmodel"})
    assert streamed.status_code == 200 and "pytorch" in streamed.text

    # an alias on a missing version, a card missing fields: 4xx, nothing half-registered
    r = w.call("PUT", f"/models/{ref}/aliases/production", w.a_user, json={"version": 9})
    assert r.status_code == 422 and r.json()["error"]["field"] == "version"
    bad = _card()
    del bad["license"]
    r = w.call("POST", f"/models/{w.a}/broken/versions", w.a_user, json={"job_id": job_id, "card": bad})
    assert r.status_code == 422 and r.json()["error"]["field"] == "card.license"
    assert w.call("GET", f"/models/{w.a}/broken", w.a_admin).status_code == 404
    assert w.call("PUT", f"/models/{ref}/aliases/production", w.a_user, json={"version": 1}).status_code == 200
    assert w.call("GET", f"/models/{ref}", w.a_user).json()["aliases"] == {"production": 1}


def test_org_b_cannot_see_load_change_or_write_into_org_a(world: World, as_job: Any, tmp_path: Path) -> None:
    import mlflow as _mlflow
    from mlflow.exceptions import MlflowException

    w = world
    proxy = f"{w.app.url}/mlflow"
    a_job, a_token = w.submit(w.a, w.a_project, w.a_user)
    b_job, b_token = w.submit(w.b, w.b_project, w.b_user)

    mlflow = as_job(proxy, a_token)
    a_run, model_uri = _train(mlflow, f"{w.a}/{w.a_project}", run_tags(job_id=a_job, org=w.a, project=w.a_project,
                                                                       user="alice"))
    a_experiment = mlflow.get_experiment_by_name(f"{w.a}/{w.a_project}").experiment_id
    zoo_a = ModelZoo.connect(proxy, cache_dir=tmp_path / "a")
    private, public = f"{w.a}/private-{uuid.uuid4().hex[:4]}", f"{w.a}/public-{uuid.uuid4().hex[:4]}"
    zoo_a.register(private, _card(), model_uri=model_uri)
    zoo_a.register(public, _card(), model_uri=model_uri)
    with pytest.raises(PermissionDenied):  # a job may not publish: that is the org admin's call
        zoo_a.set_visibility(public, "public")
    r = w.call("PUT", f"/models/{public}/visibility", w.a_user, json={"visibility": "public"})
    assert r.status_code == 403
    r = w.call("PUT", f"/models/{public}/visibility", w.a_admin, json={"visibility": "public"})
    assert r.status_code == 200 and r.json()["visibility"] == "public"

    # org B through the API: no private model, the public one, no alias changes
    listed = [m["ref"] for m in w.call("GET", "/models", w.b_user, params={"org": w.a}).json()]
    assert listed == [public]
    assert w.call("GET", f"/models/{private}", w.b_user).status_code == 404
    assert w.call("GET", f"/models/{private}/download", w.b_user).status_code == 404
    assert w.call("GET", f"/models/{public}", w.b_user).status_code == 200
    r = w.call("PUT", f"/models/{public}/aliases/production", w.b_user, json={"version": 1})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert w.call("PUT", f"/models/{private}/aliases/production", w.b_user, json={"version": 1}).status_code == 404

    # org B's job through the proxy: loads the public model, not the private one, and writes nothing of A's
    as_job(proxy, b_token)
    zoo_b = ModelZoo.connect(proxy, cache_dir=tmp_path / "b")
    assert zoo_b.load(public) is not None
    with pytest.raises(NotFound):
        zoo_b.load(private)
    client = _mlflow.MlflowClient(proxy)
    for write in (lambda: client.log_metric(a_run, "loss", 99.0, step=9),
                  lambda: client.set_tag(a_run, "haihe.job_id", b_job),
                  lambda: client.create_run(a_experiment),
                  lambda: client.create_experiment(f"{w.a}/{w.a_project}/stolen"),
                  lambda: client.create_registered_model(f"{w.a}~planted"),
                  lambda: client.set_registered_model_alias(public.replace("/", "~"), "production", "1")):
        with pytest.raises(MlflowException) as info:
            write()
        assert info.value.error_code == "PERMISSION_DENIED", info.value
    with pytest.raises(MlflowException):
        client.get_run(a_run)  # A's run does not exist for B's job
    assert client.get_experiment_by_name(f"{w.a}/{w.a_project}") is None
    history = w.call("GET", f"/jobs/{a_job}/metrics", w.a_user).json()[0]["histories"]["loss"]
    assert [p["value"] for p in history] == [0.9, 0.5, 0.2]  # untouched

    # B's own experiment works through the same proxy
    b_run, _ = _train(as_job(proxy, b_token), f"{w.b}/{w.b_project}",
                      run_tags(job_id=b_job, org=w.b, project=w.b_project, user="bob"))
    assert [r["run_id"] for r in w.call("GET", f"/jobs/{b_job}/run", w.b_user).json()] == [b_run]

    # no token, a forged one: refused before MLflow is asked
    assert httpx.get(f"{proxy}/api/2.0/mlflow/runs/get", params={"run_id": a_run}).status_code == 401
    forged = {"Authorization": "Bearer hjt_eyJqIjoieCJ9.AAAA"}
    assert httpx.get(f"{proxy}/api/2.0/mlflow/runs/get", params={"run_id": a_run}, headers=forged).status_code == 401


def test_mlflow_stopped_readiness_shows_it_and_zoo_calls_are_503(
    s3_server: S3Server, port_plan: PortPlan, services_home: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from haihe.server import create_app
    from tests.fixtures.platform import Tenancy

    server = MlflowServer(services_home / f"mlflow-zoo-down-{uuid.uuid4().hex[:6]}", port_plan.base + 480,
                          s3_endpoint=s3_server.endpoint, access_key=s3_server.access_key,
                          secret_key=s3_server.secret_key)
    server.start(timeout=180)
    try:
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", mlflow_url=server.url,
                            reconcile_interval_s=0)
        with TestClient(create_app(settings)) as client:
            t = Tenancy(client).bootstrap()
            org = t.org()
            user = t.login(t.user(org))
            assert client.get("/api/v1/models", headers=user).status_code == 200
            assert client.get("/readyz").json()["components"]["mlflow"]["ok"] is True
            assert server.stop()
            deadline = time.monotonic() + 30
            while server.is_ready() and time.monotonic() < deadline:
                time.sleep(0.2)

            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["components"]["mlflow"]["ok"] is False
            started = time.monotonic()
            for path in ("/api/v1/models", f"/api/v1/models/{org}/anything"):
                r = client.get(path, headers=user)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "tracking_unavailable"
            print(f"two zoo calls to a stopped MLflow answered 503 in {time.monotonic() - started:.1f} s")
            assert client.get("/api/v1/me", headers=user).status_code == 200  # nothing else breaks
    finally:
        server.stop()
