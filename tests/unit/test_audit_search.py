"""The audit log without ?org=: a platform admin sees every org, an org admin the orgs they administer, and a
member who administers nothing gets a 403 that says why (the README's `haihe admin audit` as an org admin)."""

from __future__ import annotations

from tests.fixtures.platform import Tenancy


def test_org_admin_sees_own_orgs_events_without_naming_one(tenancy: Tenancy) -> None:
    t = tenancy
    mine, other = t.org(), t.org()
    alice = t.user(mine, role="org_admin")
    t.project(mine)
    t.project(other)  # an event of another org
    events = t.client.get("/api/v1/audit?limit=500", headers=t.login(alice))
    assert events.status_code == 200, events.text
    texts = [str(e) for e in events.json()]
    assert any(mine in s for s in texts), texts  # the org's own events are listed
    assert not any(other in s for s in texts), texts
    everything = [str(e) for e in t.client.get("/api/v1/audit?limit=500", headers=t.admin_headers).json()]
    assert any(other in s for s in everything)


def test_member_who_administers_nothing_is_told_why(tenancy: Tenancy) -> None:
    t = tenancy
    org = t.org()
    bob = t.user(org, role="researcher")
    r = t.client.get("/api/v1/audit", headers=t.login(bob))
    assert r.status_code == 403
    assert "org admins" in r.json()["error"]["message"]


def test_search_matches_what_people_type_and_quota_changes_show_old_and_new(tenancy: Tenancy) -> None:
    t = tenancy
    org = t.org()
    assert t.client.put(f"/api/v1/orgs/{org}/quota", json={"gpu_hours": 10}, headers=t.admin_headers).status_code \
        == 200
    assert t.client.put(f"/api/v1/orgs/{org}/quota", json={"gpu_hours": 25, "max_jobs": None},
                        headers=t.admin_headers).status_code == 200
    found = t.client.get("/api/v1/audit", params={"org": org, "action": "quota"}, headers=t.admin_headers).json()
    assert [e["action"] for e in found] == ["quota.set", "quota.set"]
    latest = found[0]["details"]
    assert latest == {"gpu_hours": {"old": 10.0, "new": 25.0}}  # max_jobs was unlimited and stays so: no change
    none = t.client.get("/api/v1/audit", params={"org": org, "action": "%"}, headers=t.admin_headers).json()
    assert none == []  # a LIKE wildcard is a literal character here
