"""MLflow for people (issue 17): the stock MLflow client with a person's own token or API key, through the
platform's proxy against the real MLflow server. alice (acme) logs a run and finds acme's experiments and runs
only; bob (beta) finds none of them and cannot open alice's run; a viewer reads but cannot write.

Each client runs in its own process (MLflow's client keeps global state), exactly as a researcher runs it:
``MLFLOW_TRACKING_URI=<platform>/mlflow MLFLOW_TRACKING_TOKEN=<key> python …``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.live_platform import LivePlatform, start_live_platform
from tests.fixtures.platform import PASSWORD

pytestmark = [pytest.mark.mlflow, pytest.mark.s3]

CLIENT = r"""
import json, os, sys
import mlflow
from mlflow.exceptions import MlflowException

out = {}
action, experiment = sys.argv[1], sys.argv[2]
if action == "log":
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="alice-run") as run:
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_param("lr", "0.01")
    out["run_id"] = run.info.run_id
    out["exp_id"] = run.info.experiment_id
out["experiments"] = sorted(e.name for e in mlflow.search_experiments())
try:
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    out["runs"] = sorted(r.info.run_id for r in runs)
except MlflowException as exc:
    out["runs_error"] = exc.error_code
if len(sys.argv) > 3:
    try:
        out["got"] = mlflow.get_run(sys.argv[3]).info.run_name
    except MlflowException as exc:
        out["get_error"] = exc.error_code
    try:
        mlflow.set_experiment(experiment)
        with mlflow.start_run():
            mlflow.log_metric("x", 1.0)
        out["wrote"] = True
    except MlflowException as exc:
        out["write_error"] = exc.error_code
print("RESULT " + json.dumps(out))
"""


@pytest.fixture
def live(tmp_path: Path, s3_server: Any, mlflow_server: Any) -> Iterator[LivePlatform]:
    yield from start_live_platform(tmp_path, schedulers={"ray": "ray://127.0.0.1:9"}, default="ray", s3=s3_server,
                                   mlflow=mlflow_server)


def _client(live: LivePlatform, token: str, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "HAIHE_"))}
    env.update(MLFLOW_TRACKING_URI=f"{live.url}/mlflow", MLFLOW_TRACKING_TOKEN=token,
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    p = subprocess.run([sys.executable, "-c", CLIENT, *args], capture_output=True, text=True, env=env, timeout=180)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return dict(json.loads(line[len("RESULT "):]))


def _orgs() -> tuple[str, str]:
    """Org names of this test only: the session's MLflow server is shared with other tests, which may have made
    an experiment "acme/vision" there already."""
    tag = uuid.uuid4().hex[:6]
    return f"acme{tag}", f"beta{tag}"


def _key(live: LivePlatform, user: str, org: str) -> str:
    r = httpx.post(f"{live.url}/api/v1/keys", json={"org": org, "name": f"{user}-mlflow"}, headers=live.token(user))
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def test_the_stock_mlflow_client_with_a_persons_key_sees_their_orgs_only(live: LivePlatform) -> None:
    acme, beta = _orgs()
    experiment = f"{acme}/vision"
    cli = live.cli()
    cli.bootstrap(acme, "vision", "alice")
    cli.run("admin", "orgs", "create", beta)
    cli.run("admin", "users", "create", beta, "bob", "--password-stdin", stdin=PASSWORD + "\n")
    cli.run("admin", "users", "create", acme, "carol", "--password-stdin", stdin=PASSWORD + "\n")

    alice = _client(live, _key(live, "alice", acme), "log", experiment)
    run_id = alice["run_id"]
    assert alice["experiments"] == [experiment] and alice["runs"] == [run_id]

    bob = _client(live, _key(live, "bob", beta), "search", experiment, run_id)
    assert bob["experiments"] == [] and bob.get("runs", []) == []
    assert bob["get_error"] == "RESOURCE_DOES_NOT_EXIST" and "got" not in bob
    assert bob["write_error"] in ("PERMISSION_DENIED", "RESOURCE_DOES_NOT_EXIST") and "wrote" not in bob

    token = live.token("carol")["Authorization"].split(" ", 1)[1]  # a session token works as a key does
    carol = _client(live, token, "search", experiment, run_id)
    assert carol["experiments"] == [experiment] and carol["got"] == "alice-run" and carol["wrote"] is True

    # a browser session (MLflow's UI) reads its orgs' runs but writes nothing: the UI sends no CSRF token
    browser = httpx.Client(base_url=live.url)
    assert browser.post("/api/v1/auth/session", json={"username": "alice", "password": PASSWORD}).status_code == 204
    found = browser.post("/mlflow/ajax-api/2.0/mlflow/runs/search", json={"experiment_ids": [alice["exp_id"]]})
    assert found.status_code == 200 and [r["info"]["run_id"] for r in found.json()["runs"]][-1] == run_id
    refused = browser.post("/mlflow/ajax-api/2.0/mlflow/runs/create", json={"experiment_id": alice["exp_id"]})
    assert refused.status_code == 403 and refused.json()["error_code"] == "PERMISSION_DENIED"
    page = browser.get("/mlflow/")
    assert page.status_code == 200 and "<html" in page.text.lower()  # MLflow's own UI, through the platform
    # an inference-only key is no MLflow credential
    r = httpx.post(f"{live.url}/api/v1/keys", json={"org": acme, "name": "infer", "scopes": ["inference"]},
                   headers=live.token("alice"))
    assert r.status_code == 201, r.text
    denied = httpx.get(f"{live.url}/mlflow/api/2.0/mlflow/experiments/search", params={"max_results": 10},
                       headers={"Authorization": f"Bearer {r.json()['key']}"})
    assert denied.status_code == 401

    r = httpx.get(f"{live.url}/mlflow/api/2.0/mlflow/experiments/search", params={"max_results": 10})
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"


@pytest.mark.browser
def test_mlflow_ui_through_the_platform_in_chromium(live: LivePlatform, tmp_path: Path) -> None:
    """alice opens the "View run" link MLflow prints in her job's log and sees her run in MLflow's own UI; bob,
    signed in too, sees no such run; nobody signed in gets no MLflow at all."""
    from playwright.sync_api import expect, sync_playwright

    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, shoot

    acme, beta = _orgs()
    cli = live.cli()
    cli.bootstrap(acme, "vision", "alice")
    cli.run("admin", "orgs", "create", beta)
    cli.run("admin", "users", "create", beta, "bob", "--password-stdin", stdin=PASSWORD + "\n")
    alice = _client(live, _key(live, "alice", acme), "log", f"{acme}/vision")
    link = f"{live.url}/mlflow/#/experiments/{alice['exp_id']}/runs/{alice['run_id']}"  # as MLflow prints it
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for user, sees in (("alice", True), ("bob", False)):
                page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
                page.goto(f"{live.url}/login?next=/")
                page.get_by_label("Username").fill(user)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{live.url}/")
                page.goto(link)
                if sees:
                    expect(page.get_by_text("alice-run").first).to_be_visible(timeout=60_000)
                    expect(page.get_by_text("loss").first).to_be_visible(timeout=30_000)
                else:
                    page.wait_for_timeout(8000)  # let the UI ask for the run and get its refusal
                    assert page.get_by_text("alice-run").count() == 0
                shoot(page, f"mlflow-ui-{user}")
                page.context.close()
        finally:
            browser.close()
    anonymous = httpx.get(f"{live.url}/mlflow/")
    assert anonymous.status_code == 401
