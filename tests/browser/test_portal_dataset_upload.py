"""Folder upload from the portal, in Chromium, against the real app and the real S3 server (JuiceFS gateway).

The browser PUTs presigned parts straight to S3 (the gateway answers CORS itself), with 5 MiB parts so that one
file goes up in two parts. Checked: the progress bar reaches its maximum, the version appears with its manifest,
the bytes read back from S3 are the bytes chosen, and a cancel half-way leaves no version and no object behind.
Screenshots in English and Chinese go to ``test-artifacts/screenshots/dataset-upload/``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import port_open, wait_until
from haihe.cluster.s3 import S3Server
from haihe.datasets import layout
from haihe.datasets.upload import MIN_PART_SIZE
from haihe.serve import api_process
from tests.browser.conftest import REPO, Server
from tests.fixtures.platform import PASSWORD, unique

pytestmark = [pytest.mark.browser, pytest.mark.s3]

TIMEOUT_MS = 60_000
SHOTS = Path(os.environ.get("HAIHE_TEST_ARTIFACTS", "test-artifacts")) / "screenshots" / "dataset-upload"
BUCKET = "haihe-datasets"


def _portal(home: Path, port: int, s3_env: dict[str, str]) -> Iterator[Server]:
    """The portal (uvicorn, tests/browser/upload_app.py) with its S3 settings, a platform admin set up."""
    env = {**os.environ, **s3_env, "HAIHE_DATABASE_URL": f"sqlite:///{home / 'haihe.db'}", "HAIHE_HOME": str(home),
           "PYTHONPATH": str(REPO)}
    proc = api_process("server", port, log_dir=home, env=env, app="tests.browser.upload_app:create", cwd=REPO)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, timeout=90, what="portal server",
                   log_path=proc.log_path, alive=proc.is_running)
        r = httpx.post(url + "/api/v1/setup", json={"username": "root", "password": PASSWORD})
        assert r.status_code == 201, r.text
        token = httpx.post(url + "/api/v1/auth/token", json={"username": "root", "password": PASSWORD}).json()
        yield Server(url, token["token"])
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def upload_server(s3_server: S3Server, port_plan: PortPlan, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Server]:
    """The portal with the real S3 server wired, on this session's port plan."""
    yield from _portal(tmp_path_factory.mktemp("upload-server"), port_plan.base + 20,
                       {**s3_server.client_env(), "HAIHE_S3_ENDPOINT": s3_server.endpoint,
                        "HAIHE_S3_ACCESS_KEY": s3_server.access_key, "HAIHE_S3_SECRET_KEY": s3_server.secret_key})


