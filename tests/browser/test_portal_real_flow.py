"""The portal in Chromium on REAL services: the real Slurm cluster (partition ``gpu``, fake GPUs), MLflow and S3.

A researcher signs in, submits digits-cnn with 1 GPU, watches its log stream and loss curve, opens the zoo version
it produced, deploys it (a Slurm-hosted model server), creates an API key and runs the page's own curl example; an
admin lowers the GPU-hours quota and the next submit is refused at the field; another org's URLs are 404.
Every step leaves full-page screenshots in English and Chinese under test-artifacts/screenshots/real-flow/.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from haihe.cluster.ports import PortPlan
from tests.browser.real_stack import RealStack, start_real_stack
from tests.fixtures.platform import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.slurm, pytest.mark.mlflow, pytest.mark.s3, pytest.mark.slow]

SHOTS = Path(os.environ.get("HAIHE_TEST_ARTIFACTS", "test-artifacts")) / "screenshots" / "real-flow"
TRAIN_TIMEOUT_MS = 240_000  # queue + python start + 8 epochs + registration on a shared 2-core host
READY_TIMEOUT_S = 300.0
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def stack(slurm_cluster: Any, s3_server: Any, mlflow_server: Any, port_plan: PortPlan,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    yield from start_real_stack(tmp_path_factory.mktemp("portal-real"), port_plan, slurm_cluster, s3_server,
                                mlflow_server)


def shoot_both(page: Any, step: str) -> None:
    """Full-page screenshots of the current page in English and in Chinese (switched in the header), ending in
    English."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for lang, html_lang in (("en", "en"), ("zh", "zh-CN")):
        page.locator(f'a[data-lang="{lang}"]').click()
        page.wait_for_selector(f'html[lang="{html_lang}"]')
        page.screenshot(path=str(SHOTS / f"{step}-{lang}.png"), full_page=True)
    page.locator('a[data-lang="en"]').click()
    page.wait_for_selector('html[lang="en"]')


# the visible text of a page, outside logs, code and charts: what must be in the reader's language
VISIBLE_TEXT_JS = """() => {
  const skip = 'pre, code, script, style, canvas, textarea, [translate="no"], .lang-switch';
  const parts = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    const el = walk.currentNode.parentElement;
    if (!el || el.closest(skip) || !el.getClientRects().length) continue;
    parts.push(walk.currentNode.textContent);
  }
  return parts.join(' ');
}"""
# words that stay as they are in Chinese: product and protocol names, units
KEPT_WORDS = {"haihe", "gpu", "gpus", "cpu", "cpus", "mlflow", "slurm", "ray", "api", "yaml", "json", "csv", "s3",
              "ddp", "torchrun", "mpi", "oip", "openai", "curl", "sha256", "utc", "english"}


def untranslated(page: Any, *names: str) -> set[str]:
    """Latin words on the page that are neither names of this test's things nor kept as they are."""
    kept = set(KEPT_WORDS)
    for name in names:
        kept.update(w.lower() for w in re.findall(r"[A-Za-z]+", name))
    words: set[str] = set()
    for token in re.findall(r"[A-Za-z0-9_-]+", page.evaluate(VISIBLE_TEXT_JS)):
        if not re.search(r"\d", token):  # ids, versions, times and node names are no words
            words.update(re.findall(r"[A-Za-z]{3,}", token))
    return {w for w in words if w.lower() not in kept}


def job_nodes(stack: RealStack, job_id: str) -> list[str]:
    return list(stack.api("GET", f"/api/v1/jobs/{job_id}").json().get("nodes") or [])


