"""Portal pages through the real app (TestClient): sign-in, tenancy, CSRF, escaping, the job pages and forms."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from haihe.platform.models import AuditEvent, Job
from tests.browser.portal_support import Portal, csrf_of, make_portal


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[Portal]:
    yield from make_portal(tmp_path)


def _setup_org(portal: Portal) -> tuple[str, str, str]:
    t = portal.tenancy
    org = t.org()
    project = t.project(org)
    user = t.user(org)
    return org, project, user


def _submit(client: TestClient, target: str, **fields: str) -> object:
    page = client.get("/jobs/new")
    data = {"csrf_token": csrf_of(page.text), "mode": "form", "target": target, "name": "digits",
            "source": "digits-cnn", "nodes": "1", "gpus_per_node": "0", "tasks_per_node": "1", "cpus_per_task": "1",
            "time_limit": "00:30:00", "launcher": "none", "scheduler": "demo", "partition": "debug", **fields}
    return client.post("/jobs/new", data=data, follow_redirects=False)


def test_pages_need_a_session_and_sign_in_sets_the_api_cookie_flags(portal: Portal) -> None:
    org, _project, user = _setup_org(portal)
    anon = TestClient(portal.app)
    r = anon.get("/jobs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fjobs"
    login = anon.get("/login?next=/jobs")
    token = re.search(r'name="login_token" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
    bad = anon.post("/login", data={"username": user, "password": "wrong-password!", "login_token": token})
    assert bad.status_code == 401 and 'id="login-error"' in bad.text
    token = re.search(r'name="login_token" value="([^"]+)"', bad.text).group(1)  # type: ignore[union-attr]
    r = anon.post("/login", data={"username": user, "password": "correct-horse-battery", "login_token": token,
                                  "next": "/jobs"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/jobs"
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("haihe_session="))
    csrf = next(c for c in cookies if c.startswith("haihe_csrf="))
    assert "HttpOnly" in session and "samesite=lax" in session.lower()
    assert "HttpOnly" not in csrf and "samesite=strict" in csrf.lower()
    page = anon.get("/")
    assert page.status_code == 200 and user in page.text and org in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_login_form_without_its_token_is_refused(portal: Portal) -> None:
    _org, _project, user = _setup_org(portal)
    anon = TestClient(portal.app)
    r = anon.post("/login", data={"username": user, "password": "correct-horse-battery", "login_token": "forged"})
    assert r.status_code == 403 and "haihe_session" not in r.headers.get("set-cookie", "")


def test_open_redirects_are_refused(portal: Portal) -> None:
    anon = TestClient(portal.app)
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = anon.get(f"/lang/zh?next={target}", follow_redirects=False)
        assert r.headers["location"] == "/"


def test_language_switch_is_kept_in_a_cookie(portal: Portal) -> None:
    _org, _project, user = _setup_org(portal)
    browser = portal.browser(user)
    assert "Running and queued" in browser.get("/").text
    r = browser.get("/lang/zh?next=/jobs", follow_redirects=False)
    assert r.headers["location"] == "/jobs" and "haihe_lang=zh" in r.headers["set-cookie"]
    page = browser.get("/")
    assert "运行与排队中的作业" in page.text and 'lang="zh-CN"' in page.text
    browser.get("/lang/en")
    assert "Running and queued" in browser.get("/").text


def test_cross_site_post_without_the_csrf_token_is_refused_and_audited(portal: Portal) -> None:
    org, project, user = _setup_org(portal)
    browser = portal.browser(user)
    r = browser.post("/jobs/new", data={"target": f"{org}/{project}", "name": "evil", "source": "digits-cnn"},
                     follow_redirects=False)
    assert r.status_code == 403 and "security token" in r.text
    r = browser.post("/jobs/new", data={"csrf_token": "0" * 64, "target": f"{org}/{project}", "name": "evil"})
    assert r.status_code == 403
    with portal.ctx.db.session() as s:
        assert s.query(Job).count() == 0
        denied = s.query(AuditEvent).filter(AuditEvent.action == "auth.csrf").all()
        assert len(denied) == 2 and all(e.actor == user for e in denied)
    # and sign-out needs the token too: a cross-site form cannot sign you out
    assert browser.post("/logout", follow_redirects=False).status_code == 403


def test_submit_watch_cancel_and_resubmit(portal: Portal) -> None:
    org, project, user = _setup_org(portal)
    browser = portal.browser(user)
    r = _submit(browser, f"{org}/{project}")
    assert r.status_code == 303, r.text  # type: ignore[attr-defined]
    job_url = r.headers["location"].split("?")[0]  # type: ignore[attr-defined]
    job_id = job_url.rsplit("/", 1)[1]
    portal.reconcile()
    page = browser.get(job_url)
    assert 'data-state="QUEUED"' in page.text and "#1 in queue" in page.text and "Priority" in page.text
    dash = browser.get("/")
    assert "digits" in dash.text and "#1 in queue" in dash.text
    ref = next(iter(portal.scheduler.jobs))
    portal.scheduler.advance(ref, 3)
    portal.reconcile()
    page = browser.get(job_url)
    assert 'data-state="RUNNING"' in page.text and "cn1" in page.text
    # the log stream: server-sent events with the offset as id, resumable with Last-Event-ID
    portal.scheduler.advance(ref, 20)  # finishes
    portal.reconcile()
    body = browser.get(f"{job_url}/logs/stream").text
    assert "event: state" in body and "SUCCEEDED" in body and "event: end" in body
    assert "loss" in body and re.search(r"^id: \d+$", body, re.M)
    # the page's facts come from the same stream: the last `job` event says the job is over (no Cancel)
    jobs_sent = [json.loads(m) for m in re.findall(r"^event: job\ndata: (.*)$", body, re.M)]
    assert jobs_sent and jobs_sent[-1]["state"] == "SUCCEEDED" and jobs_sent[-1]["terminal"] is True
    assert jobs_sent[-1]["timeline"] and jobs_sent[-1]["label"] and jobs_sent[-1]["elapsed"] != "—"
    last = int(re.findall(r"^id: (\d+)$", body, re.M)[-1])
    resumed = browser.get(f"{job_url}/logs/stream", headers={"Last-Event-ID": str(last)}).text
    assert "event: log" not in resumed and "event: end" in resumed
    download = browser.get(f"{job_url}/logs.txt")
    assert download.status_code == 200 and "[haihe] done" in download.text
    assert "attachment" in download.headers["content-disposition"]
    # resubmit makes a new job; cancel it before it runs
    csrf = csrf_of(browser.get(job_url).text)
    r2 = browser.post(f"{job_url}/resubmit", data={"csrf_token": csrf}, follow_redirects=False)
    assert r2.status_code == 303 and job_id not in r2.headers["location"]
    new_url = r2.headers["location"].split("?")[0]
    r3 = browser.post(f"{new_url}/cancel", data={"csrf_token": csrf}, follow_redirects=False)
    assert r3.status_code == 303 and r3.headers["location"].endswith("done=cancelled")
    portal.reconcile()
    assert 'data-state="CANCELLED"' in browser.get(new_url).text


def test_other_orgs_job_and_dataset_urls_are_404(portal: Portal) -> None:
    org_a, project_a, user_a = _setup_org(portal)
    org_b, _project_b, user_b = _setup_org(portal)
    alice, bob = portal.browser(user_a), portal.browser(user_b)
    r = _submit(alice, f"{org_a}/{project_a}", name="secret-run")
    job_url = r.headers["location"].split("?")[0]  # type: ignore[attr-defined]
    assert alice.get(job_url).status_code == 200
    copy_url = f"/jobs/new?from={job_url.rsplit('/', 1)[1]}"
    for path in (job_url, f"{job_url}/logs.txt", f"{job_url}/logs/stream", copy_url):
        r = bob.get(path)
        assert r.status_code == 404, path
        assert "secret-run" not in r.text
    csrf = csrf_of(bob.get("/jobs").text)
    assert bob.post(f"{job_url}/cancel", data={"csrf_token": csrf}).status_code == 404
    # a dataset of org A
    csrf_a = csrf_of(alice.get("/datasets").text)
    made = alice.post("/datasets", data={"csrf_token": csrf_a, "org": org_a, "name": "private-set",
                                         "visibility": "private"}, follow_redirects=False)
    assert made.status_code == 303, made.text
    assert bob.get(f"/datasets/{org_a}/private-set").status_code == 404
    assert "private-set" not in bob.get("/datasets").text
    assert f"/jobs?org={org_a}" and bob.get(f"/jobs?org={org_a}").status_code == 404
    assert org_b in bob.get("/").text


def test_names_and_reasons_are_escaped(portal: Portal) -> None:
    org, project, user = _setup_org(portal)
    browser = portal.browser(user)
    r = _submit(browser, f"{org}/{project}")
    job_id = r.headers["location"].split("?")[0].rsplit("/", 1)[1]  # type: ignore[attr-defined]
    evil = "<script>alert('x')</script>"
    portal.scheduler.jobs[next(iter(portal.scheduler.jobs))].reason = evil
    portal.reconcile()
    with portal.ctx.db.session() as s:
        assert s.get(Job, job_id).reason == evil  # type: ignore[union-attr]
    for path in (f"/jobs/{job_id}", "/jobs", "/"):
        html = browser.get(path).text
        assert evil not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html, path
    # a name the spec refuses comes back escaped next to the field, never as markup
    bad = _submit(browser, f"{org}/{project}", name=evil)
    assert bad.status_code == 422 and evil not in bad.text  # type: ignore[attr-defined]
    assert "&lt;script&gt;" in bad.text  # type: ignore[attr-defined]


def test_form_errors_are_shown_next_to_their_field(portal: Portal) -> None:
    org, project, user = _setup_org(portal)
    browser = portal.browser(user)
    r = _submit(browser, f"{org}/{project}", name="Bad Name", nodes="two")
    assert r.status_code == 422  # type: ignore[attr-defined]
    html = r.text  # type: ignore[attr-defined]
    nodes_err = re.search(r'id="err-nodes"[^>]*>(.*?)</div>', html, re.S)
    assert nodes_err and "whole number" in nodes_err.group(1)
    r = _submit(browser, f"{org}/{project}", name="Bad Name")
    name_err = re.search(r'id="err-name"[^>]*>(.*?)</div>', r.text, re.S)  # type: ignore[attr-defined]
    assert name_err and "lower-case letters" in name_err.group(1) and 'aria-invalid="true"' in r.text  # type: ignore[attr-defined]
    # the partition's limits (from describe()) are checked at the field
    r = _submit(browser, f"{org}/{project}", nodes="3", time_limit="01:00:00")
    html = r.text  # type: ignore[attr-defined]
    assert "only 2 nodes" in re.search(r'id="err-nodes"[^>]*>(.*?)</div>', html, re.S).group(1)  # type: ignore[union-attr]
    assert "at most 30 minutes" in re.search(r'id="err-time_limit"[^>]*>(.*?)</div>', html, re.S).group(1)  # type: ignore[union-attr]
    with portal.ctx.db.session() as s:
        assert s.query(Job).count() == 0


def test_yaml_editor_uses_the_same_validation(portal: Portal) -> None:
    org, project, user = _setup_org(portal)
    browser = portal.browser(user)
    csrf = csrf_of(browser.get("/jobs/new?mode=yaml").text)
    spec = "name: yaml-run\nrecipe: digits-cnn\nresources: {nodes: 0, time_limit: '00:10:00'}\n"
    r = browser.post("/jobs/new", data={"csrf_token": csrf, "mode": "yaml", "target": f"{org}/{project}",
                                        "spec_yaml": spec})
    err = re.search(r'id="err-spec_yaml"[^>]*>(.*?)</div>', r.text, re.S)
    assert r.status_code == 422 and err and "resources.nodes" in err.group(1)
    r = browser.post("/jobs/new", data={"csrf_token": csrf, "mode": "yaml", "target": f"{org}/{project}",
                                        "spec_yaml": "name: [unclosed"})
    assert r.status_code == 422 and "Not valid YAML" in r.text
    good = spec.replace("nodes: 0", "nodes: 1")
    r = browser.post("/jobs/new", data={"csrf_token": csrf, "mode": "yaml", "target": f"{org}/{project}",
                                        "spec_yaml": good}, follow_redirects=False)
    assert r.status_code == 303


def test_admin_lowers_a_quota_and_the_next_submit_shows_it_at_the_field(portal: Portal) -> None:
    org, project, user = _setup_org(portal)
    admin, browser = portal.browser("root"), portal.browser(user)
    assert _submit(browser, f"{org}/{project}", gpus_per_node="1", partition="gpu").status_code == 303  # type: ignore[attr-defined]
    org_page = admin.get(f"/admin/orgs/{org}")
    assert org_page.status_code == 200 and project in org_page.text
    r = admin.post(f"/admin/orgs/{org}/quota", data={"csrf_token": csrf_of(org_page.text), "project": "",
                                                     "gpu_hours": "0.75", "cpu_hours": "", "storage_gb": "",
                                                     "requests_per_month": "", "max_jobs": "", "max_gpus": ""},
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("done=quota_saved")
    shown = admin.get(r.headers["location"])
    assert 'id="q__gpu_hours"' in shown.text and 'value="0.75"' in shown.text
    # the first job holds 0.5 GPU-hours; another 0.5 does not fit in what is left
    r = _submit(browser, f"{org}/{project}", gpus_per_node="1", partition="gpu")
    assert r.status_code == 402  # type: ignore[attr-defined]
    err = re.search(r'id="err-resources"[^>]*>(.*?)</div>', r.text, re.S)  # type: ignore[attr-defined]
    assert err and "gpu_hours" in err.group(1) and "0.25 of 0.75 left" in err.group(1)
    with portal.ctx.db.session() as s:
        assert s.query(Job).count() == 1  # the refused submit left no job behind
    # a bad value is refused at its field
    r = admin.post(f"/admin/orgs/{org}/quota", data={"csrf_token": csrf_of(org_page.text), "project": "",
                                                     "gpu_hours": "-3"})
    assert r.status_code == 422
    assert "negative" in re.search(r'id="err-q__gpu_hours"[^>]*>(.*?)</div>', r.text, re.S).group(1)  # type: ignore[union-attr]



def test_quota_form_refuses_numbers_that_are_no_limit_every_field_at_once(portal: Portal) -> None:
    """1e309 (inf) was a raw 500; nan was saved as "unlimited". Each is refused at its field, all at once, and
    nothing is saved."""
    org, _project, _user = _setup_org(portal)
    admin = portal.browser("root")
    org_page = admin.get(f"/admin/orgs/{org}")
    r = admin.post(f"/admin/orgs/{org}/quota", data={"csrf_token": csrf_of(org_page.text), "project": "",
                                                     "gpu_hours": "1e309", "cpu_hours": "nan",
                                                     "storage_gb": "9e15", "max_jobs": "-1"})
    assert r.status_code == 422, r.text[:500]

    def err(field: str) -> str:
        m = re.search(rf'id="err-q__{field}"[^>]*>(.*?)</div>', r.text, re.S)
        assert m, f"no error shown at {field}"
        return m.group(1)

    assert "finite" in err("gpu_hours") and "finite" in err("cpu_hours")
    assert "At most" in err("storage_gb") and "negative" in err("max_jobs")
    t = portal.tenancy
    shown = t.client.get(f"/api/v1/orgs/{org}/quota", headers=t.admin_headers).json()
    assert shown["quota"] is None or shown["quota"].get("gpu_hours") is None
    api = t.client.put(f"/api/v1/orgs/{org}/quota", content=b'{"gpu_hours": NaN}',
                       headers={**t.admin_headers, "content-type": "application/json"})
    assert api.status_code in (400, 422) and api.json()["error"]["field"]


def test_admin_pages_are_for_admins_and_reports_work(portal: Portal) -> None:
    org, _project, user = _setup_org(portal)
    browser, admin = portal.browser(user), portal.browser("root")
    for path in ("/admin", "/admin/usage", "/admin/audit", "/admin/cluster", f"/admin/orgs/{org}"):
        assert browser.get(path).status_code == 403, path
        assert admin.get(path).status_code == 200, path
    cluster = admin.get("/admin/cluster").text
    assert "gpu" in cluster and "gn1" in cluster and "1 of 4 GPUs free" in cluster
    csv = admin.get("/admin/usage.csv?month=2026-11")
    assert csv.status_code == 200 and csv.text.splitlines()[0].startswith("month,org,project")
    audit = admin.get("/admin/audit?action=org.create")
    assert org in audit.text and "project.create" not in audit.text


def test_sharing_with_a_mistyped_org_says_so_at_the_field_and_the_receiver_sees_it_shared(portal: Portal) -> None:
    """Issue 17: a mistyped org replaced the page with a 404; the receiving org saw "private"."""
    from haihe.datasets.memory import MemoryStore
    from haihe.platform.datasets import service as datasets_service

    portal.app.state.ctx.provide("datasets", datasets_service.DatasetStorage.for_store(MemoryStore()))
    org_a, _pa, _ua = _setup_org(portal)
    org_b, _pb, user_b = _setup_org(portal)
    t = portal.tenancy
    admin_a = t.user(org_a, role="org_admin")
    alice, bob = portal.browser(admin_a), portal.browser(user_b)
    made = alice.post("/datasets", data={"csrf_token": csrf_of(alice.get("/datasets").text), "org": org_a,
                                         "name": "cats_v1", "visibility": "private"}, follow_redirects=False)
    assert made.status_code == 303, made.text
    page = alice.get(f"/datasets/{org_a}/cats_v1")
    r = alice.post(f"/datasets/{org_a}/cats_v1/share", data={"csrf_token": csrf_of(page.text),
                                                              "target": org_b + "-typo"})
    assert r.status_code == 404 and f"{org_a}/cats_v1" in r.text  # the dataset's own page, not an error page
    err = re.search(r'id="err-target"[^>]*>(.*?)</div>', r.text, re.S)
    assert err and f"{org_b}-typo" in err.group(1), r.text[-2000:]
    assert f'value="{org_b}-typo"' in r.text  # what was typed stays in the field
    assert bob.get(f"/datasets/{org_a}/cats_v1").status_code == 404
    r = alice.post(f"/datasets/{org_a}/cats_v1/share", data={"csrf_token": csrf_of(page.text), "target": org_b},
                   follow_redirects=False)
    assert r.status_code == 303
    seen = bob.get(f"/datasets/{org_a}/cats_v1")
    assert seen.status_code == 200
    badge = re.search(r'id="ds-visibility">([^<]*)<', seen.text)
    assert badge and badge.group(1) == "shared with your organisation"
    own = re.search(r'id="ds-visibility">([^<]*)<', alice.get(f"/datasets/{org_a}/cats_v1").text)
    assert own and own.group(1) == "private"


def test_form_errors_all_at_once_in_the_readers_language(portal: Portal) -> None:
    """Issue 17: pydantic's wording (regexes) and one error at a time, in English on the Chinese portal."""
    org, project, user = _setup_org(portal)
    browser = portal.browser(user)
    r = _submit(browser, f"{org}/{project}", name="Bad_Name", register="a..b", dataset="x y")
    assert r.status_code == 422  # type: ignore[attr-defined]
    text = r.text  # type: ignore[attr-defined]

    def err(field: str) -> str:
        m = re.search(rf'id="err-{field}"[^>]*>(.*?)</div>', text, re.S)
        assert m, f"no error at {field}"
        return m.group(1)

    assert "lower-case letters, digits and &#39;-&#39;" in err("name") and "pattern" not in err("name")
    assert "&#39;.&#39;, &#39;_&#39;" in err("register") and "&#39;.&#39;, &#39;_&#39;" in err("dataset")
    browser.get("/lang/zh")
    r = _submit(browser, f"{org}/{project}", name="Bad_Name")
    zh = re.search(r'id="err-name"[^>]*>(.*?)</div>', r.text, re.S)  # type: ignore[attr-defined]
    assert zh and "小写字母" in zh.group(1), r.text[-1500:]  # type: ignore[attr-defined]


