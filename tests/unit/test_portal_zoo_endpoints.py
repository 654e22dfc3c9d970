"""Portal pages of the model zoo and the endpoints through the real app (TestClient).

The zoo is the library's stateful in-memory registry (``FakeRegistry``) behind a real ``ModelZoo``, injected as the
app's ``ZooServices`` (the seam of test_zoo_service.py); the endpoints hub resolves models in the same zoo and
serves through ``FakeRuntime``. Jobs run on the demo scheduler.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from haihe.model_zoo import Lineage, ModelZoo
from haihe.model_zoo.tracking import TrackingClient
from haihe.platform.context import PlatformContext
from haihe.platform.endpoints.rows import Endpoint, EndpointUsage
from haihe.platform.gateway.config import GatewayConfig
from haihe.platform.gateway.hub import EndpointsHub
from haihe.platform.models import Credential
from haihe.platform.settings import Settings
from haihe.platform.zoo import catalog as zoo_catalog
from haihe.platform.zoo.schemas import JobLinkPublic, VersionLineage
from haihe.portal.routes.zoo import lineage_graph
from tests.browser.demo_scheduler import DemoScheduler
from tests.browser.portal_support import csrf_of
from tests.fixtures.platform import PASSWORD, Tenancy
from tests.unit.endpoint_fakes import FakeRuntime
from tests.unit.test_model_zoo_names import card_dict
from tests.unit.test_model_zoo_registry import FakeRegistry
from tests.unit.test_model_zoo_tracking import FakeMlflow

PUBLIC_URL = "https://gw.haihe.test"
SPEC = {"name": "trainer", "recipe": "digits-cnn", "resources": {"nodes": 1, "time_limit": "00:10:00"}}


@dataclass
class World:
    app: Any
    ctx: PlatformContext
    zoo: ModelZoo
    hub: EndpointsHub
    t: Tenancy
    a: str
    b: str
    a_user: str
    b_user: str

    def browser(self, username: str) -> TestClient:
        client = TestClient(self.app, base_url="http://testserver")
        token = re.search(r'name="login_token" value="([^"]+)"', client.get("/login").text)
        assert token
        r = client.post("/login", data={"username": username, "password": PASSWORD, "login_token": token.group(1),
                                        "next": "/"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        return client

    def register(self, ref: str, *, visibility: str = "private", **card: Any) -> None:
        lineage = card.pop("lineage", Lineage())
        self.zoo.register(ref, card_dict(**card), model_uri="models:/m-1", visibility=visibility,  # type: ignore[arg-type]
                          lineage=lineage)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'haihe.db'}", home=tmp_path,
                        schedulers={"demo": "demo://", "ray": "ray://127.0.0.1:9"}, default_scheduler="demo",
                        reconcile_interval_s=0, mlflow_url="http://mlflow.test", public_url=PUBLIC_URL)
    ctx = PlatformContext.from_settings(settings)
    scheduler = DemoScheduler()
    ctx.registry.register("demo", lambda url, **_: scheduler)
    zoo = ModelZoo(FakeRegistry(), cache_dir=tmp_path / "cache")
    tracking = TrackingClient("http://mlflow.test",
                              http=httpx.Client(transport=httpx.MockTransport(FakeMlflow().handler)))
    app = create_app(settings, ctx=ctx)
    ctx.provide("zoo", zoo_catalog.ZooServices(zoo=zoo, tracking=tracking))
    with TestClient(app) as api:
        hub = EndpointsHub(ctx, GatewayConfig(auth_cache_s=0, drain_s=0), runtimes={"ray": FakeRuntime()}, zoo=zoo)
        app.state.endpoints = hub
        t = Tenancy(api).bootstrap()
        a, b = t.org(), t.org()
        yield World(app, ctx, zoo, hub, t, a, b, t.user(a), t.user(b))


def _deploy(w: World, browser: TestClient, name: str, model: str, **fields: str) -> Any:
    form = browser.get(f"/endpoints/new?model={model}")
    assert form.status_code == 200 and f'value="{model}"' in form.text
    data = {"csrf_token": csrf_of(form.text), "org": w.a, "name": name, "model": model, "scheduler": "",
            "min_replicas": "1", "max_replicas": "2", "max_batch_size": "8", **fields}
    return browser.post("/endpoints/new", data=data, follow_redirects=False)


def test_zoo_list_search_and_card_with_finetune_and_deploy_links(world: World) -> None:
    w = world
    w.register(f"{w.a}/digits", task="image-classification", description="handwritten digits",
               lineage=Lineage(dataset=f"{w.a}/mnist@v2"))
    w.register(f"{w.a}/embedder", description="sentence vectors")
    browser = w.browser(w.a_user)

    home = browser.get("/")
    assert 'href="/models"' in home.text and 'href="/endpoints"' in home.text
    page = browser.get("/models")
    assert page.status_code == 200 and f"{w.a}/digits" in page.text and f"{w.a}/embedder" in page.text
    found = browser.get("/models", params={"q": "HANDWRITTEN"}).text
    assert f"{w.a}/digits" in found and f"{w.a}/embedder" not in found
    by_task = browser.get("/models", params={"task": "text-embedding"}).text
    assert f"{w.a}/embedder" in by_task and f"{w.a}/digits" not in by_task

    card = browser.get(f"/models/{w.a}/digits")
    assert card.status_code == 200 and "handwritten digits" in card.text and "Apache-2.0" in card.text
    assert f'href="/jobs/new?recipe=finetune&amp;model={w.a}%2Fdigits%3A1"' in card.text
    assert f'href="/endpoints/new?model={w.a}%2Fdigits%3A1"' in card.text
    # the fine-tune link opens the new-job form with the recipe and the zoo model filled in
    new_job = browser.get(f"/jobs/new?recipe=finetune&model={w.a}%2Fdigits%3A1").text
    assert f'value="{w.a}/digits:1"' in new_job
    assert re.search(r'value="finetune"[^>]*(checked|selected)|checked[^>]*value="finetune"', new_job)
    assert 'id="lineage-graph"' in card.text and f"{w.a}/mnist@v2" in card.text
    assert re.search(r'data-kind="dataset"', card.text) and re.search(r'data-kind="model"', card.text)


def test_aliases_through_the_form_and_field_errors(world: World) -> None:
    w = world
    w.register(f"{w.a}/digits")
    w.register(f"{w.a}/digits")
    browser = w.browser(w.a_user)
    page = browser.get(f"/models/{w.a}/digits")
    csrf = csrf_of(page.text)
    r = browser.post(f"/models/{w.a}/digits/alias", data={"csrf_token": csrf, "alias": "production", "version": "1"},
                     follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("done=alias")
    assert dict(w.zoo.get(f"{w.a}/digits").model.aliases) == {"production": 1}
    shown = browser.get(r.headers["location"]).text
    assert "Alias updated." in shown and f'href="/endpoints/new?model={w.a}%2Fdigits%40production"' in shown
    bad = browser.post(f"/models/{w.a}/digits/alias", data={"csrf_token": csrf, "alias": "staging", "version": "9"})
    assert bad.status_code == 422 and 'id="err-version"' in bad.text
    assert "staging" not in dict(w.zoo.get(f"{w.a}/digits").model.aliases)
    # without the CSRF token nothing changes
    r = browser.post(f"/models/{w.a}/digits/alias", data={"alias": "staging", "version": "2"})
    assert r.status_code == 403 and "staging" not in dict(w.zoo.get(f"{w.a}/digits").model.aliases)


def test_other_orgs_get_404_on_private_models_and_endpoints(world: World) -> None:
    w = world
    w.register(f"{w.a}/secret")
    w.register(f"{w.a}/shared", visibility="public")
    a, b = w.browser(w.a_user), w.browser(w.b_user)
    assert _deploy(w, a, "private-ep", f"{w.a}/secret:1").status_code == 303

    assert b.get(f"/models/{w.a}/secret").status_code == 404
    assert f"{w.a}/secret" not in b.get("/models").text
    shared = b.get(f"/models/{w.a}/shared")
    assert shared.status_code == 200 and 'id="alias-form"' not in shared.text  # may use, may not change
    assert b.get(f"/endpoints/{w.a}/private-ep").status_code == 404
    assert "private-ep" not in b.get("/endpoints").text
    csrf = csrf_of(b.get("/").text)
    r = b.post(f"/endpoints/{w.a}/private-ep/keys", data={"csrf_token": csrf, "key_name": "steal"})
    assert r.status_code == 404
    r = b.post(f"/models/{w.a}/shared/alias", data={"csrf_token": csrf, "alias": "evil", "version": "1"})
    assert r.status_code == 403 and "evil" not in dict(w.zoo.get(f"{w.a}/shared").model.aliases)


def test_deploy_then_endpoint_page_with_traffic_key_once_and_examples(world: World) -> None:
    w = world
    w.register(f"{w.a}/embedder")
    browser = w.browser(w.a_user)
    bad = _deploy(w, browser, "emb", f"{w.a}/nothing:1")
    assert bad.status_code == 404 and 'id="err-model"' in bad.text and "not in the model zoo" in bad.text
    bad = _deploy(w, browser, "emb", f"{w.a}/embedder:1", max_replicas="many")
    assert bad.status_code == 422 and 'id="err-max_replicas"' in bad.text
    r = _deploy(w, browser, "emb", f"{w.a}/embedder:1")
    assert r.status_code == 303 and r.headers["location"] == f"/endpoints/{w.a}/emb?done=created"

    w.hub.supervise_once()
    w.hub.supervise_once()
    with w.ctx.db.session() as s:
        ep = s.query(Endpoint).filter_by(name="emb").one()
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        for i, (req, err) in enumerate(((5, 0), (9, 2), (3, 1))):
            s.add(EndpointUsage(endpoint_id=ep.id, org_id=ep.org_id, key_prefix="hk_test", ref=f"test:{i}",
                                minute=now - dt.timedelta(minutes=3 - i), requests=req, errors=err,
                                latency_ms_sum=12.0 * (req + err), latency_ms_max=40.0))
    page = browser.get(f"/endpoints/{w.a}/emb")
    assert page.status_code == 200 and 'data-state="ready"' in page.text
    assert "17 requests served, 3 errors" in page.text
    assert page.text.count('class="tr-ok"') == 3 and page.text.count('class="tr-err"') == 2
    assert 'id="latency-chart"' in page.text and ">12 ms<" in page.text
    assert f"{PUBLIC_URL}/v2/models/emb/infer" in page.text and f'base_url=&#34;{PUBLIC_URL}/v1&#34;' in page.text
    assert "$HAIHE_KEY" in page.text and "import requests" in page.text

    # a key for this endpoint: shown once in the response that created it, never again
    r = browser.post(f"/endpoints/{w.a}/emb/keys", data={"csrf_token": csrf_of(page.text), "key_name": "app"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    key = html.unescape(re.search(r'<pre class="code" id="new-key">([^<]+)</pre>', r.text).group(1))  # type: ignore[union-attr]
    assert f"Bearer {key}" in html.unescape(r.text)  # the examples carry the real key
    with w.ctx.db.session() as s:
        cred = s.query(Credential).filter_by(name="app").one()
        assert cred.scopes == ["endpoint:emb"] and cred.prefix in key and key not in cred.secret_hash
    again = browser.get(f"/endpoints/{w.a}/emb")
    assert key not in again.text and cred.prefix in again.text
    # the model page now shows the endpoint in its lineage graph
    model = browser.get(f"/models/{w.a}/embedder").text
    assert 'data-kind="endpoint"' in model and f'href="/endpoints/{w.a}/emb"' in model
    # revoke, then scale to zero
    csrf = csrf_of(again.text)
    r = browser.post(f"/endpoints/{w.a}/emb/keys/{cred.prefix}/revoke", data={"csrf_token": csrf},
                     follow_redirects=False)
    assert r.status_code == 303 and cred.prefix not in browser.get(f"/endpoints/{w.a}/emb").text
    r = browser.post(f"/endpoints/{w.a}/emb/scale", data={"csrf_token": csrf, "min_replicas": "0",
                                                          "max_replicas": "0"}, follow_redirects=False)
    assert r.status_code == 303 and 'data-state="stopped"' in browser.get(f"/endpoints/{w.a}/emb").text
    assert browser.post(f"/endpoints/{w.a}/emb/keys", data={"key_name": "x"}).status_code == 403


def test_script_in_names_reasons_and_search_is_escaped(world: World) -> None:
    w = world
    evil = "<script>alert(1)</script>"
    w.register(f"{w.a}/embedder", description=f"desc {evil}", intended_use=evil)
    browser = w.browser(w.a_user)
    assert _deploy(w, browser, "emb", f"{w.a}/embedder:1").status_code == 303
    with w.ctx.db.session() as s:
        s.query(Endpoint).filter_by(name="emb").one().reason = f"replica died {evil}"
    csrf = csrf_of(browser.get(f"/endpoints/{w.a}/emb").text)
    pages = [browser.get("/models"), browser.get("/models", params={"q": evil}), browser.get(f"/models/{w.a}/embedder"),
             browser.get("/endpoints"), browser.get(f"/endpoints/{w.a}/emb"),
             browser.post(f"/endpoints/{w.a}/emb/keys", data={"csrf_token": csrf, "key_name": evil})]
    for r in pages:
        assert r.status_code in (200, 422), r.text
        assert evil not in r.text
    assert "&lt;script&gt;" in pages[1].text and "&lt;script&gt;" in pages[2].text and "&lt;script&gt;" in pages[4].text


def test_lineage_graph_links_dataset_job_version_and_endpoint() -> None:
    from haihe.model_zoo import ZooModel, ZooModelDetail, ZooRef

    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    model = ZooModel(ZooRef("acme", "digits"), "private", "image-classification", "d", {}, None, when, when)
    job = JobLinkPublic(id="j1", name="train", org="acme", project="p", state="SUCCEEDED", dataset="acme/mnist@v1")
    lins = [VersionLineage(1, "j1", job, "r1", "acme/mnist@v1"),
            VersionLineage(2, None, None, None, "acme/mnist@v2")]

    @dataclass
    class Org:
        name: str

    @dataclass
    class Ep:
        org: Org
        name: str
        model_version: int

    g = lineage_graph(ZooModelDetail(model), lins, [Ep(Org("acme"), "svc", 2), Ep(Org("acme"), "old", 7)])
    kinds = sorted((n.kind, n.label) for n in g["nodes"])
    assert kinds == [("dataset", "acme/mnist@v1"), ("dataset", "acme/mnist@v2"), ("endpoint", "acme/svc"),
                     ("job", "train"), ("model", "digits:1"), ("model", "digits:2")]
    assert len(g["edges"]) == 4  # mnist@v1 → train → digits:1; mnist@v2 → digits:2 → svc
    assert all(e["x2"] > e["x1"] for e in g["edges"])


def test_a_classifiers_examples_fit_it_and_the_endpoint_can_be_deleted(world: World) -> None:
    """Issue 17: the digits classifier's page offered an embeddings example and had no delete."""
    w = world
    w.register(f"{w.a}/digits", task="image-classification")
    browser = w.browser(w.a_user)
    assert _deploy(w, browser, "digits", f"{w.a}/digits:1").status_code == 303
    w.hub.supervise_once()
    page = browser.get(f"/endpoints/{w.a}/digits")
    assert page.status_code == 200
    assert "embeddings.create" not in page.text and 'id="ex-openai"' not in page.text
    assert 'id="ex-tritonclient"' in page.text and "get_model_metadata" in page.text
    other = w.browser(w.b_user)  # another org cannot delete it (nor see it)
    r = other.post(f"/endpoints/{w.a}/digits/delete", data={"csrf_token": csrf_of(other.get("/endpoints").text)})
    assert r.status_code == 404
    r = browser.post(f"/endpoints/{w.a}/digits/delete", data={"csrf_token": csrf_of(page.text)},
                     follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/endpoints?done=deleted"
    listing = browser.get(r.headers["location"])
    assert "Endpoint deleted" in listing.text and f"/endpoints/{w.a}/digits" not in listing.text
    assert browser.get(f"/endpoints/{w.a}/digits").status_code == 404