def sign_in(page: Any, stack: RealStack, username: str, then: str = "/") -> None:
    page.goto(f"{stack.url}/login?next={then}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.locator("#sign-in").click()
    assert page.url.startswith(stack.url + then), (page.url, page.locator("main").inner_text())


def fill_gpu_job(page: Any, stack: RealStack, name: str, time_limit: str = "00:10:00") -> None:
    page.goto(stack.url + "/jobs/new")
    page.locator("#f-name").fill(name)
    page.locator('input[name="source"][value="digits-cnn"]').check()
    page.locator("#f-partition").select_option("gpu")
    page.locator("#f-gpus_per_node").fill("1")
    page.locator("#f-time_limit").fill(time_limit)


def reload_until(page: Any, selector: str, attr: str, wanted: set[str], timeout_s: float) -> str:
    """Reload until ``selector``'s ``attr`` is one of ``wanted`` (pages that do not refresh themselves)."""
    deadline = time.monotonic() + timeout_s
    value = ""
    while time.monotonic() < deadline:
        value = page.locator(selector).get_attribute(attr) or ""
        if value in wanted:
            return value
        page.wait_for_timeout(2000)
        page.reload()
    raise AssertionError(f"{selector}[{attr}] is {value!r}, never one of {wanted}: "
                         f"{page.locator('main').inner_text()[:2000]}")


def test_train_on_gpu_watch_deploy_and_call_with_the_pages_curl(stack: RealStack, browser_context: Any) -> None:
    org, _project, user = stack.tenant()
    page = browser_context.new_page()
    page.goto(stack.url + "/")
    page.wait_for_url(re.compile(r"/login\?next="))
    shoot_both(page, "01-sign-in")
    sign_in(page, stack, user)
    shoot_both(page, "02-dashboard")

    # New job: the digits-cnn recipe on the real cluster's gpu partition, 1 GPU, registered in the zoo
    page.goto(stack.url + "/jobs/new")
    shoot_both(page, "03-new-job")
    fill_gpu_job(page, stack, "digits-gpu")
    page.locator("#f-register").fill("digits")
    assert page.locator("#est-gpu").inner_text() == "0.17"  # 1 node x 1 GPU x 10 min, computed as typed
    page.locator("#submit-job").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}\?done=submitted"), timeout=UI_TIMEOUT_MS)
    t_submit = time.monotonic()
    job_url = page.url.split("?")[0]
    job_id = job_url.rsplit("/", 1)[1]

    # the log streams in over server-sent events while the page stays open (8 epochs, one line each); the same
    # stream keeps the facts, the timeline and the loss curve current during the run, without a reload. A second
    # tab follows the same job in Chinese (the language is a cookie: this tab, loaded in English, stays English).
    timeline = page.locator("#timeline li")
    items_at_load = timeline.count()
    zh = browser_context.new_page()
    zh.goto(f"{stack.url}/lang/zh?next=/jobs/{job_id}")
    zh.wait_for_selector('html[lang="zh-CN"]')
    zh_items_at_load = zh.locator("#timeline li").count()
    logs = page.locator("#logs")
    expect(logs).to_contain_text("epoch 1/", timeout=TRAIN_TIMEOUT_MS)
    live_curve = page.locator('#charts canvas[data-metric="loss"]')
    expect(live_curve).to_have_count(1, timeout=TRAIN_TIMEOUT_MS)
    state_at_curve = page.locator("#job-state .badge").get_attribute("data-state")
    expect(zh.locator('#charts canvas[data-metric="loss"]')).to_have_count(1, timeout=UI_TIMEOUT_MS)
    zh_state_at_curve = zh.locator("#job-state .badge").get_attribute("data-state")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "03b-job-live-en.png"), full_page=True)
    zh.screenshot(path=str(SHOTS / "03b-job-live-zh.png"), full_page=True)
    expect(page.locator("#job-nodes")).to_contain_text("gn", timeout=UI_TIMEOUT_MS)
    expect(logs).to_contain_text("epoch 8/8", timeout=TRAIN_TIMEOUT_MS)
    try:
        page.wait_for_selector('#job-state .badge[data-state="SUCCEEDED"]', timeout=TRAIN_TIMEOUT_MS)
    except Exception:
        api_state = stack.api("GET", f"/api/v1/jobs/{job_id}").json().get("state")
        raise AssertionError(f"the badge never showed SUCCEEDED: API says {api_state}, stream is "
                             f"{page.locator('#log-status').get_attribute('data-state')}, log tail "
                             f"{logs.inner_text()[-300:]!r}") from None
    expect(page.locator("#log-status")).to_have_attribute("data-state", "ended", timeout=UI_TIMEOUT_MS)
    assert state_at_curve == "RUNNING", f"the loss curve appeared only once the job was {state_at_curve}"
    assert timeline.count() > items_at_load, "the timeline did not grow while the page was open"
    # the Chinese tab: the same live updates, and every word on it in Chinese (names, logs and code aside)
    zh.wait_for_selector('#job-state .badge[data-state="SUCCEEDED"]', timeout=UI_TIMEOUT_MS)
    assert zh_state_at_curve == "RUNNING", f"the zh tab's curve appeared only once the job was {zh_state_at_curve}"
    assert zh.locator("#timeline li").count() > zh_items_at_load, "the zh timeline did not grow without a reload"
    expect(zh.locator("#cancel-job")).to_have_count(0)
    assert "运行" in zh.locator("#timeline").inner_text()
    zh.screenshot(path=str(SHOTS / "03c-job-done-zh.png"), full_page=True)
    left = untranslated(zh, org, user, _project, "digits-gpu", *job_nodes(stack, job_id))  # metric keys: translate=no
    assert not left, f"English left on the Chinese job page: {sorted(left)}"
    zh.close()
    expect(page.locator("#cancel-job")).to_have_count(0)  # nothing left to cancel: the action is gone
    assert page.locator("#job-elapsed").inner_text() != "—"
    print(f"digits-cnn on gpu: submitted to SUCCEEDED in the browser in {time.monotonic() - t_submit:.1f}s")
    assert "HAIHE_RESULT" in logs.inner_text()
    job = stack.api("GET", f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "SUCCEEDED" and job["spec"]["resources"]["partition"] == "gpu", job
    assert all(n.startswith("gn") for n in job["nodes"]), job["nodes"]  # ran on a GPU node of the real cluster

    # the "View run" link MLflow printed in the job's log opens the run in MLflow's own UI, through the platform,
    # with the researcher's portal session (the job page links it too)
    view = re.search(r"View run \S+ at: (\S+/mlflow/#/experiments/\d+/runs/[0-9a-f]+)", logs.inner_text())
    assert view, f"no 'View run' link in the log: {logs.inner_text()[-1500:]!r}"
    page.goto(view.group(1))
    expect(page.get_by_text("digits-cnn").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text("Can't load run details")).to_have_count(0)
    page.screenshot(path=str(SHOTS / "04a-mlflow-run.png"), full_page=True)
    # another org's researcher, signed in to the portal, asks MLflow for that run as the UI would: not found
    _ob, _pb, bob = stack.tenant()
    with httpx.Client(base_url=stack.url) as other:
        assert other.post("/api/v1/auth/session", json={"username": bob, "password": PASSWORD}).status_code == 204
        run_id = view.group(1).rsplit("/", 1)[1]
        asked = other.get("/mlflow/ajax-api/2.0/mlflow/runs/get", params={"run_id": run_id})
        assert asked.status_code == 404 and run_id not in asked.text, asked.text
    page.goto(job_url)
    expect(page.locator("#mlflow-links a[data-run-link]")).to_have_count(1, timeout=UI_TIMEOUT_MS)

    # the loss curve comes from the job's MLflow run: a canvas with at least two points
    page.reload()
    loss = page.locator('#charts canvas[data-metric="loss"]')
    expect(loss).to_have_count(1, timeout=UI_TIMEOUT_MS)
    assert int(loss.get_attribute("data-points") or 0) >= 2
    shoot_both(page, "04-job-logs-and-curve")

    # the zoo version it produced, with the job in its lineage
    produced = page.locator("#job-produced a.produced-version")
    if produced.count() != 1:
        zoo = stack.api("GET", f"/api/v1/models/{org}/digits").json()
        raise AssertionError(f"the job page links no zoo version of {org}/digits; the zoo API says {zoo}")
    version = produced.get_attribute("data-version")
    produced.click()
    page.wait_for_url(re.compile(rf"/models/{org}/digits#v{version}$"))
    row = page.locator(f"#versions-table tr#v{version}")
    assert row.get_by_role("link", name="digits-gpu").get_attribute("href") == f"/jobs/{job_id}"
    shoot_both(page, "05-zoo-version")

    # deploy it: a Slurm-hosted model server of exactly that version
    page.locator("#deploy").click()
    page.wait_for_url(re.compile(r"/endpoints/new\?model="))
    assert page.locator("#e-model").input_value() == f"{org}/digits:{version}"
    endpoint = f"dig{uuid.uuid4().hex[:6]}"
    page.locator("#e-name").fill(endpoint)
    shoot_both(page, "06-deploy-form")
    page.locator("#e-name").fill(endpoint)  # the language switch reloaded the form
    page.locator("#deploy-submit").click()
    page.wait_for_url(re.compile(rf"/endpoints/{org}/{endpoint}\?done=created"), timeout=UI_TIMEOUT_MS)
    t_deploy = time.monotonic()
    reload_until(page, "#ep-state", "data-state", {"ready"}, READY_TIMEOUT_S)
    print(f"endpoint ready {time.monotonic() - t_deploy:.1f}s after the deploy form")
    shoot_both(page, "07-endpoint-ready")

    # an API key, shown once, and the page's own curl example run as it stands
    page.locator("#key-name").fill("ci-key")
    with page.expect_navigation():  # the post's answer, not the page it was sent from
        page.locator("#create-key").click()
    key = page.locator("#new-key").inner_text().strip()
    curl = page.locator("#ex-curl").inner_text()
    assert key and key in curl
    page.screenshot(path=str(SHOTS / "08-api-key-en.png"), full_page=True)  # reloading would hide the key
    argv = shlex.split(curl.replace("\\\n", " "))
    urls = [a for a in argv if a.startswith("http")]
    assert argv[0] == "curl" and urls == [f"{stack.url}/v2/models/{endpoint}/infer"], argv  # the test server only
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["model_name"] == endpoint and answer["model_version"] == version, answer
    logits = answer["outputs"][0]  # one score per digit class for the one image sent
    assert logits["shape"] == [1, 10] and len(logits["data"]) == 10, answer
    assert all(math.isfinite(v) for v in logits["data"]) and len(set(logits["data"])) > 1, answer
    page.goto(f"{stack.url}/endpoints/{org}/{endpoint}")  # the key is gone from the page once it has been shown
    assert page.locator("#new-key").count() == 0
    assert page.locator("#keys-table").get_by_text("ci-key", exact=True).count() == 1
    assert key not in page.content()
    # a key is shown once, so the Chinese screenshot of that moment needs a second key
    page.goto(f"{stack.url}/lang/zh?next=/endpoints/{org}/{endpoint}")
    page.wait_for_selector('html[lang="zh-CN"]')
    page.locator("#key-name").fill("ci-key-zh")
    with page.expect_navigation():  # the post's answer, not the page it was sent from
        page.locator("#create-key").click()
    assert page.locator("#new-key").inner_text().strip() in page.locator("#ex-curl").inner_text()
    page.screenshot(path=str(SHOTS / "08-api-key-zh.png"), full_page=True)
    page.goto(f"{stack.url}/lang/en?next=/endpoints/{org}/{endpoint}")
    page.wait_for_selector('html[lang="en"]')
    shoot_both(page, "08-api-key-listed")


def test_admin_lowers_the_gpu_quota_and_the_next_submit_is_refused_at_the_field(
        stack: RealStack, browser_context: Any) -> None:
    org, _project, user = stack.tenant()
    researcher = browser_context.new_page()
    sign_in(researcher, stack, user)
    fill_gpu_job(researcher, stack, "fits")  # before the change: the same job is accepted by the real cluster
    researcher.locator("#submit-job").click()
    researcher.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}\?done=submitted"), timeout=UI_TIMEOUT_MS)
    researcher.locator("#cancel-job").click()
    researcher.wait_for_url(re.compile(r"done=cancelled"))

    browser_context.clear_cookies()
    admin = browser_context.new_page()
    sign_in(admin, stack, "root", then=f"/admin/orgs/{org}")
    # numbers that are no limit are refused at their fields, all at once, in the reader's language
    for lang, html_lang, finite in (("en", "en", "finite"), ("zh", "zh-CN", "有限")):
        admin.goto(f"{stack.url}/lang/{lang}?next=/admin/orgs/{org}")
        admin.wait_for_selector(f'html[lang="{html_lang}"]')
        admin.locator("#q__gpu_hours").fill("1e309")
        admin.locator("#q__cpu_hours").fill("nan")
        with admin.expect_navigation():  # the post's answer, not the page it was sent from
            admin.locator("#quota-form-org button[type=submit]").click()
        for field in ("gpu_hours", "cpu_hours"):
            err = admin.locator(f"#err-q__{field}")
            expect(err).to_be_visible()
            assert finite in err.inner_text(), (lang, field, err.inner_text())
        assert admin.locator("#q__gpu_hours").input_value() == "1e309"  # the form keeps what was typed
        admin.screenshot(path=str(SHOTS / f"09a-quota-not-finite-{lang}.png"), full_page=True)
    saved = stack.api("GET", f"/api/v1/orgs/{org}/quota").json().get("quota") or {}
    assert saved.get("gpu_hours") is None and saved.get("cpu_hours") is None, saved  # nothing was saved
    admin.goto(f"{stack.url}/lang/en?next=/admin/orgs/{org}")
    admin.wait_for_selector('html[lang="en"]')
    admin.locator("#q__gpu_hours").fill("0.1")
    admin.locator("#quota-form-org button[type=submit]").click()
    admin.wait_for_url(re.compile(r"done=quota_saved"))
    assert admin.locator("#q__gpu_hours").input_value() == "0.1"
    shoot_both(admin, "09-admin-lowers-quota")

    browser_context.clear_cookies()
    sign_in(researcher, stack, user)
    for lang, html_lang, words in (("en", "en", "gpu_hours"), ("zh", "zh-CN", "超出配额")):
        researcher.goto(f"{stack.url}/lang/{lang}?next=/jobs/new")
        researcher.wait_for_selector(f'html[lang="{html_lang}"]')
        fill_gpu_job(researcher, stack, "too-big")
        assert researcher.locator("#est-over").is_visible()  # the estimate warns before the submit
        with researcher.expect_navigation():  # the post's answer, not the page it was sent from
            researcher.locator("#submit-job").click()
        err = researcher.locator("#err-resources")
        expect(err).to_be_visible()
        assert "gpu_hours" in err.inner_text()
        assert words in researcher.locator("#resources").inner_text()
        assert researcher.locator("#f-gpus_per_node").input_value() == "1"  # the form keeps what was typed
        researcher.screenshot(path=str(SHOTS / f"10-quota-error-at-field-{lang}.png"), full_page=True)
    researcher.goto(f"{stack.url}/lang/en?next=/")


