"""Tenant isolation and roles through the API: other orgs' things do not exist for you."""

from __future__ import annotations

from tests.fixtures.platform import Tenancy, bearer


def test_org_admin_builds_their_org_and_cannot_touch_another(tenancy: Tenancy) -> None:
    c = tenancy.client
    org_a, org_b = tenancy.org(), tenancy.org()
    admin_a = tenancy.login(tenancy.user(org_a, "org_admin"))
    project = tenancy.project(org_a, headers=admin_a)
    researcher = tenancy.user(org_a, "researcher", headers=admin_a)
    assert c.get(f"/api/v1/orgs/{org_a}/projects/{project}", headers=tenancy.login(researcher)).status_code == 200
    # org B's things are invisible (404), not forbidden
    assert c.get(f"/api/v1/orgs/{org_b}", headers=admin_a).status_code == 404
    assert c.post(f"/api/v1/orgs/{org_b}/projects", json={"name": "x"}, headers=admin_a).status_code == 404
    assert c.post(f"/api/v1/orgs/{org_b}/users", json={"username": "zz", "role": "researcher",
                                                       "password": "0123456789ab"}, headers=admin_a).status_code == 404
    # a researcher cannot administer their own org: 403
    r = c.post(f"/api/v1/orgs/{org_a}/projects", json={"name": "nope"}, headers=tenancy.login(researcher))
    assert r.status_code == 403
    # only platform admins create orgs
    assert c.post("/api/v1/orgs", json={"name": "mine"}, headers=admin_a).status_code == 403
    assert [o["name"] for o in c.get("/api/v1/orgs", headers=admin_a).json()] == [org_a]


def test_key_of_org_a_gets_404_on_org_b_project(tenancy: Tenancy) -> None:
    c = tenancy.client
    org_a, org_b = tenancy.org(), tenancy.org()
    project_b = tenancy.project(org_b)
    admin_a = tenancy.login(tenancy.user(org_a, "org_admin"))
    sa = tenancy.user(org_a, "service_account", headers=admin_a)
    key = tenancy.key(org_a, admin_a, username=sa)
    assert key["key"].startswith("hhk_") and key["prefix"] in key["key"]
    assert c.get(f"/api/v1/orgs/{org_a}", headers=bearer(key)).status_code == 200
    r = c.get(f"/api/v1/orgs/{org_b}/projects/{project_b}", headers=bearer(key))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_key_bound_to_one_org_cannot_act_in_the_users_other_org(tenancy: Tenancy) -> None:
    c = tenancy.client
    org_a, org_b = tenancy.org(), tenancy.org()
    user = tenancy.user(org_a, "researcher")
    r = c.post(f"/api/v1/orgs/{org_b}/members", json={"username": user, "role": "researcher"},
               headers=tenancy.admin_headers)
    assert r.status_code == 201
    token = tenancy.login(user)
    assert c.get(f"/api/v1/orgs/{org_b}", headers=token).status_code == 200
    key = tenancy.key(org_a, token)
    assert c.get(f"/api/v1/orgs/{org_a}", headers=bearer(key)).status_code == 200
    assert c.get(f"/api/v1/orgs/{org_b}", headers=bearer(key)).status_code == 404


def test_disabled_org_is_read_only(tenancy: Tenancy) -> None:
    c = tenancy.client
    org = tenancy.org()
    admin = tenancy.login(tenancy.user(org, "org_admin"))
    assert c.put(f"/api/v1/orgs/{org}/status", json={"status": "disabled"},
                 headers=tenancy.admin_headers).status_code == 200
    assert c.get(f"/api/v1/orgs/{org}/projects", headers=admin).status_code == 200
    r = c.post(f"/api/v1/orgs/{org}/projects", json={"name": "late"}, headers=admin)
    assert r.status_code == 403 and "read-only" in r.json()["error"]["message"]


def test_duplicate_names_are_409(tenancy: Tenancy) -> None:
    org = tenancy.org()
    r = tenancy.client.post("/api/v1/orgs", json={"name": org}, headers=tenancy.admin_headers)
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"


def test_service_accounts_have_no_password(tenancy: Tenancy) -> None:
    org = tenancy.org()
    r = tenancy.client.post(f"/api/v1/orgs/{org}/users", json={
        "username": "bot-1", "role": "service_account", "password": "0123456789abc"}, headers=tenancy.admin_headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "password"
