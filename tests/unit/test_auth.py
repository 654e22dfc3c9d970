"""Credentials: shown once, stored hashed, revocable, expiring, throttled; portal sessions need CSRF."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from haihe.platform.identity import security
from haihe.platform.models import AuditEvent, Credential
from haihe.platform.settings import Settings
from tests.fixtures.platform import PASSWORD, Tenancy, bearer


def _db(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.ctx.db  # type: ignore[attr-defined]


def test_revoked_and_expired_keys_get_401_and_are_audited(tenancy: Tenancy) -> None:
    c = tenancy.client
    org = tenancy.org()
    researcher = tenancy.login(tenancy.user(org))
    revoked, expiring = tenancy.key(org, researcher), tenancy.key(org, researcher, expires_in_days=1)
    assert c.get("/api/v1/me", headers=bearer(revoked)).status_code == 200
    assert c.delete(f"/api/v1/keys/{revoked['prefix']}", headers=researcher).status_code == 200
    r = c.get("/api/v1/me", headers=bearer(revoked))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    with _db(c).session() as s:  # move the clock: expire the key
        s.execute(update(Credential).where(Credential.prefix == expiring["prefix"])
                  .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    r = c.get("/api/v1/me", headers=bearer(expiring))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    with _db(c).session() as s:
        denied = s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.credential")).all()
        reasons = {(e.target, e.details["reason"]) for e in denied}
    assert (revoked["prefix"], "credential revoked") in reasons
    assert (expiring["prefix"], "credential expired") in reasons


def test_keys_are_stored_hashed_and_listed_without_secret(tenancy: Tenancy) -> None:
    c = tenancy.client
    org = tenancy.org()
    key = tenancy.key(org, tenancy.admin_headers)
    secret = key["key"].split("_", 2)[2]
    with _db(c).session() as s:
        row = s.scalar(select(Credential).where(Credential.prefix == key["prefix"]))
        assert row is not None
        assert secret not in row.secret_hash and row.secret_hash == security.digest(secret)
        audit_text = " ".join(str(e.details) + e.target for e in s.scalars(select(AuditEvent)))
    assert secret not in audit_text
    listed = c.get("/api/v1/keys", headers=tenancy.admin_headers).json()
    assert key["prefix"] in {k["prefix"] for k in listed}
    assert all("key" not in k for k in listed)


def test_wrong_or_malformed_credentials_are_401(app_client: TestClient) -> None:
    for header in ("Bearer nope", "Bearer hhk_000000000000_zzz", "Basic abc", "Bearer "):
        r = app_client.get("/api/v1/me", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.headers["www-authenticate"] == "Bearer"
    assert app_client.get("/api/v1/me").status_code == 401


def test_login_is_throttled_after_repeated_failures(tenancy: Tenancy) -> None:
    c = tenancy.client
    org = tenancy.org()
    user = tenancy.user(org)
    for _ in range(5):
        assert c.post("/api/v1/auth/token", json={"username": user, "password": "wrong-password"}).status_code == 401
    r = c.post("/api/v1/auth/token", json={"username": user, "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_disabling_a_user_kills_their_credentials(tenancy: Tenancy) -> None:
    c = tenancy.client
    org = tenancy.org()
    user = tenancy.user(org)
    token = tenancy.login(user)
    assert c.put(f"/api/v1/users/{user}/status", json={"status": "disabled"},
                 headers=tenancy.admin_headers).status_code == 200
    assert c.get("/api/v1/me", headers=token).status_code == 401
    r = c.post("/api/v1/auth/token", json={"username": user, "password": PASSWORD})
    assert r.status_code == 401


def test_portal_session_cookie_flags_and_csrf(tenancy: Tenancy) -> None:
    c = tenancy.client
    r = c.post("/api/v1/auth/session", json={"username": "root", "password": PASSWORD})
    assert r.status_code == 204
    cookies = r.headers.get_list("set-cookie")
    session_cookie = next(h for h in cookies if h.startswith("haihe_session="))
    assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie
    assert "Secure" not in session_cookie  # development mode on plain http
    # cookie-authenticated reads work; writes need the CSRF header
    assert c.get("/api/v1/me").status_code == 200
    r = c.post("/api/v1/orgs", json={"name": "csrf-test"})
    assert r.status_code == 403 and "CSRF" in r.json()["error"]["message"]
    r = c.post("/api/v1/orgs", json={"name": "csrf-test"}, headers={"X-CSRF-Token": "0" * 64})
    assert r.status_code == 403
    csrf = c.cookies.get("haihe_csrf")
    assert csrf
    r = c.post("/api/v1/orgs", json={"name": "csrf-test"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    assert c.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    c.cookies.clear()


def test_session_cookies_are_secure_outside_development(sqlite_url: str) -> None:
    from haihe.server import create_app

    settings = Settings(database_url=sqlite_url, mode="production", secret_key="s" * 40)
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        Tenancy(c).bootstrap()
        r = c.post("/api/v1/auth/session", json={"username": "root", "password": PASSWORD})
        assert all("Secure" in h for h in r.headers.get_list("set-cookie"))


def test_setup_is_refused_once_an_admin_exists(tenancy: Tenancy) -> None:
    r = tenancy.client.post("/api/v1/setup", json={"username": "other", "password": PASSWORD})
    assert r.status_code == 409


def test_password_hash_parameters() -> None:
    h = security.hash_password("a long enough password")
    assert h.startswith("$argon2id$")
    params = dict(p.split("=") for p in h.split("$")[3].split(","))
    assert int(params["m"]) >= 19 * 1024 and int(params["t"]) >= 2 and int(params["p"]) >= 1
    assert security.verify_password(h, "a long enough password")
    assert not security.verify_password(h, "a long enough passworD")


@pytest.mark.parametrize("short", ["", "short", "123456789"])
def test_short_passwords_refused(tenancy: Tenancy, short: str) -> None:
    org = tenancy.org()
    r = tenancy.client.post(f"/api/v1/orgs/{org}/users", json={"username": "someone", "password": short},
                            headers=tenancy.admin_headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "password"
