"""Hostile input against every operation of the OpenAPI, as a researcher and as an SME's API key: zero 5xx.

schemathesis generates bodies, paths and query strings from the schema (and breaks them); the platform must answer
every one of them with a 2xx/4xx JSON body, never a 500.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from haihe.platform.context import PlatformContext
from haihe.platform.settings import Settings
from tests.fixtures.fake_scheduler import FakeFactory
from tests.fixtures.figures import Figures
from tests.fixtures.platform import Tenancy

EXAMPLES = int(os.environ.get("HAIHE_FUZZ_EXAMPLES", "10"))
_AUTH: dict[str, dict[str, str]] = {}


pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Iterator[FastAPI]:
    from haihe.server import create_app

    db = tmp_path_factory.mktemp("fuzz") / "db.sqlite"
    settings_ = Settings(database_url=f"sqlite:///{db}", schedulers={"fake": "fake://"}, default_scheduler="fake",
                         reconcile_interval_s=0, login_max_failures=1000, s3_endpoint=s3_server.endpoint,
                         s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key)
    ctx = PlatformContext.from_settings(settings_)
    ctx.registry.register("fake", FakeFactory())
    app = create_app(settings_, ctx=ctx)
    with TestClient(app) as client:
        t = Tenancy(client).bootstrap()
        org = t.org("fuzz-org")
        t.project(org)
        researcher = t.login(t.user(org, "researcher"))
        sa = t.user(org, "service_account")
        sme_key = t.key(org, t.admin_headers, username=sa, scopes=["api", "inference"])
        _AUTH["researcher"] = researcher
        _AUTH["sme"] = {"Authorization": f"Bearer {sme_key['key']}"}
        yield app


def _fuzz(app: FastAPI, who: str) -> list[str]:
    """Every operation, EXAMPLES generated cases each; returns the failures (operation: reason)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if operation.path == "/api/v1/auth/logout":
            continue  # it would revoke the very credential the fuzzing uses; logout has its own tests

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            response = case.call(headers=_AUTH[who])
            case.validate_response(response, checks=[not_a_server_error])
            ctype = ",".join(response.headers.get("content-type") or [])
            json_or_text = ctype.startswith(("application/json", "text/plain"))
            assert response.status_code == 204 or json_or_text, f"{response.status_code} {ctype}"

        try:
            run()
        except Exception as exc:  # hypothesis re-raises the first failing example
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:500]}")
    assert operations >= 20, f"only {operations} operations in the schema"
    _COUNTS[who] = operations
    return failures


_COUNTS: dict[str, int] = {}


def test_no_operation_answers_5xx_as_researcher(hostile_app: FastAPI, figures: Figures) -> None:
    failures = _fuzz(hostile_app, "researcher")
    figures.record("test_no_operation_answers_5xx_as_researcher", "schemathesis cases on every operation",
                   {"operations": _COUNTS["researcher"], "examples_each": EXAMPLES, "failures": len(failures)},
                   "passed" if not failures else "failed")
    assert failures == []


def test_no_operation_answers_5xx_as_sme_key(hostile_app: FastAPI, figures: Figures) -> None:
    failures = _fuzz(hostile_app, "sme")
    figures.record("test_no_operation_answers_5xx_as_sme_key", "schemathesis cases on every operation, SME key",
                   {"operations": _COUNTS["sme"], "examples_each": EXAMPLES, "failures": len(failures)},
                   "passed" if not failures else "failed")
    assert failures == []


def test_every_error_is_json_with_a_code(hostile_app: FastAPI, tmp_path: Path) -> None:
    with TestClient(hostile_app) as client:
        for method, path in [("GET", "/api/v1/orgs/%2e%2e"), ("POST", "/api/v1/keys"), ("GET", "/api/v1/jobs/x"),
                             ("PUT", "/api/v1/users/root/status")]:
            r = client.request(method, path, headers=_AUTH["researcher"], json={"bogus": True})
            assert 400 <= r.status_code < 500, (method, path, r.status_code)
            assert r.json()["error"]["code"]
