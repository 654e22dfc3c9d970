"""The datasets service through its REST API, with the in-memory S3 fake (``MemoryStore``) behind the library's
seam: push/pull, resume, tenancy, names, storage outages, delete + GC, lineage and storage accounting."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from haihe.client import raise_for_error
from haihe.client.datasets import DatasetsClientMixin, HttpUploadBackend
from haihe.datasets.memory import MemoryStore, MemoryTransport
from haihe.datasets.push import pull, push
from haihe.errors import StorageUnavailable
from haihe.platform.context import PlatformContext
from haihe.platform.datasets import service as svc
from haihe.platform.datasets.rows import Dataset
from haihe.platform.models import AuditEvent, Job, Org, Project, User
from haihe.platform.quotas import ledger as quotas
from haihe.platform.settings import Settings
from tests.fixtures.platform import Tenancy, unique

PART = 64 * 1024


class ApiClient(DatasetsClientMixin):
    """The typed dataset client over the in-process TestClient (the same calls the CLI makes over HTTP)."""

    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, headers=self.headers, **kwargs)
        raise_for_error(response)
        return response.json() if response.content else None


class Env:
    def __init__(self, client: TestClient, ctx: PlatformContext, store: MemoryStore) -> None:
        self.client, self.ctx, self.store = client, ctx, store
        self.t = Tenancy(client).bootstrap()
        self.org_a, self.org_b = self.t.org(), self.t.org()
        self.admin_a = self.t.login(self.t.user(self.org_a, "org_admin"))
        self.alice = self.t.login(self.t.user(self.org_a))  # researcher in A
        self.carol = self.t.login(self.t.user(self.org_a))  # another researcher in A
        self.admin_b = self.t.login(self.t.user(self.org_b, "org_admin"))
        self.bob = self.t.login(self.t.user(self.org_b))

    def api(self, headers: dict[str, str]) -> ApiClient:
        return ApiClient(self.client, headers)

    def create(self, headers: dict[str, str], visibility: str = "private", org: str | None = None) -> str:
        name = unique("ds")
        r = self.client.post(f"/api/v1/orgs/{org or self.org_a}/datasets",
                             json={"name": name, "visibility": visibility, "licence": "CC-BY-4.0"}, headers=headers)
        assert r.status_code == 201, r.text
        return name

    def push(self, headers: dict[str, str], name: str, root: Path, org: str | None = None, **kw: Any) -> Any:
        backend = HttpUploadBackend(self.api(headers), org or self.org_a, name)
        return push(root, backend, MemoryTransport(self.store), workers=4, **kw)

    def url(self, name: str, org: str | None = None) -> str:
        return f"/api/v1/orgs/{org or self.org_a}/datasets/{name}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", reconcile_interval_s=0,
                        dataset_retention_days=3)
    ctx = PlatformContext.from_settings(settings)
    store = MemoryStore(min_part_size=PART)
    app = create_app(settings, ctx=ctx)
    app.state.ctx.provide("datasets", svc.DatasetStorage.for_store(store, part_size=PART))
    with TestClient(app) as client:
        yield Env(client, ctx, store)


def make_tree(root: Path, sizes: dict[str, int]) -> Path:
    for rel, size in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


SIZES = {"a.bin": 5 * PART + 123, "sub/b.bin": 2 * PART, "sub/deep/c.txt": 10, "empty": 0}


def test_push_show_pull_round_trip_and_audit(env: Env, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", SIZES)
    name = env.create(env.alice, visibility="org")
    manifest = env.push(env.alice, name, src)
    assert manifest.version == 1 and manifest.total_size == sum(SIZES.values())
    r = env.client.get(env.url(name), headers=env.carol)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert detail["latest_version"] == 1 and detail["stored_bytes"] == sum(SIZES.values())
    assert [v["state"] for v in detail["versions"]] == ["committed"]
    assert {f["path"] for f in detail["manifest"]["files"]} == set(SIZES)
    # pull through presigned URLs: byte-identical
    found = env.api(env.carol).dataset_download(env.org_a, name)
    dest = tmp_path / "dest"
    pull(manifest, found.urls, dest, MemoryTransport(env.store))
    assert tree_digest(dest) == tree_digest(src)
    # a second push makes v2; v1 stays
    assert env.push(env.alice, name, src).version == 2
    assert env.client.get(env.url(name) + "?version=1", headers=env.alice).json()["shown_version"] == 1
    with env.ctx.db.session() as s:
        actions = {(e.action, e.target) for e in s.scalars(select(AuditEvent))}
    assert ("dataset.create", f"{env.org_a}/{name}") in actions
    assert ("dataset.version.commit", f"{env.org_a}/{name}@v1") in actions


def test_interrupted_push_resumes_without_resending_and_is_invisible_meanwhile(env: Env, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", SIZES)
    name = env.create(env.alice, visibility="public")
    backend = HttpUploadBackend(env.api(env.alice), env.org_a, name)
    with pytest.raises(StorageUnavailable) as info:
        push(src, backend, MemoryTransport(env.store, fail_after=4), workers=1)
    session_id = info.value.details["session_id"]
    # nobody sees a version: not the owner, not another org
    for headers in (env.alice, env.bob):
        detail = env.client.get(env.url(name), headers=headers).json()
        assert detail["latest_version"] is None and detail["manifest"] is None
        r = env.client.get(env.url(name) + "/versions/latest/download", headers=headers)
        assert r.status_code == 404
    assert [v["state"] for v in env.client.get(env.url(name), headers=env.alice).json()["versions"]] == ["uploading"]
    missing = env.api(env.alice).resume_dataset_upload(env.org_a, name, session_id)
    to_send = sum(len(f.parts) for f in missing.files)
    total_parts = 6 + 2 + 1 + 1
    assert to_send == total_parts - 4
    before = env.store.part_puts + env.store.object_puts
    manifest = push(src, backend, MemoryTransport(env.store), session_id=session_id, workers=2)
    assert env.store.part_puts + env.store.object_puts - before == to_send
    assert manifest.version == 1
    dest = tmp_path / "dest"
    pull(manifest, env.api(env.bob).dataset_download(env.org_a, name).urls, dest, MemoryTransport(env.store))
    assert tree_digest(dest) == tree_digest(src)


def test_tenancy_private_shared_public(env: Env, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"x.bin": 1000})
    name = env.create(env.alice)  # private
    env.push(env.alice, name, src)
    url = env.url(name)
    # org B cannot list, read or download A's private dataset: 404 (it does not exist for them)
    assert env.client.get(url, headers=env.bob).status_code == 404
    assert env.client.get(url + "/versions/1/download", headers=env.bob).status_code == 404
    assert name not in [d["name"] for d in env.client.get("/api/v1/datasets", headers=env.bob).json()["items"]]
    r = env.client.post(url + "/versions", json={"files": [{"path": "y", "size": 1}]}, headers=env.bob)
    assert r.status_code == 404
    assert env.client.delete(url, headers=env.admin_b).status_code == 404
    # private means: the creator and the org's admins; a colleague needs "org" visibility
    assert env.client.get(url, headers=env.carol).status_code == 404
    assert env.client.get(url, headers=env.admin_a).status_code == 200
    # only the owner org's admin may share; then B reads but cannot write
    assert env.client.put(url + f"/shares/{env.org_b}", headers=env.alice).status_code == 403
    r = env.client.put(url + f"/shares/{env.org_b}", headers=env.admin_a)
    assert r.status_code == 200 and r.json()["shares"] == [env.org_b]
    assert env.client.get(url, headers=env.bob).status_code == 200
    assert env.client.get(url + "/versions/latest/download", headers=env.bob).status_code == 200
    assert name in [d["name"] for d in env.client.get("/api/v1/datasets", headers=env.bob).json()["items"]]
    r = env.client.post(url + "/versions", json={"files": [{"path": "y", "size": 1}]}, headers=env.bob)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert env.client.delete(url, headers=env.admin_b).status_code == 403
    assert env.client.put(url + "/visibility", json={"visibility": "public"}, headers=env.admin_b).status_code == 403
    assert env.client.put(url + f"/shares/{env.org_b}", headers=env.admin_b).status_code == 403
    assert env.client.get(url, headers=env.bob).json()["shares"] == []  # who else it is shared with is not B's
    # unshare: gone again
    assert env.client.delete(url + f"/shares/{env.org_b}", headers=env.admin_a).status_code == 200
    assert env.client.get(url, headers=env.bob).status_code == 404
    # public: readable by all, writable only by the owner org
    assert env.client.put(url + "/visibility", json={"visibility": "public"}, headers=env.admin_a).status_code == 200
    assert env.client.get(url, headers=env.bob).status_code == 200
    assert env.client.get(url, headers=env.carol).status_code == 200
    assert env.client.delete(url, headers=env.bob).status_code == 403
    assert env.client.post(url + "/versions", json={"files": [{"path": "y", "size": 1}]},
                           headers=env.carol).status_code == 201


def test_bad_names_are_refused_naming_the_field(env: Env) -> None:
    for bad in ["../x", "a/b", "x;rm -rf", "UPPER", "a b", "x" * 65, "-x", "a%2f"]:
        r = env.client.post(f"/api/v1/orgs/{env.org_a}/datasets", json={"name": bad}, headers=env.alice)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["field"] == "name"
    name = env.create(env.alice)
    for i, path in enumerate(["../etc/passwd", "/abs", "a\\b", "nul\x00x", "a/./b", "x" * 300, "manifest.json",
                              "d/" * 450 + "f"]):
        files = [{"path": "ok.bin", "size": 1}, {"path": path, "size": 1}]
        r = env.client.post(env.url(name) + "/versions", json={"files": files}, headers=env.alice)
        assert r.status_code == 422, (i, path, r.text)
        assert r.json()["error"]["field"] == "files[1].path", r.text
    assert env.client.post(env.url(name) + "/versions", json={"files": [{"path": "a", "size": 1}], "extra": 1},
                           headers=env.alice).json()["error"]["field"] == "extra"
    # nothing was allocated by the refused requests
    assert env.client.get(env.url(name), headers=env.alice).json()["versions"] == []
    assert env.store.objects == {}


def test_storage_outage_is_503_and_commits_nothing(env: Env, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"x.bin": 3 * PART})
    name = env.create(env.alice)
    env.store.down = True
    r = env.client.post(env.url(name) + "/versions", json={"files": [{"path": "x.bin", "size": 3 * PART}]},
                        headers=env.alice)
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable"
    env.store.down = False
    assert env.client.get(env.url(name), headers=env.alice).json()["versions"] == []
    # an outage at completion: nothing committed; after it returns the same upload completes
    backend = HttpUploadBackend(env.api(env.alice), env.org_a, name)
    ticket = backend.begin(svc.FileSpec(path="x.bin", size=3 * PART) for _ in [0])  # type: ignore[arg-type]
    transport = MemoryTransport(env.store)
    data = (src / "x.bin").read_bytes()
    for part in ticket.files[0].parts:
        transport.put(part.url, data[part.offset:part.offset + part.size])
    hashes = {"x.bin": hashlib.sha256(data).hexdigest()}
    env.store.down = True
    r = env.client.post(env.url(name) + f"/uploads/{ticket.session_id}/complete", json={"hashes": hashes},
                        headers=env.alice)
    assert r.status_code == 503 and "storage" in r.json()["error"]["message"].lower()
    env.store.down = False
    detail = env.client.get(env.url(name), headers=env.alice).json()
    assert detail["latest_version"] is None and detail["versions"][0]["state"] == "uploading"
    assert backend.finish(ticket.session_id, hashes).version == 1


def test_abort_removes_parts_and_marks_the_version(env: Env) -> None:
    name = env.create(env.alice)
    backend = HttpUploadBackend(env.api(env.alice), env.org_a, name)
    ticket = backend.begin([svc.FileSpec(path="x.bin", size=3 * PART)])
    MemoryTransport(env.store).put(ticket.files[0].parts[0].url, b"\0" * PART)
    assert env.store.uploads
    r = env.client.delete(env.url(name) + f"/uploads/{ticket.session_id}", headers=env.alice)
    assert r.status_code == 200 and r.json()["state"] == "aborted"
    assert env.store.uploads == {} and env.store.objects == {}
    r = env.client.post(env.url(name) + f"/uploads/{ticket.session_id}/complete", json={"hashes": {}},
                        headers=env.alice)
    assert r.status_code == 409
    # the next version gets a fresh number: numbers are never reused
    assert backend.begin([svc.FileSpec(path="x.bin", size=1)]).version == 2


def test_delete_then_gc_after_retention(env: Env, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"x.bin": 2 * PART, "y": 5})
    name = env.create(env.alice, visibility="org")
    env.push(env.alice, name, src)
    assert env.client.delete(env.url(name), headers=env.carol).status_code == 403  # not creator, not admin
    r = env.client.delete(env.url(name), headers=env.alice)
    assert r.status_code == 200, r.text
    assert env.client.get(env.url(name), headers=env.alice).status_code == 404
    assert name not in [d["name"] for d in env.client.get("/api/v1/datasets", headers=env.admin_a).json()["items"]]
    r = env.client.post(f"/api/v1/orgs/{env.org_a}/datasets", json={"name": name}, headers=env.alice)
    assert r.status_code == 409
    storage = svc.storage(env.client.app.state.ctx)  # type: ignore[attr-defined]
    with env.ctx.db.session() as s:
        assert svc.collect_garbage(s, storage, env.ctx.settings).purged == []  # inside the retention window
        assert any(k.startswith(f"{env.org_a}/{name}/") for k in env.store.objects)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=4)
        report = svc.collect_garbage(s, storage, env.ctx.settings, now=later)
    assert report.purged == [f"{env.org_a}/{name}"] and report.objects_deleted == 2
    assert not any(k.startswith(f"{env.org_a}/{name}/") for k in env.store.objects)
    assert env.client.post(f"/api/v1/orgs/{env.org_a}/datasets", json={"name": name},
                           headers=env.alice).status_code == 201


def test_gc_expires_abandoned_uploads_and_storage_bytes(env: Env, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"x.bin": 1000})
    name = env.create(env.alice)
    env.push(env.alice, name, src)
    other = env.create(env.bob, org=env.org_b)
    HttpUploadBackend(env.api(env.bob), env.org_b, other).begin([svc.FileSpec(path="big", size=3 * PART)])
    with env.ctx.db.session() as s:
        ids = {o.name: o.id for o in s.scalars(select(Org))}
        assert quotas.storage_held(s, ids[env.org_a]) == 1000
        assert quotas.storage_held(s, ids[env.org_b]) == 3 * PART
        storage = svc.storage(env.client.app.state.ctx)  # type: ignore[attr-defined]
        report = svc.collect_garbage(s, storage, env.ctx.settings,
                                     now=dt.datetime.now(dt.UTC) + dt.timedelta(days=8))
        assert report.uploads_expired == [f"{env.org_b}/{other}@v1"]
        assert quotas.storage_held(s, ids[env.org_b]) == 0
    assert env.store.uploads == {}
    r = env.client.post("/api/v1/admin/datasets/gc", headers=env.alice)
    assert r.status_code == 403
    assert env.client.post("/api/v1/admin/datasets/gc", headers=env.t.admin_headers).status_code == 200


def test_lineage_jobs_and_models(env: Env, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"x.bin": 10})
    name = env.create(env.alice, visibility="public")
    env.push(env.alice, name, src)
    project = env.t.project(env.org_a)
    with env.ctx.db.session() as s:
        org = s.scalar(select(Org).where(Org.name == env.org_a))
        proj = s.scalar(select(Project).where(Project.name == project))
        user = s.scalar(select(User).where(User.username == "root"))
        assert org and proj and user
        for ref, job_name in [(f"{env.org_a}/{name}@v1", "train"), (f"{env.org_a}/{name}@latest", "eval"),
                              (f"{env.org_a}/{name}x@v1", "other")]:
            s.add(Job(id=str(uuid.uuid4()), org_id=org.id, project_id=proj.id, user_id=user.id, name=job_name,
                      kind="train", scheduler="fake", state="SUCCEEDED", spec={"name": job_name}, dataset_ref=ref))
    storage = svc.storage(env.client.app.state.ctx)  # type: ignore[attr-defined]
    detail = env.client.get(env.url(name), headers=env.alice).json()
    assert sorted(j["name"] for j in detail["lineage"]["jobs"]) == ["eval", "train"]
    assert detail["lineage"]["models"] == [] and "not configured" in detail["lineage"]["models_note"]
    asked: list[str] = []

    def lookup(ref: str) -> list[tuple[str, int]]:
        asked.append(ref)
        return [(f"{env.org_a}/digits", 3), (f"{env.org_b}/secret", 1)]

    storage.models_from_dataset = lookup
    detail = env.client.get(env.url(name), headers=env.alice).json()
    assert asked == [f"{env.org_a}/{name}@v1"]
    assert detail["lineage"]["models"] == [{"model": f"{env.org_a}/digits", "version": 3}]
    assert detail["lineage"]["models_note"] is None
    # another org sees neither A's jobs nor A's models
    detail = env.client.get(env.url(name), headers=env.bob).json()
    assert detail["lineage"]["jobs"] == [] and detail["lineage"]["models"] == [{"model": f"{env.org_b}/secret",
                                                                                "version": 1}]


def test_list_is_paginated_and_limited(env: Env) -> None:
    names = [env.create(env.alice, visibility="org") for _ in range(3)]
    first = env.client.get("/api/v1/datasets", params={"limit": 2, "org": env.org_a}, headers=env.carol).json()
    assert len(first["items"]) == 2 and first["next_cursor"] is not None
    rest = env.client.get("/api/v1/datasets", params={"limit": 2, "org": env.org_a, "cursor": first["next_cursor"]},
                          headers=env.carol).json()
    assert [d["name"] for d in first["items"] + rest["items"]] == names and rest["next_cursor"] is None
    assert env.client.get("/api/v1/datasets", params={"limit": 1000}, headers=env.carol).status_code == 422


def test_operation_ids_are_stable(env: Env) -> None:
    ops = {op["operationId"] for path in env.client.get("/openapi.json").json()["paths"].values()
           for op in path.values()}
    assert {"datasets_create", "datasets_list", "datasets_get", "dataset_versions_start", "dataset_versions_resume",
            "dataset_versions_complete", "dataset_versions_abort", "dataset_versions_download", "datasets_share",
            "datasets_set_visibility", "datasets_delete"} <= ops


def test_soft_deleted_rows_keep_their_versions_until_gc(env: Env, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"x.bin": 10})
    name = env.create(env.alice)
    env.push(env.alice, name, src)
    env.client.delete(env.url(name), headers=env.admin_a)
    with env.ctx.db.session() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == name))
        assert ds is not None and ds.deleted_at is not None and len(ds.versions) == 1


def test_storage_quota_refuses_a_version_that_would_go_over_naming_the_field(env: Env, tmp_path: Path) -> None:
    r = env.client.put(f"/api/v1/orgs/{env.org_a}/quota", json={"storage_bytes": 1500}, headers=env.t.admin_headers)
    assert r.status_code == 200, r.text
    name = env.create(env.alice)
    env.push(env.alice, name, make_tree(tmp_path / "one", {"x.bin": 1000}))
    before = set(env.store.objects)
    r = env.client.post(f"{env.url(name)}/versions", headers=env.alice,
                        json={"files": [{"path": "y.bin", "size": 1000}]})
    assert r.status_code == 402, r.text
    body = r.json()["error"]
    assert body["field"] == "files" and "storage_bytes" in body["message"] and body["details"]["left"] == 500
    assert set(env.store.objects) == before and env.store.uploads == {}  # nothing reached storage
    shown = env.client.get(f"/api/v1/orgs/{env.org_a}/quota", headers=env.alice).json()
    storage = next(b for b in shown["balances"] if b["resource"] == "storage_bytes")
    assert storage["used"] == 1000 and storage["limit"] == 1500
    assert [v["number"] for v in env.client.get(env.url(name), headers=env.alice).json()["versions"]] == [1]