def test_another_orgs_real_job_and_dataset_urls_are_404(stack: RealStack, browser_context: Any) -> None:
    org_a, project_a, alice = stack.tenant()
    _org_b, _project_b, bob = stack.tenant()
    token_a = stack.api("POST", "/api/v1/auth/token", json={"username": alice, "password": PASSWORD}).json()["token"]
    r = stack.api("POST", f"/api/v1/orgs/{org_a}/projects/{project_a}/jobs", token=token_a, json={"spec": {
        "name": "alice-secret", "entrypoint": ["true"], "resources": {"partition": "debug", "time_limit": 5}}})
    assert r.status_code == 201, r.text
    job_url = f"{stack.url}/jobs/{r.json()['id']}"
    r = stack.api("POST", f"/api/v1/orgs/{org_a}/datasets", token=token_a,
                  json={"name": "alice-data", "description": "alice-private-scans"})
    assert r.status_code == 201, r.text
    dataset_url = f"{stack.url}/datasets/{org_a}/alice-data"

    page = browser_context.new_page()
    sign_in(page, stack, alice)
    pages = (("11-other-org-job", job_url, "alice-secret"),
             ("12-other-org-dataset", dataset_url, "alice-private-scans"))
    for _step, url, secret in pages:  # the owner sees both
        response = page.goto(url)
        assert response is not None and response.status == 200, url
        assert secret in page.content()
    browser_context.clear_cookies()
    sign_in(page, stack, bob)
    for step, url, secret in pages:
        response = page.goto(url)
        assert response is not None and response.status == 404, url
        assert secret not in page.content()
        shoot_both(page, step)


