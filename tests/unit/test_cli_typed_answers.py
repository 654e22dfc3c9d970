"""The CLI prints the SDK's typed answers as before: tables in words, and ``--json`` exactly as the API wrote it
(ISO timestamps, nested objects), against the real app in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import haihe.client
from haihe.cli import app
from tests.unit.test_sdk_models import SPEC, ThroughTestClient, app_with_a_member


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[CliRunner, TestClient, dict[str, str],
                                                                            str, str]]:
    with app_with_a_member(tmp_path) as (client, _t, org, project, user):
        token = user["Authorization"].removeprefix("Bearer ")

        class InProcess(haihe.client.HaiheClient):
            def __init__(self, url: str | None = None, token_: str | None = None, **kw: object) -> None:
                super().__init__("http://testserver", token=token_ or token, transport=ThroughTestClient(client))

        monkeypatch.setattr(haihe.client, "HaiheClient", InProcess)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        yield CliRunner(), client, user, org, project


def test_jobs_ls_show_and_whoami_print_typed_answers(cli: tuple[CliRunner, TestClient, dict[str, str], str,
                                                                 str]) -> None:
    runner, client, user, org, project = cli
    r = client.post(f"/api/v1/orgs/{org}/projects/{project}/jobs", json={"spec": SPEC}, headers=user)
    assert r.status_code == 201, r.text
    job = r.json()
    out = runner.invoke(app, ["jobs", "ls", "--json"])
    assert out.exit_code == 0, out.output
    page = json.loads(out.output)
    assert [j["id"] for j in page["items"]] == [job["id"]] and page["items"][0]["created_at"] == job["created_at"]
    shown = runner.invoke(app, ["jobs", "show", job["id"], "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["id"] == job["id"] and data["spec"] == job["spec"] and data["events"][0]["kind"] == "created"
    table = runner.invoke(app, ["jobs", "show", job["id"]])
    assert table.exit_code == 0 and "digits" in table.output and "timeline" in table.output
    me = runner.invoke(app, ["whoami", "--json"])
    assert me.exit_code == 0, me.output
    assert json.loads(me.output)["orgs"] == [f"{org}:researcher"]
    datasets = runner.invoke(app, ["datasets", "ls", "--json"])
    assert datasets.exit_code == 0 and json.loads(datasets.output) == []
