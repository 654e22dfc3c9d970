"""The portal in Chromium against the real app under uvicorn: every test leaves screenshots in English and Chinese."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Server, shoot
from tests.fixtures.platform import PASSWORD

pytestmark = pytest.mark.browser

TIMEOUT_MS = 30_000


def sign_in(page: Any, server: Server, username: str, password: str = PASSWORD, then: str = "/") -> None:
    page.goto(f"{server.url}/login?next={then}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():
        page.locator("#sign-in").click()
    assert re.fullmatch(re.escape(server.url) + re.escape(then) + r"(\?.*)?", page.url), (
        page.url, page.locator("main").inner_text())


def both_languages(page: Any, name: str) -> None:
    """Screenshot the page in English, switch to Chinese through the header, screenshot, switch back."""
    page.locator('a[data-lang="en"]').click()
    page.wait_for_load_state()
    shoot(page, f"{name}-en")
    page.locator('a[data-lang="zh"]').click()
    page.wait_for_selector('html[lang="zh-CN"]')
    shoot(page, f"{name}-zh")
    page.locator('a[data-lang="en"]').click()
    page.wait_for_selector('html[lang="en"]')


def submit_form(page: Any, server: Server, name: str, partition: str = "debug", gpus: str = "0",
                walltime: str = "00:10:00") -> None:
    page.goto(f"{server.url}/jobs/new")
    page.locator("#f-name").fill(name)
    page.locator("#f-partition").select_option(partition)
    page.locator("#f-gpus_per_node").fill(gpus)
    page.locator("#f-time_limit").fill(walltime)
    # wait for the redirect to the job's page: a later step that clears cookies or navigates must not race the
    # post (a navigation still in flight lands on /login and replaces the sign-in form's token cookie)
    with page.expect_navigation():
        page.locator("#submit-job").click()
    page.wait_for_url(re.compile(re.escape(server.url) + r"/jobs/(?!new)[^/?]+(\?.*)?$"))


def test_sign_in_language_switch_and_dashboard(server: Server, browser_context: Any) -> None:
    org, _project, user = server.tenant()
    page = browser_context.new_page()
    page.goto(server.url + "/jobs")
    page.wait_for_url(re.compile(r"/login\?next="))
    both_languages(page, "01-sign-in")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill("wrong password!")
    page.locator("#sign-in").click()
    assert "Wrong username or password" in page.locator("#login-error").inner_text()
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.locator("#sign-in").click()
    page.wait_for_url(server.url + "/jobs")
    page.goto(server.url + "/")
    assert page.locator("h1").inner_text() == f"Welcome, {user}"
    assert page.locator(f'.quota-card[data-org="{org}"]').count() == 1
    # the session cookie is HttpOnly: page scripts cannot read it, only the CSRF token
    cookies = page.evaluate("document.cookie")
    assert "haihe_session" not in cookies and "haihe_csrf" in cookies
    both_languages(page, "02-dashboard")
    page.locator('a[data-lang="zh"]').click()
    page.wait_for_selector('html[lang="zh-CN"]')
    assert page.locator(".mainnav").inner_text().split() == ["概览", "作业", "提交作业", "数据集", *(
        page.locator(".mainnav").inner_text().split()[4:])]
    page.reload()
    assert page.locator("#active-h").inner_text() == "运行与排队中的作业"  # remembered in a cookie
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "02-dashboard-phone-zh")
    page.locator('a[data-lang="en"]').click()
    page.wait_for_selector('html[lang="en"]')
    shoot(page, "02-dashboard-phone-en")
    page.locator("#sign-out").click()
    page.wait_for_url(re.compile(r"/login$"))
    page.goto(server.url + "/")
    page.wait_for_url(re.compile(r"/login\?next="))


def test_submit_and_watch_the_live_log_stream(server: Server, browser_context: Any) -> None:
    _org, _project, user = server.tenant()
    page = browser_context.new_page()
    sign_in(page, server, user)
    page.goto(server.url + "/jobs/new")
    both_languages(page, "03-new-job")
    page.locator("#f-partition").select_option("gpu")
    page.locator("#f-nodes").fill("2")
    page.locator("#f-gpus_per_node").fill("4")
    page.locator("#f-time_limit").fill("01:30:00")
    assert page.locator("#est-gpu").inner_text() == "12.00"  # 2 nodes × 4 GPUs × 1.5 h, computed as you type
    assert page.locator('#partition-info [data-k="gpus"]').inner_text() == "5 / 8"
    page.locator("#f-nodes").fill("1")
    page.locator("#f-gpus_per_node").fill("0")
    page.locator("#f-partition").select_option("debug")
    page.locator("#f-time_limit").fill("00:10:00")
    page.locator("#f-name").fill("digits-live")
    shoot(page, "03-new-job-filled-en")
    page.locator("#submit-job").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}\?done=submitted"))
    job_url = page.url.split("?")[0]
    # logs arrive over server-sent events while the page stays open
    logs = page.locator("#logs")
    expect(logs).to_contain_text("epoch   2", timeout=TIMEOUT_MS)
    first = page.locator("#logs").inner_text()
    expect(logs).to_contain_text("epoch   5", timeout=TIMEOUT_MS)
    assert len(page.locator("#logs").inner_text()) > len(first)
    assert page.locator("#log-status").get_attribute("data-state") == "live"
    page.locator("#log-toggle").click()  # pause: lines are held back
    assert page.locator("#log-status").inner_text() == "paused"
    held = page.locator("#logs").inner_text()
    page.wait_for_timeout(1500)
    assert page.locator("#logs").inner_text() == held
    page.locator("#log-toggle").click()  # follow again: the held lines appear
    expect(logs).to_contain_text("[haihe] done", timeout=TIMEOUT_MS)
    page.wait_for_selector('#job-state .badge[data-state="SUCCEEDED"]', timeout=TIMEOUT_MS)
    # the stream's end event may land a moment after the state badge: wait for it with the test's deadline
    expect(page.locator("#log-status")).to_have_attribute("data-state", "ended", timeout=TIMEOUT_MS)
    with page.expect_download() as dl:
        page.locator("#log-download").click()
    assert "[haihe] done" in Path(dl.value.path()).read_text()
    page.reload()
    assert page.locator("#timeline li").count() >= 4  # created, submitted, queued/started, finished
    both_languages(page, "04-job")
    page.goto(server.url + "/jobs")
    assert page.locator("#jobs-table").get_by_text("digits-live").count() == 1
    both_languages(page, "05-jobs-list")
    assert job_url.startswith(server.url)


def test_field_errors_and_a_lowered_quota_shown_at_the_field(server: Server, browser_context: Any) -> None:
    org, _project, user = server.tenant()
    admin = browser_context.new_page()
    sign_in(admin, server, "root")
    admin.goto(f"{server.url}/admin/orgs/{org}")
    admin.locator("#q__gpu_hours").fill("1")
    admin.locator("#quota-form-org button[type=submit]").click()
    admin.wait_for_url(re.compile(r"done=quota_saved"))
    assert admin.locator("#q__gpu_hours").input_value() == "1"
    both_languages(admin, "06-admin-org-quota")
    # the researcher: a bad node count first, then a job bigger than the quota
    browser_context.clear_cookies()
    page = browser_context.new_page()
    sign_in(page, server, user)
    page.goto(server.url + "/jobs/new")
    page.locator("#f-name").fill("too-big")
    page.locator("#f-nodes").fill("0")
    page.locator("#submit-job").click()
    assert "at least 1" in page.locator("#err-nodes").inner_text()  # in words, not a spec path or a regex
    assert page.locator("#f-nodes").get_attribute("aria-invalid") == "true"
    page.locator("#f-nodes").fill("1")
    page.locator("#f-partition").select_option("gpu")
    page.locator("#f-gpus_per_node").fill("2")
    page.locator("#f-time_limit").fill("01:00:00")
    assert page.locator("#est-over").is_visible()  # the estimate already warns before the submit
    page.locator("#submit-job").click()
    err = page.locator("#err-resources")
    assert err.is_visible() and "gpu_hours" in err.inner_text() and "2.00 GPU-hours" in err.inner_text()
    shoot(page, "07-quota-error-at-field-en")
    page.goto(server.url + "/lang/zh?next=/jobs/new")  # the same refusal, in Chinese
    page.locator("#f-name").fill("too-big")
    page.locator("#f-partition").select_option("gpu")
    page.locator("#f-gpus_per_node").fill("2")
    page.locator("#f-time_limit").fill("01:00:00")
    page.locator("#submit-job").click()
    assert "超出配额" in page.locator("#err-_quota").inner_text()
    shoot(page, "07-quota-error-at-field-zh")
    page.goto(server.url + "/lang/en?next=/")


def test_other_orgs_urls_are_404_and_posts_without_the_token_are_refused(server: Server,
                                                                         browser_context: Any) -> None:
    _org_a, _project_a, alice = server.tenant()
    _org_b, _project_b, bob = server.tenant()
    page = browser_context.new_page()
    sign_in(page, server, alice)
    submit_form(page, server, "alice-private")
    job_url = page.url.split("?")[0]
    browser_context.clear_cookies()
    sign_in(page, server, bob)
    response = page.goto(job_url)
    assert response is not None and response.status == 404
    assert "alice-private" not in page.content()
    both_languages(page, "08-not-found")
    # a form post without the CSRF token (what another site's form would send) is refused
    status = page.evaluate("""async () => {
        const body = new URLSearchParams({name: 'forged', target: 'x/y'});
        const r = await fetch('/jobs/new', {method: 'POST', body});
        return r.status; }""")
    assert status == 403
    # a real form on another site (localhost is another site than 127.0.0.1) posting here: the browser does not
    # send the SameSite session cookie, so the post is not signed in and changes nothing
    attacker = server.url.replace("127.0.0.1", "localhost") + "/evil"
    page.route(attacker, lambda route: route.fulfill(
        content_type="text/html", body=f'<form id="f" method="post" action="{server.url}/logout"></form>'))
    page.goto(attacker)
    with page.expect_navigation():
        page.locator("#f").evaluate("f => f.submit()")
    assert "/login" in page.url
    page.goto(server.url + "/")
    assert page.locator("h1").inner_text() == f"Welcome, {bob}"  # still signed in: the forged sign-out failed


def test_admin_pages(server: Server, browser_context: Any) -> None:
    org, _project, user = server.tenant()
    page = browser_context.new_page()
    sign_in(page, server, user)
    submit_form(page, server, "for-the-queue", partition="gpu", gpus="1")
    browser_context.clear_cookies()
    sign_in(page, server, "root")
    page.goto(server.url + "/admin")
    assert page.locator("#orgs-table").get_by_role("link", name=org).count() == 1
    both_languages(page, "09-admin-orgs")
    page.goto(server.url + "/admin/cluster")
    assert page.locator(".partitions").first.get_by_text("gpu").count() >= 1
    both_languages(page, "10-admin-cluster")
    page.goto(server.url + "/admin/usage")
    with page.expect_download() as dl:
        page.locator("#csv-download").click()
    assert Path(dl.value.path()).read_text().startswith("month,org,project")
    both_languages(page, "11-admin-usage")
    page.goto(server.url + "/admin/audit?action=quota.set")
    both_languages(page, "12-admin-audit")
    page.goto(server.url + "/admin/audit")
    assert page.locator("#audit-table").get_by_text("job.submit").count() >= 1