def test_the_cluster_page_is_for_every_user_with_their_own_waiting_jobs(portal: Portal) -> None:
    org, project, user = _setup_org(portal)
    browser = portal.browser(user)
    page = browser.get("/cluster")
    assert page.status_code == 200 and 'href="/cluster"' in page.text
    assert 'id="my-waiting-none"' in page.text and "Partitions" in page.text
    assert _submit(browser, f"{org}/{project}").status_code == 303  # type: ignore[attr-defined]
    page = browser.get("/cluster")
    assert 'id="my-waiting"' in page.text and "digits" in page.text
    other = portal.browser(_setup_org(portal)[2])
    assert "digits" not in other.get("/cluster").text.split('id="mine-h"')[1].split("</section>")[0]
    browser.get("/lang/zh")
    assert "我的作业为何在等待" in browser.get("/cluster").text


def test_a_service_outage_is_said_in_the_readers_language_with_its_own_words_as_detail(
        portal: Portal, monkeypatch: pytest.MonkeyPatch) -> None:
    from haihe.errors import StorageUnavailable
    from haihe.portal.routes import jobs as job_routes

    def down(*_a: object, **_k: object) -> None:
        raise StorageUnavailable("S3 endpoint http://s3.internal:9000 refused the connection", component="s3")

    _org, _project, user = _setup_org(portal)
    browser = portal.browser(user)
    monkeypatch.setattr(job_routes.jobs, "get_job", down)
    browser.get("/lang/zh")
    page = browser.get("/jobs/any")
    assert page.status_code == 503
    message = re.search(r'id="error-message">([^<]*)<', page.text)
    assert message and "数据集存储暂时没有响应" in message.group(1) and not re.search(r"[A-Za-z]", message.group(1))
    assert "refused the connection" in page.text.split('id="error-detail">')[1]
