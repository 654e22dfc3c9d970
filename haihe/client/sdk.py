"""Typed client of Haihe's REST API: used by the CLI, and the Python SDK.

    from haihe.client import HaiheClient
    hh = HaiheClient("http://127.0.0.1:8000", token="hhk_…")
    hh.create_project("acme", "vision")

Errors come back as the same :mod:`haihe.errors` classes the server raised (by their ``code``), carrying the
server's message and the field it names. Credentials from ``haihe login`` live in
``~/.config/haihe/credentials.json`` (mode 600); ``HAIHE_URL`` and ``HAIHE_TOKEN`` override them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from haihe import errors
from haihe.client.datasets import DatasetsClientMixin
from haihe.client.endpoints import EndpointsClientMixin
from haihe.client.http import DEFAULT_URL, load_credentials, model, models, raise_for_error, seg
from haihe.client.zoo import ZooClientMixin
from haihe.platform.identity.schemas import (
    AuditPublic,
    KeyIssued,
    KeyPublic,
    OrgPublic,
    ProjectPublic,
    TokenPublic,
    UnixAccountPublic,
    UserPublic,
    WhoAmI,
)
from haihe.platform.jobs.schemas import (
    CodeUploadPublic,
    EnvironmentPublic,
    JobEventPublic,
    JobPage,
    JobPublic,
    LogsPublic,
)


class HaiheClient(DatasetsClientMixin, ZooClientMixin, EndpointsClientMixin):
    """One method per API operation; returns the pydantic models the API serves (``haihe.platform.<area>.schemas``;
    the few answers the API declares no schema for, quota balances, usage reports and the cluster view, are dicts);
    raises :mod:`haihe.errors`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        saved = load_credentials()
        self.url = (url or os.environ.get("HAIHE_URL") or saved.get("url") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("HAIHE_TOKEN") or saved.get("token")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HaiheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise errors.ServiceUnavailable(f"cannot reach Haihe at {self.url}: {exc}") from exc
        raise_for_error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- system and auth --------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self.request("GET", "/healthz"))

    def readiness(self) -> dict[str, Any]:
        response = self._http.get("/readyz")
        return dict(response.json())

    def setup(self, username: str, password: str) -> UserPublic:
        body = {"username": username, "password": password}
        return model(UserPublic, self.request("POST", "/api/v1/setup", json=body))

    def login(self, username: str, password: str) -> TokenPublic:
        token = model(TokenPublic, self.request("POST", "/api/v1/auth/token",
                                                json={"username": username, "password": password}))
        self.token = token.token
        self._http.headers["Authorization"] = f"Bearer {self.token}"
        return token

    def logout(self) -> None:
        self.request("POST", "/api/v1/auth/logout")

    def whoami(self) -> WhoAmI:
        return model(WhoAmI, self.request("GET", "/api/v1/me"))

    def cluster_status(self) -> dict[str, Any]:
        """Partitions, nodes, free CPUs/GPUs, jobs waiting and running, and why your own jobs wait."""
        return dict(self.request("GET", "/api/v1/cluster"))

    def environments(self, org: str, pruned: bool = False) -> list[EnvironmentPublic]:
        """The org's job environments on the nodes, with the storage each holds (org admins)."""
        return models(EnvironmentPublic, self.request("GET", f"/api/v1/orgs/{seg(org)}/environments",
                                                      params={"pruned": "true"} if pruned else None))

    # -- orgs, projects, users --------------------------------------------------------------------------------
    def create_org(self, name: str, display_name: str = "") -> OrgPublic:
        return model(OrgPublic, self.request("POST", "/api/v1/orgs", json={"name": name, "display_name": display_name}))

    def list_orgs(self) -> list[OrgPublic]:
        return models(OrgPublic, self.request("GET", "/api/v1/orgs"))

    def get_org(self, name: str) -> OrgPublic:
        return model(OrgPublic, self.request("GET", f"/api/v1/orgs/{seg(name)}"))

    def set_org_status(self, name: str, status: str) -> OrgPublic:
        return model(OrgPublic, self.request("PUT", f"/api/v1/orgs/{seg(name)}/status", json={"status": status}))

    def create_project(self, org: str, name: str, description: str = "") -> ProjectPublic:
        return model(ProjectPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/projects",
                                                 json={"name": name, "description": description}))

    def list_projects(self, org: str) -> list[ProjectPublic]:
        return models(ProjectPublic, self.request("GET", f"/api/v1/orgs/{seg(org)}/projects"))

    def get_project(self, org: str, name: str) -> ProjectPublic:
        return model(ProjectPublic, self.request("GET", f"/api/v1/orgs/{seg(org)}/projects/{seg(name)}"))

    def set_project_status(self, org: str, name: str, status: str) -> ProjectPublic:
        return model(ProjectPublic, self.request("PUT", f"/api/v1/orgs/{seg(org)}/projects/{seg(name)}/status",
                                                 json={"status": status}))

    def create_user(self, org: str, username: str, role: str = "researcher", password: str | None = None,
                    display_name: str = "", email: str = "") -> UserPublic:
        body = {"username": username, "role": role, "password": password, "display_name": display_name,
                "email": email}
        return model(UserPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/users", json=body))

    def add_member(self, org: str, username: str, role: str = "researcher") -> UserPublic:
        return model(UserPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/members",
                                              json={"username": username, "role": role}))

    def map_unix_account(self, org: str, username: str, unix_name: str) -> UnixAccountPublic:
        """Platform admins: map a member of ``org`` to an existing Unix account on the cluster."""
        return model(UnixAccountPublic, self.request(
            "PUT", f"/api/v1/orgs/{seg(org)}/users/{seg(username)}/unix-account", json={"unix_name": unix_name}))

    def list_users(self, org: str | None = None) -> list[UserPublic]:
        return models(UserPublic, self.request("GET", f"/api/v1/orgs/{seg(org)}/users" if org else "/api/v1/users"))

    def get_user(self, username: str) -> UserPublic:
        return model(UserPublic, self.request("GET", f"/api/v1/users/{seg(username)}"))

    def set_user_status(self, username: str, status: str) -> UserPublic:
        return model(UserPublic, self.request("PUT", f"/api/v1/users/{seg(username)}/status", json={"status": status}))

    # -- keys and audit ---------------------------------------------------------------------------------------
    def create_key(self, org: str, name: str, username: str | None = None, scopes: list[str] | None = None,
                   expires_in_days: int | None = None) -> KeyIssued:
        body: dict[str, Any] = {"org": org, "name": name, "username": username, "expires_in_days": expires_in_days}
        if scopes is not None:
            body["scopes"] = scopes
        return model(KeyIssued, self.request("POST", "/api/v1/keys", json=body))

    def list_keys(self, org: str | None = None) -> list[KeyPublic]:
        return models(KeyPublic, self.request("GET", "/api/v1/keys", params={"org": org} if org else None))

    def revoke_key(self, prefix: str) -> KeyPublic:
        return model(KeyPublic, self.request("DELETE", f"/api/v1/keys/{seg(prefix)}"))

    # -- jobs -------------------------------------------------------------------------------------------------
    def submit_job(self, org: str, project: str, spec: dict[str, Any], code_uri: str | None = None,
                   idempotency_key: str | None = None, wait: bool = True) -> JobPublic:
        """Submit a job. ``wait=False``: the answer comes once the job is stored (PENDING, no native id yet) and the
        platform submits it right after; use an ``idempotency_key`` to retry safely either way."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if not wait:
            headers["Prefer"] = "respond-async"
        return model(JobPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/projects/{seg(project)}/jobs",
                                             json={"spec": spec, "code_uri": code_uri}, headers=headers or None))

    def create_code_upload(self, org: str, project: str, size: int, sha256: str) -> CodeUploadPublic:
        return model(CodeUploadPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/projects/{seg(project)}/code",
                                                    json={"size": size, "sha256": sha256}))

    def upload_bytes(self, url: str, data: bytes, progress: Callable[[int], None] | None = None) -> None:
        """PUT ``data`` to a presigned URL (straight to S3), reporting bytes sent."""

        def chunks() -> Iterator[bytes]:
            step = 1 << 20
            for i in range(0, len(data), step):
                yield data[i:i + step]
                if progress:
                    progress(min(i + step, len(data)))

        try:
            r = httpx.put(url, content=chunks(), headers={"Content-Length": str(len(data))}, timeout=300)
        except httpx.TransportError as exc:
            raise errors.StorageUnavailable(f"upload to storage failed: {exc}") from exc
        if r.status_code >= 300:
            raise errors.StorageUnavailable(f"storage refused the upload: HTTP {r.status_code}")

    def list_jobs(self, org: str | None = None, project: str | None = None, states: list[str] | None = None,
                  mine: bool = False, cursor: str | None = None, limit: int = 50) -> JobPage:
        params: dict[str, Any] = {"limit": limit, "mine": mine}
        for k, v in (("org", org), ("project", project), ("cursor", cursor), ("state", states)):
            if v:
                params[k] = v
        return model(JobPage, self.request("GET", "/api/v1/jobs", params=params))

    def get_job(self, job_id: str) -> JobPublic:
        return model(JobPublic, self.request("GET", f"/api/v1/jobs/{seg(job_id)}"))

    def job_events(self, job_id: str) -> list[JobEventPublic]:
        return models(JobEventPublic, self.request("GET", f"/api/v1/jobs/{seg(job_id)}/events"))

    def job_logs(self, job_id: str, offset: int = 0) -> LogsPublic:
        return model(LogsPublic, self.request("GET", f"/api/v1/jobs/{seg(job_id)}/logs", params={"offset": offset}))

    def cancel_job(self, job_id: str) -> JobPublic:
        return model(JobPublic, self.request("POST", f"/api/v1/jobs/{seg(job_id)}/cancel"))

    def resubmit_job(self, job_id: str) -> JobPublic:
        return model(JobPublic, self.request("POST", f"/api/v1/jobs/{seg(job_id)}/resubmit"))

    # -- quotas and usage -------------------------------------------------------------------------------------
    def set_quota(self, org: str, project: str | None = None, **limits: Any) -> dict[str, Any]:
        path = f"/api/v1/orgs/{seg(org)}" + (f"/projects/{seg(project)}" if project else "") + "/quota"
        return dict(self.request("PUT", path, json=limits))

    def get_quota(self, org: str, project: str | None = None, month: str | None = None) -> dict[str, Any]:
        path = f"/api/v1/orgs/{seg(org)}" + (f"/projects/{seg(project)}" if project else "") + "/quota"
        return dict(self.request("GET", path, params={"month": month} if month else None))

    def usage_report(self, month: str, org: str | None = None, fmt: str = "json") -> Any:
        params = {"month": month, "format": fmt, **({"org": org} if org else {})}
        if fmt == "csv":
            response = self._http.get("/api/v1/usage", params=params)
            raise_for_error(response)
            return response.text
        return self.request("GET", "/api/v1/usage", params=params)

    def quota_sync(self, scheduler: str = "slurm", apply: bool = True) -> dict[str, Any]:
        if apply:
            return dict(self.request("POST", "/api/v1/admin/quota/sync", params={"scheduler": scheduler}))
        return dict(self.request("GET", "/api/v1/admin/quota/check", params={"scheduler": scheduler}))

    def suspend_org(self, org: str) -> OrgPublic:
        return model(OrgPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/suspend"))

    def resume_org(self, org: str) -> OrgPublic:
        return model(OrgPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/resume"))

    def audit(self, org: str | None = None, action: str | None = None, actor: str | None = None,
              before: int | None = None, limit: int = 50) -> list[AuditPublic]:
        params = {k: v for k, v in {"org": org, "action": action, "actor": actor, "before": before,
                                    "limit": limit}.items() if v is not None}
        return models(AuditPublic, self.request("GET", "/api/v1/audit", params=params))