@pytest.fixture(scope="module")
def storage_down_server(port_plan: PortPlan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The portal pointed at an S3 endpoint where nothing listens: storage is really down."""
    dead = port_plan.base + 22
    assert not port_open("127.0.0.1", dead), f"port {dead} of this session's plan is taken"
    yield from _portal(tmp_path_factory.mktemp("storage-down"), port_plan.base + 21,
                       {"HAIHE_S3_ENDPOINT": f"http://127.0.0.1:{dead}", "HAIHE_S3_ACCESS_KEY": "haihetest",
                        "HAIHE_S3_SECRET_KEY": "not-a-real-secret"})


def token_of(server: Server, user: str) -> str:
    r = httpx.post(server.url + "/api/v1/auth/token", json={"username": user, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def new_dataset(server: Server, org: str, token: str) -> str:
    name = unique("ds")
    r = server.api("POST", f"/api/v1/orgs/{org}/datasets", token, json={"name": name})
    assert r.status_code == 201, r.text
    return name


def sign_in(page: Any, server: Server, user: str, then: str) -> None:
    page.goto(f"{server.url}/login?next={then}")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.locator("#sign-in").click()
    assert page.url.startswith(server.url + then), page.url


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def set_language(page: Any, lang: str) -> None:
    page.locator(f'a[data-lang="{lang}"]').click()
    page.wait_for_selector(f'html[lang="{"zh-CN" if lang == "zh" else "en"}"]')


def make_folder(root: Path) -> dict[str, bytes]:
    """A folder with a two-part file (> one 5 MiB part), small files, a nested one and an empty one."""
    rnd = __import__("random").Random(1234)
    files = {
        "big.bin": rnd.randbytes(MIN_PART_SIZE + 123_457),
        "readme.txt": "数据集 dataset · hello\n".encode() * 10,
        "sub/part-0001.csv": b"a,b\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(2000)),
        "sub/empty.txt": b"",
    }
    for rel, data in files.items():
        path = root / "mydata" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def progress_of(page: Any) -> tuple[float, float]:
    value, top = page.evaluate("() => { const b = document.getElementById('ds-upload-progress');"
                               " return [b.value, b.max]; }")
    return float(value), float(top)


def test_sha256_in_the_browser_matches_hashlib(upload_server: Server, browser_context: Any) -> None:
    org, _project, user = upload_server.tenant()
    name = new_dataset(upload_server, org, token_of(upload_server, user))
    page = browser_context.new_page()
    sign_in(page, upload_server, user, f"/datasets/{org}/{name}")
    sizes = [0, 1, 55, 56, 63, 64, 65, 119, 120, 4096, 100_003]
    got = page.evaluate(
        """(sizes) => sizes.map((n) => {
             const data = new Uint8Array(n).map((_, i) => (i * 31 + 7) & 255);
             const h = new window.HaiheSha256();
             for (let i = 0; i < n; i += 97) h.update(data.subarray(i, Math.min(n, i + 97)));
             return h.hex(); })""", sizes)
    want = [hashlib.sha256(bytes((i * 31 + 7) & 255 for i in range(n))).hexdigest() for n in sizes]
    assert got == want


def test_folder_upload_goes_straight_to_s3_and_commits_a_version(
        upload_server: Server, browser_context: Any, s3_server: S3Server, tmp_path: Path) -> None:
    org, _project, user = upload_server.tenant()
    token = token_of(upload_server, user)
    name = new_dataset(upload_server, org, token)
    files = make_folder(tmp_path)
    page = browser_context.new_page()
    api_puts: list[str] = []
    s3_puts: list[str] = []
    page.on("request", lambda r: (s3_puts if r.url.startswith(s3_server.endpoint) else api_puts).append(r.url)
            if r.method == "PUT" else None)
    sign_in(page, upload_server, user, f"/datasets/{org}/{name}")
    expect(page.get_by_text("No versions yet")).to_be_visible()
    page.locator("#ds-folder").set_input_files(str(tmp_path / "mydata"))
    expect(page.locator("#ds-upload-status")).to_contain_text("4 files")
    page.get_by_label("Note").fill("first upload from the browser")
    page.locator("#ds-upload-start").click()
    expect(page.locator("#ds-upload-done a")).to_have_text("Show version v1", timeout=TIMEOUT_MS)
    value, top = progress_of(page)
    assert value == top == sum(len(d) for d in files.values())
    expect(page.locator("#ds-upload-status")).to_have_text("Version v1 committed.")
    expect(page.locator("#ds-upload-error")).to_be_hidden()
    shoot(page, "upload-done-en")
    # every byte went to S3 directly: big.bin in two presigned parts, one PUT for each other file, none to the API
    assert not api_puts
    assert len(s3_puts) == 5, s3_puts
    assert sum("partNumber=" in u for u in s3_puts) == 2

    page.locator("#ds-upload-done a").click()
    page.wait_for_url(re.compile(r".*version=1.*"))
    expect(page.get_by_text("Upload finished")).to_be_visible()
    manifest_rows = page.locator("table.manifest tbody tr")
    expect(manifest_rows).to_have_count(4)
    for rel in files:
        expect(page.locator("table.manifest").get_by_text(rel, exact=True)).to_be_visible()
    shoot(page, "version-en")
    set_language(page, "zh")
    expect(page.get_by_role("heading", name="上传新版本")).to_be_visible()
    shoot(page, "version-zh")
    set_language(page, "en")

    # what S3 holds is what was chosen, and the manifest's hashes are the true ones
    r = upload_server.api("GET", f"/api/v1/orgs/{org}/datasets/{name}/versions/1/download", token)
    assert r.status_code == 200, r.text
    body = r.json()
    by_path = {f["path"]: f for f in body["manifest"]["files"]}
    assert set(by_path) == set(files)
    for rel, data in files.items():
        assert by_path[rel]["size"] == len(data)
        assert by_path[rel]["sha256"] == hashlib.sha256(data).hexdigest(), rel
        got = httpx.get(body["urls"][rel], timeout=30)
        assert got.status_code == 200 and got.content == data, rel
    detail = upload_server.api("GET", f"/api/v1/orgs/{org}/datasets/{name}", token).json()
    assert detail["latest_version"] == 1
    assert [v["note"] for v in detail["versions"]] == ["first upload from the browser"]


def test_cancel_half_way_leaves_no_version_and_no_object(
        upload_server: Server, browser_context: Any, s3_server: S3Server, tmp_path: Path) -> None:
    org, _project, user = upload_server.tenant()
    token = token_of(upload_server, user)
    name = new_dataset(upload_server, org, token)
    make_folder(tmp_path)
    page = browser_context.new_page()
    held: list[Any] = []

    def hold_second_part(route: Any) -> None:
        # the second part of big.bin never gets an answer: the upload is stuck half-way until cancelled
        if route.request.method == "PUT" and "partNumber=2" in route.request.url:
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile("^" + re.escape(s3_server.endpoint) + "/"), hold_second_part)
    sign_in(page, upload_server, user, f"/datasets/{org}/{name}")
    page.locator("#ds-folder").set_input_files(str(tmp_path / "mydata"))
    page.locator("#ds-upload-start").click()
    expect(page.locator("#ds-upload-cancel")).to_be_visible()
    page.wait_for_function("() => { const b = document.getElementById('ds-upload-progress');"
                           " return b.value >= 5 * 1024 * 1024 && b.value < b.max; }", timeout=TIMEOUT_MS)
    expect(page.locator("#ds-upload-status")).to_contain_text("Uploading:")
    assert held, "the second part was never sent"
    shoot(page, "half-way-en")
    page.locator("#ds-upload-cancel").click()
    expect(page.locator("#ds-upload-status")).to_have_text("Upload cancelled; nothing was kept.",
                                                           timeout=TIMEOUT_MS)
    expect(page.locator("#ds-upload-cancel")).to_be_hidden()
    expect(page.locator("#ds-upload-error")).to_be_hidden()
    assert progress_of(page)[0] == 0
    set_language(page, "zh")
    shoot(page, "cancelled-zh")
    # the page shows no version, the API none committed, and S3 holds nothing of this dataset
    expect(page.get_by_text("还没有版本", exact=False)).to_be_visible()
    set_language(page, "en")
    expect(page.get_by_text("No versions yet")).to_be_visible()
    shoot(page, "cancelled-en")
    detail = upload_server.api("GET", f"/api/v1/orgs/{org}/datasets/{name}", token).json()
    assert detail["latest_version"] is None
    assert [v["state"] for v in detail["versions"]] == ["aborted"]
    prefix = layout.dataset_prefix(org, name)
    # JuiceFS is a file system: emptied directories stay listed as "dir/" markers of no bytes; no file may stay
    left = [o.object_name for o in s3_server.client().list_objects(BUCKET, prefix=prefix, recursive=True)
            if not o.object_name.endswith("/")]
    assert left == []
    uploads = s3_server.client()._list_multipart_uploads(BUCKET, prefix=prefix)
    assert [u.object_name for u in uploads.uploads] == []


def test_upload_errors_are_shown_beside_the_form(upload_server: Server, browser_context: Any, tmp_path: Path
                                                 ) -> None:
    """A refused start (here: a path the dataset layout refuses) is shown next to the form, with no version."""
    org, _project, user = upload_server.tenant()
    name = new_dataset(upload_server, org, token_of(upload_server, user))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ok.txt").write_bytes(b"ok")
    (bad / "tab\there.txt").write_bytes(b"x")
    page = browser_context.new_page()
    sign_in(page, upload_server, user, f"/datasets/{org}/{name}")
    page.locator("#ds-upload-start").click()
    expect(page.locator("#ds-upload-error")).to_have_text("Choose a folder first.")
    page.locator("#ds-folder").set_input_files(str(bad))
    page.locator("#ds-upload-start").click()
    expect(page.locator("#ds-upload-error")).to_contain_text("Upload failed:", timeout=TIMEOUT_MS)
    expect(page.locator("#ds-upload-start")).to_be_enabled()
    shoot(page, "refused-en")
    expect(page.get_by_text("No versions yet")).to_be_visible()


def test_storage_down_is_said_beside_the_form(storage_down_server: Server, browser_context: Any, tmp_path: Path
                                             ) -> None:
    """With the S3 server unreachable, starting the upload fails with the storage message (HTTP 503), no version."""
    org, _project, user = storage_down_server.tenant()
    name = new_dataset(storage_down_server, org, token_of(storage_down_server, user))
    make_folder(tmp_path)
    page = browser_context.new_page()
    sign_in(page, storage_down_server, user, f"/datasets/{org}/{name}")
    page.locator("#ds-folder").set_input_files(str(tmp_path / "mydata"))
    with page.expect_response(lambda r: r.url.endswith("/versions")) as answer:
        page.locator("#ds-upload-start").click()
    assert answer.value.status == 503
    expect(page.locator("#ds-upload-error")).to_contain_text("Storage is unavailable right now", timeout=TIMEOUT_MS)
    expect(page.locator("#ds-upload-start")).to_be_enabled()
    shoot(page, "storage-down-en")
    set_language(page, "zh")
    expect(page.get_by_text("还没有版本", exact=False)).to_be_visible()
    detail = storage_down_server.api("GET", f"/api/v1/orgs/{org}/datasets/{name}").json()
    assert detail["versions"] == []