def test_my_own_code_archive_goes_straight_to_s3_and_runs_on_slurm(
        stack: RealStack, browser_context: Any, s3_server: Any, tmp_path: Path) -> None:
    import hashlib
    import tarfile

    from haihe.datasets.store import MinioStore

    org, project, user = stack.tenant()
    marker = uuid.uuid4().hex
    src = tmp_path / "code"
    src.mkdir()
    (src / "train.py").write_text(f"import socket\nprint('own code {marker} on', socket.gethostname())\n")
    archive = tmp_path / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "train.py", arcname="train.py")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    page = browser_context.new_page()
    sign_in(page, stack, user)
    page.goto(stack.url + "/jobs/new")
    page.locator("#f-name").fill("own-code")
    page.locator('input[name="source"][value="own"]').check()
    page.locator("#f-entrypoint").fill("python3 train.py")
    page.locator("#f-partition").select_option("cpu")
    page.locator("#f-time_limit").fill("00:05:00")
    page.locator("#f-workdir").set_input_files(str(archive))
    expect(page.locator("#hint-workdir")).to_have_text("Code uploaded.", timeout=UI_TIMEOUT_MS)
    code_uri = page.locator("#f-code_uri").input_value()
    assert code_uri.endswith(f"/{digest}.tar.gz"), code_uri  # content-addressed by the hash the browser computed
    bucket, key = code_uri.removeprefix("s3://").split("/", 1)
    store = MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket)
    body = store.open(key)  # the browser PUT it straight to S3: the bytes are the archive's
    try:
        assert body.read() == archive.read_bytes()
    finally:
        body.close()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "11-own-code-uploaded-en.png"), full_page=True)
    page.locator("#submit-job").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}\?done=submitted"), timeout=UI_TIMEOUT_MS)
    expect(page.locator("#logs")).to_contain_text(f"own code {marker} on c", timeout=TRAIN_TIMEOUT_MS)
    page.wait_for_selector('#job-state .badge[data-state="SUCCEEDED"]', timeout=TRAIN_TIMEOUT_MS)
    shoot_both(page, "12-own-code-ran")

    # a job may name only a bundle that was really uploaded, for its own project
    token = stack.api("POST", "/api/v1/auth/token", json={"username": user, "password": PASSWORD}).json()["token"]
    spec = {"name": "no-code", "entrypoint": ["python3", "train.py"],
            "resources": {"partition": "cpu", "time_limit": 5}}
    for uri in (code_uri.replace(digest, "0" * 64), code_uri.replace(f"/{project}/", "/someone-else/")):
        r = stack.api("POST", f"/api/v1/orgs/{org}/projects/{project}/jobs", token=token,
                      json={"spec": spec, "code_uri": uri})
        assert r.status_code == 422 and r.json()["error"]["field"] == "code_uri", r.text
