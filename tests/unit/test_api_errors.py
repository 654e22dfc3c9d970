"""Bad input gets a 4xx with a message naming the field — never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.platform import Tenancy


def test_malformed_json_is_400_naming_the_body(tenancy: Tenancy) -> None:
    r = tenancy.client.post("/api/v1/orgs", content=b'{"name": ', headers={
        **tenancy.admin_headers, "content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "malformed_json"
    assert r.json()["error"]["field"] == "body"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": 12}, "name", "string"),
        ({"name": "ok", "colour": "red"}, "colour", "unknown field"),
        ({}, "name", "required"),
        ({"name": "x" * 64}, "name", "at most 63"),
        ({"name": "Bad Name!"}, "name", "not a valid name"),
    ],
)
def test_invalid_org_bodies_name_the_field(tenancy: Tenancy, body: dict[str, object], field: str, words: str) -> None:
    r = tenancy.client.post("/api/v1/orgs", json=body, headers=tenancy.admin_headers)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field
    assert words in err["message"]


def test_oversized_body_is_413(tenancy: Tenancy) -> None:
    big = b'{"name": "' + b"a" * 2_000_000 + b'"}'
    r = tenancy.client.post("/api/v1/orgs", content=big, headers={
        **tenancy.admin_headers, "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_oversized_streamed_body_without_length_is_413(tenancy: Tenancy) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"name": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = tenancy.client.post("/api/v1/orgs", content=chunks(), headers={
        **tenancy.admin_headers, "content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_method_are_json_4xx(app_client: TestClient) -> None:
    r = app_client.get("/api/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = app_client.delete("/healthz")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_wrong_query_type_is_422(tenancy: Tenancy) -> None:
    r = tenancy.client.get("/api/v1/audit?limit=many", headers=tenancy.admin_headers)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "limit"


def test_openapi_has_stable_operation_ids(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    for expected in ("orgs_create", "projects_create", "org_users_create", "keys_create", "keys_revoke",
                     "audit_search", "whoami", "auth_token", "readyz", "healthz"):
        assert expected in ids


@pytest.mark.parametrize("path", ["/api/v1/datasets?cursor=9223372036854775808",
                                  "/api/v1/audit?before=99999999999999999999999"])
def test_a_row_id_past_the_database_integer_is_422_not_500(tenancy: Tenancy, path: str) -> None:
    """Found by schemathesis in CI: a cursor past 2**63-1 reached SQLite ("Python int too large") as a 500."""
    r = tenancy.client.get(path, headers=tenancy.admin_headers)
    assert r.status_code == 422, r.text
    assert path.split("?")[1].split("=")[0] in r.text
