"""The slurmrestd transport (``slurm+rest://host:port``): JWT auth, OpenAPI v0.0.38 (Slurm 22.05).

slurmrestd answers HTTP 500 with an ``errors`` list for refusals and when it cannot reach slurmctld (after its own
~9 s of retries), so the client uses a short timeout and translates both into Haihe errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from haihe.errors import AuthenticationRequired, SchedulerUnavailable, Unsupported
from haihe.schedulers.slurm.options import REST_API, rest_job
from haihe.schedulers.slurm.transport import Json, translate

log = logging.getLogger(__name__)

TokenSource = Callable[[], str]
UserTokenSource = Callable[[str], str]  # a short-lived token for that user (jwt.UserTokens)


class RestTransport:
    name = "rest"

    def __init__(self, base_url: str, *, user: str, token: TokenSource, accounting: bool = True,
                 timeout: float = 5.0, client: httpx.Client | None = None, token_ttl: float = 600.0,
                 user_token: UserTokenSource | None = None) -> None:
        self.user = user
        self.user_token = user_token
        self._token_source = token
        self._token: str | None = None
        self._token_at = 0.0
        self._token_ttl = token_ttl
        self.has_accounting = accounting
        self.http = client or httpx.Client(base_url=base_url, timeout=timeout)

    def _headers(self, fresh: bool = False, user: str | None = None) -> dict[str, str]:
        if user is not None and user != self.user:
            if self.user_token is None:
                raise Unsupported(f"slurm+rest cannot submit as {user!r} without the cluster's JWT key: add "
                                  "jwt_key=<path> to the scheduler URL", field="user")
            return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": self.user_token(user)}
        if fresh or self._token is None or time.monotonic() - self._token_at > self._token_ttl:
            self._token = self._token_source()
            self._token_at = time.monotonic()
        return {"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": self._token}

    def _call(self, method: str, path: str, what: str, body: Any = None,
              params: Mapping[str, str] | None = None, user: str | None = None,
              done: Callable[[Json], bool] | None = None) -> Json:
        """One slurmrestd call; its ``errors`` become the platform's errors unless ``done`` says the call did what
        it was for despite them (slurmrestd also lists what sbatch only warns about)."""
        for attempt in (0, 1):
            try:
                resp = self.http.request(method, path, json=body, params=params,
                                         headers=self._headers(attempt > 0, user))
            except httpx.TimeoutException as exc:
                raise SchedulerUnavailable(f"slurmrestd: no answer within the timeout ({exc})") from exc
            except httpx.TransportError as exc:
                raise SchedulerUnavailable(f"slurmrestd unreachable: {exc}") from exc
            if resp.status_code == 401 and attempt == 0:
                continue  # token expired or rotated: mint a new one once
            break
        if resp.status_code == 401:
            raise AuthenticationRequired("slurmrestd rejected the token")
        try:
            data: Json = resp.json()
        except ValueError as exc:
            raise SchedulerUnavailable(f"slurmrestd: HTTP {resp.status_code}: {resp.text[:200]}") from exc
        errors = [e.get("error") or e.get("description") or str(e) for e in data.get("errors") or []]
        if errors and not (done is not None and resp.status_code < 400 and done(data)):
            raise translate("; ".join(str(e) for e in errors), what=what)
        if errors:
            log.info("slurmrestd %s succeeded with notes: %s", what, "; ".join(str(e) for e in errors))
        if resp.status_code >= 400:
            raise translate(f"HTTP {resp.status_code}", what=what)
        return data

    def submit(self, script: str, options: Mapping[str, str], environment: Mapping[str, str],
               user: str | None = None) -> str:
        # slurmrestd 22.05 ignores #SBATCH lines: the options travel as job fields
        body = {"script": script, "job": rest_job(options, environment)}
        # a job id means the job is queued: slurmrestd 22.05 still lists e.g. "Required node not available" (its
        # nodes are drained: it waits, as sbatch queues it) - refusing it here would orphan a queued job
        data = self._call("POST", f"/slurm/{REST_API}/job/submit", "submit", body, user=user,
                          done=lambda d: d.get("job_id") not in (None, "", 0))
        return str(data["job_id"])

    def jobs(self) -> list[Json]:
        return list(self._call("GET", f"/slurm/{REST_API}/jobs", "query").get("jobs") or [])

    def accounting(self, job_ids: Sequence[str]) -> list[Json] | None:
        if not self.has_accounting:
            return None
        # dbv0.0.38 filters by job_name/account but not by id list; ask per id is N calls, so fetch by id
        # in one call through the path parameter when there is one, else the recent window
        if len(job_ids) == 1:
            return list(self._call("GET", f"/slurmdb/{REST_API}/job/{job_ids[0]}", "query").get("jobs") or [])
        wanted = set(job_ids)
        return [j for j in self.recent_accounting(30) or []
                if str(j.get("job_id")) in wanted or str((j.get("array") or {}).get("job_id")) in wanted]

    def recent_accounting(self, days: int) -> list[Json] | None:
        if not self.has_accounting:
            return None
        return list(self._call("GET", f"/slurmdb/{REST_API}/jobs", "query", params={"start_time": f"now-{days}days"})
                    .get("jobs") or [])

    def cancel(self, job_id: str) -> None:
        self._call("DELETE", f"/slurm/{REST_API}/job/{job_id}", "cancel")

    def nodes(self) -> list[Json]:
        return list(self._call("GET", f"/slurm/{REST_API}/nodes", "query").get("nodes") or [])

    def partitions(self) -> list[Json]:
        return list(self._call("GET", f"/slurm/{REST_API}/partitions", "query").get("partitions") or [])

    def qos_names(self) -> list[str] | None:
        if not self.has_accounting:
            return None
        data = self._call("GET", f"/slurmdb/{REST_API}/qos", "query")
        return [str(q["name"]) for q in data.get("QOS") or data.get("qos") or []]
