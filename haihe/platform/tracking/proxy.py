"""Tenancy for MLflow: job tokens and the policy of the platform's authenticated MLflow proxy (``/mlflow/…``).

MLflow OSS has no tenant isolation: anyone who can reach its REST API may write into any experiment. So job
runtimes never get MLflow's address. They get ``MLFLOW_TRACKING_URI=<platform>/mlflow`` and
``MLFLOW_TRACKING_TOKEN=<job token>``. MLflow's client sends the token as ``Authorization: Bearer``. The proxy
checks the token and applies :func:`decide` to every call before it forwards it. Writes may only touch the
job's experiment, ``<org>/<project>`` (or ``<org>/<project>/<name>``), its runs, its logged models and their
artifacts, and registered models named ``<org>~…``. Reads may see the org's experiments and the zoo models the
org may see. Anything the policy does not know is refused. The reasons are in docs/tracking.md.

:func:`decide` is pure apart from :class:`Lookup`: the proxy answers it from MLflow, unit tests from a fake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from haihe.errors import AuthenticationRequired

TOKEN_PREFIX = "hjt_"
TOKEN_TTL_S = 30 * 24 * 3600  # absolute cap; the proxy also refuses a job's token soon after the job ends
ENDED_GRACE_S = 15 * 60  # a finished job's last flush of metrics may arrive a little late
_KEY_CONTEXT = b"haihe mlflow job token v1"

ZOO_VISIBILITY = "haihe.visibility"
ZOO_ORG = "haihe.org"


# -- job tokens ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobScope:
    """What a job token allows: the job's org and project (its experiment) and the job itself."""

    job_id: str
    org: str
    project: str

    @property
    def experiment(self) -> str:
        return f"{self.org}/{self.project}"

    def may_write_experiment(self, name: str) -> bool:
        return name == self.experiment or name.startswith(self.experiment + "/")

    def may_read_experiment(self, name: str) -> bool:
        return name.startswith(self.org + "/")

    @property
    def model_prefix(self) -> str:
        return f"{self.org}~"

    @property
    def label(self) -> str:
        return f"job {self.job_id}"

    def sees_own_model(self, name: str) -> bool:
        """A registered model of the scope's own org (``<org>~…``), whatever its visibility."""
        return name.startswith(self.model_prefix)

    def may_write_model(self, name: str) -> bool:
        return name.startswith(self.model_prefix)

    def may_register_for(self, org: str) -> bool:
        return org == self.org


@dataclass(frozen=True)
class UserScope:
    """What a person (their session or API key, through the stock MLflow client or MLflow's own UI) may do: read
    the experiments and models of every org they belong to; write only where their role may change things (never
    through a browser session, which is read-only here: the UI's requests carry no CSRF token)."""

    username: str
    read_orgs: frozenset[str]
    write_orgs: frozenset[str] = frozenset()
    every_org: bool = False  # a platform admin reads all

    @property
    def job_id(self) -> str:
        return f"user:{self.username}"

    @property
    def label(self) -> str:
        return f"user {self.username}"

    @property
    def org(self) -> str:
        return ", ".join(sorted(self.write_orgs or self.read_orgs)) or "none"

    @property
    def experiment(self) -> str:
        return " or ".join(f"{o}/…" for o in sorted(self.write_orgs)) or "none (read-only)"

    @property
    def model_prefix(self) -> str:
        return " or ".join(f"{o}~" for o in sorted(self.write_orgs)) or "none"

    @staticmethod
    def _org_of(name: str, sep: str) -> str:
        return name.split(sep, 1)[0] if sep in name else ""

    def may_read_experiment(self, name: str) -> bool:
        return self.every_org or self._org_of(name, "/") in self.read_orgs

    def may_write_experiment(self, name: str) -> bool:
        return self._org_of(name, "/") in self.write_orgs

    def sees_own_model(self, name: str) -> bool:
        return self.every_org or self._org_of(name, "~") in self.read_orgs

    def may_write_model(self, name: str) -> bool:
        return self._org_of(name, "~") in self.write_orgs

    def may_register_for(self, org: str) -> bool:
        return org in self.write_orgs


Scope = JobScope | UserScope


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _KEY_CONTEXT, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(secret: str, scope: JobScope, *, ttl_s: int = TOKEN_TTL_S, now: float | None = None) -> str:
    """A signed, expiring credential bound to one job's org and project (HMAC over the platform's secret key)."""
    issued = int(now if now is not None else time.time())
    payload = json.dumps({"j": scope.job_id, "o": scope.org, "p": scope.project, "e": issued + ttl_s},
                         separators=(",", ":"), sort_keys=True).encode()
    sig = hmac.new(_key(secret), payload, hashlib.sha256).digest()
    return f"{TOKEN_PREFIX}{_b64(payload)}.{_b64(sig)}"


def verify_token(secret: str, token: str, *, now: float | None = None) -> JobScope:
    """The scope of a valid, unexpired job token; AuthenticationRequired otherwise (never says which check failed)."""
    bad = AuthenticationRequired("invalid or expired job token")
    if not token.startswith(TOKEN_PREFIX) or len(token) > 2048:
        raise bad
    body, _, sig = token[len(TOKEN_PREFIX):].partition(".")
    try:
        payload, signature = _unb64(body), _unb64(sig)
    except (ValueError, TypeError):
        raise bad from None
    if not hmac.compare_digest(hmac.new(_key(secret), payload, hashlib.sha256).digest(), signature):
        raise bad
    try:
        data = json.loads(payload)
        scope = JobScope(str(data["j"]), str(data["o"]), str(data["p"]))
        expires = int(data["e"])
    except (ValueError, KeyError, TypeError):
        raise bad from None
    if expires < (now if now is not None else time.time()):
        raise bad
    return scope


# -- the policy ------------------------------------------------------------------------------------------------------
class Lookup(Protocol):
    """What the policy must ask MLflow. Each returns None when the thing does not exist."""

    async def experiment_name(self, experiment_id: str) -> str | None: ...

    async def run_experiment(self, run_id: str) -> str | None: ...

    async def logged_model_experiment(self, model_id: str) -> str | None: ...

    async def model_tags(self, name: str) -> Mapping[str, str] | None: ...

    async def models_of_logged_model(self, model_id: str) -> Sequence[str]:
        """Names of the registered models that have a version made from this logged model."""
        ...


Filter = Literal["experiments", "registered_models", "model_versions"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int = 200
    error_code: str = ""
    message: str = ""
    filter: Filter | None = None  # the response list to filter down to what the job may see


ALLOW = Decision(True)


def _deny(message: str) -> Decision:
    return Decision(False, 403, "PERMISSION_DENIED", message)


def _missing(message: str) -> Decision:
    # MLflow's own answer for a missing thing, so clients behave as if it did not exist (e.g. create the experiment)
    return Decision(False, 404, "RESOURCE_DOES_NOT_EXIST", message)


@dataclass(frozen=True)
class Call:
    """One proxied request: method, the path after ``/mlflow/``, query parameters and the JSON body (or {})."""

    method: str
    path: str
    query: Mapping[str, Sequence[str]]
    body: Mapping[str, Any]

    def param(self, *names: str) -> str | None:
        for name in names:
            if self.body.get(name) not in (None, ""):
                return str(self.body[name])
            values = self.query.get(name)
            if values:
                return values[0]
        return None

    def params(self, name: str) -> list[str]:
        found = self.body.get(name)
        if isinstance(found, list):
            return [str(v) for v in found]
        return list(self.query.get(name, ()))


API = "api/2.0/mlflow/"
ARTIFACTS = "api/2.0/mlflow-artifacts/"
_ALWAYS = {("GET", "health"), ("GET", "version"), ("GET", "api/3.0/mlflow/server-info")}
# searches MLflow's client and UI send as POST: reads, whatever the method (a read-only token may make them)
_READ_POSTS = {"runs/search", "experiments/search", "logged-models/search", "registered-models/search"}
UI = "ajax-api/"  # MLflow's web UI calls the same REST API under this prefix
_RUN_WRITES = {"runs/update", "runs/log-batch", "runs/log-metric", "runs/log-parameter", "runs/set-tag",
               "runs/delete-tag", "runs/log-inputs", "runs/log-model", "runs/outputs"}
_RUN_READS = {"runs/get", "metrics/get-history", "artifacts/list"}
_MODEL_READS = {"registered-models/get", "registered-models/get-latest-versions", "registered-models/alias",
                "model-versions/get", "model-versions/get-download-uri"}
_MODEL_WRITES = {"registered-models/set-tag", "registered-models/delete-tag", "registered-models/update",
                 "registered-models/alias", "registered-models/delete", "model-versions/set-tag",
                 "model-versions/delete-tag", "model-versions/update", "model-versions/delete"}


class Policy:
    """Decides one proxied call for one job scope."""

    def __init__(self, scope: Scope, lookup: Lookup, *, writable: bool = True) -> None:
        self.scope = scope
        self.lookup = lookup
        self.writable = writable  # False when the org is suspended or the job has ended: reads only

    async def decide(self, call: Call) -> Decision:
        path = call.path.strip("/")
        if "\\" in path or any(p in (".", "..") for p in path.split("/")) or "%" in path:
            return _deny("malformed path")
        if (call.method, path) in _ALWAYS:
            return ALLOW
        if isinstance(self.scope, UserScope):
            ui = self._ui(call, path)
            if ui is not None:
                return ui
            if path in ("graphql", UI + "graphql") and call.method == "POST":
                return await self._graphql(call)
            if path.startswith(UI):  # the UI's copy of the REST API: the same policy
                path = "api/" + path[len(UI):]
                if (call.method, path) in _ALWAYS:
                    return ALLOW
        reading = call.method in ("GET", "HEAD") or path.removeprefix(API) in _READ_POSTS
        if path.startswith(ARTIFACTS):
            return await self._artifacts(call, path[len(ARTIFACTS):], reading)
        if not path.startswith(API):
            return _deny(f"{call.method} /{path} is not available to jobs")
        verb = path[len(API):]
        if not reading and not self.writable:
            return _deny("this job's token may only read now (the job has ended or its org is suspended)")
        if verb.startswith("experiments/"):
            return await self._experiments(call, verb, reading)
        if verb.startswith(("runs/", "metrics/", "artifacts/")):
            return await self._runs(call, verb, reading)
        if verb == "logged-models" or verb.startswith("logged-models/"):
            return await self._logged_models(call, verb, reading)
        if verb.startswith(("registered-models/", "model-versions/")):
            return await self._registry(call, verb, reading)
        return _deny(f"{call.method} /{path} is not available to jobs")

    def _ui(self, call: Call, path: str) -> Decision | None:
        """MLflow's web UI for people: its page and static files; None for everything else (the REST API)."""
        if call.method not in ("GET", "HEAD"):
            return None
        if path in ("", "favicon.ico") or path.startswith("static-files/"):
            return ALLOW
        return None

    async def _graphql(self, call: Call) -> Decision:
        """The UI's GraphQL reads, each root field checked as its REST twin would be (reads only)."""
        from haihe.platform.tracking.graphql import GraphqlRefused, root_fields

        try:
            fields = root_fields(call.body)
        except GraphqlRefused as exc:
            return _deny(str(exc))
        for name, given in fields:
            if name in ("mlflowGetRun", "mlflowListArtifacts"):
                run_ids = [given.get("runId") or given.get("runUuid")]
            elif name == "mlflowGetMetricHistoryBulkInterval":
                run_ids = list(given.get("runIds") or []) or [None]
            elif name in ("mlflowGetExperiment",):
                if not await self._experiment_readable(str(given.get("experimentId") or "")):
                    return _missing("experiment not found")
                continue
            elif name in ("mlflowSearchRuns", "mlflowSearchDatasets"):
                decision = await self._all_readable([str(e) for e in given.get("experimentIds") or []])
                if not decision.allowed:
                    return decision
                continue
            elif name == "test":
                continue
            else:
                return _deny(f"GraphQL {name} is not available here")
            for run_id in run_ids:
                if not run_id or not await self._experiment_readable(await self.lookup.run_experiment(str(run_id))):
                    return _missing("run not found")
        return ALLOW

    # ---- experiments ----
    async def _experiment_readable(self, experiment_id: str | None) -> bool:
        if not experiment_id:
            return False
        name = await self.lookup.experiment_name(experiment_id)
        return name is not None and self.scope.may_read_experiment(name)

    async def _experiment_writable(self, experiment_id: str | None) -> bool:
        if not experiment_id:
            return False
        name = await self.lookup.experiment_name(experiment_id)
        return name is not None and self.scope.may_write_experiment(name)

    async def _experiments(self, call: Call, verb: str, reading: bool) -> Decision:
        if verb == "experiments/search":
            return Decision(True, filter="experiments")
        if verb == "experiments/get-by-name" and reading:
            name = call.param("experiment_name") or ""
            return ALLOW if self.scope.may_read_experiment(name) else _missing(f"experiment {name!r} not found")
        if verb == "experiments/get" and reading:
            ok = await self._experiment_readable(call.param("experiment_id"))
            return ALLOW if ok else _missing("experiment not found")
        if verb == "experiments/create":
            name = call.param("name") or ""
            if "artifact_location" in call.body:
                return _deny("jobs may not choose an experiment's artifact location")
            if not self.scope.may_write_experiment(name):
                return _deny(f"{self.scope.label} may only create experiment {self.scope.experiment!r} (or below it)")
            return ALLOW
        if verb == "experiments/set-experiment-tag":
            ok = await self._experiment_writable(call.param("experiment_id"))
            return ALLOW if ok else _deny(f"{self.scope.label} may only write to experiment {self.scope.experiment!r}")
        return _deny(f"{verb} is not available to jobs")

    # ---- runs ----
    async def _runs(self, call: Call, verb: str, reading: bool) -> Decision:
        if verb == "runs/create":
            ok = await self._experiment_writable(call.param("experiment_id"))
            return ALLOW if ok else _deny(f"{self.scope.label} may only write to experiment {self.scope.experiment!r}")
        if verb in _RUN_WRITES and not reading:
            run_id = call.param("run_id", "run_uuid")
            ok = run_id is not None and await self._experiment_writable(await self.lookup.run_experiment(run_id))
            return ALLOW if ok else _deny(f"{self.scope.label} may only write to runs of experiment "
                                          f"{self.scope.experiment!r}")
        if verb in _RUN_READS:
            run_id = call.param("run_id", "run_uuid")
            ok = run_id is not None and await self._experiment_readable(await self.lookup.run_experiment(run_id))
            return ALLOW if ok else _missing("run not found")
        if verb == "metrics/get-history-bulk-interval" and reading:
            ids = call.params("run_ids")
            for run_id in ids:
                if not await self._experiment_readable(await self.lookup.run_experiment(run_id)):
                    return _missing("run not found")
            return ALLOW if ids else _deny("run_ids required")
        if verb == "runs/search":
            return await self._all_readable(call.params("experiment_ids"))
        return _deny(f"{verb} is not available to jobs")

    async def _all_readable(self, experiment_ids: Sequence[str]) -> Decision:
        if not experiment_ids:
            return _deny("name the experiments to search")
        for experiment_id in experiment_ids:
            if not await self._experiment_readable(experiment_id):
                return _missing(f"experiment {experiment_id} not found")
        return ALLOW

    # ---- logged models (MLflow 3) ----
    async def _logged_model_readable(self, model_id: str) -> bool:
        if await self._experiment_readable(await self.lookup.logged_model_experiment(model_id)):
            return True
        for name in await self.lookup.models_of_logged_model(model_id):
            if await self._model_visible(name):
                return True
        return False

    async def _logged_models(self, call: Call, verb: str, reading: bool) -> Decision:
        if verb == "logged-models":
            if call.method != "POST":
                return _deny("logged-models: only create is available to jobs")
            ok = await self._experiment_writable(call.param("experiment_id"))
            return ALLOW if ok else _deny(f"{self.scope.label} may only log models to experiment "
                                          f"{self.scope.experiment!r}")
        if verb == "logged-models/search":
            return await self._all_readable(call.params("experiment_ids"))
        model_id = verb.split("/")[1]
        if reading:
            return ALLOW if await self._logged_model_readable(model_id) else _missing("logged model not found")
        if call.method == "DELETE" and verb.count("/") == 1:
            return _deny("jobs may not delete logged models")
        experiment = await self.lookup.logged_model_experiment(model_id)
        ok = await self._experiment_writable(experiment)
        return ALLOW if ok else _deny(f"{self.scope.label} may only change models of experiment "
                                      f"{self.scope.experiment!r}")

    # ---- model registry ----
    async def _model_visible(self, name: str) -> bool:
        if self.scope.sees_own_model(name):
            return True
        tags = await self.lookup.model_tags(name)
        return tags is not None and tags.get(ZOO_VISIBILITY) == "public"

    def _own_model(self, name: str | None) -> bool:
        return bool(name) and self.scope.may_write_model(str(name))

    def _tags_ok(self, tags: Mapping[str, str]) -> str | None:
        """Why these registered-model tags may not be set by a job (publishing is for org admins), or None."""
        if tags.get(ZOO_VISIBILITY, "private") != "private":
            return "jobs may only register private models; an org admin publishes them"
        org = tags.get(ZOO_ORG)
        if org is not None and not self.scope.may_register_for(org):
            return f"{self.scope.label} may only register models of org {self.scope.org!r}"
        return None

    async def _registry(self, call: Call, verb: str, reading: bool) -> Decision:
        name = call.param("name")
        if verb == "registered-models/search":
            return Decision(True, filter="registered_models")
        if verb == "model-versions/search":
            return Decision(True, filter="model_versions")
        if reading or verb == "registered-models/get-latest-versions":
            if verb not in _MODEL_READS or not name:
                return _deny(f"{verb} is not available to jobs")
            return ALLOW if await self._model_visible(name) else _missing(f"registered model {name!r} not found")
        if not self._own_model(name):
            return _deny(f"jobs of org {self.scope.org!r} may only change models named {self.scope.model_prefix}…")
        if verb == "registered-models/create":
            tags = {str(t.get("key")): str(t.get("value")) for t in call.body.get("tags") or () if isinstance(t, dict)}
            why = self._tags_ok(tags)
            return _deny(why) if why else ALLOW
        if verb == "registered-models/set-tag":
            why = self._tags_ok({str(call.param("key")): str(call.param("value"))})
            return _deny(why) if why else ALLOW
        if verb == "model-versions/create":
            return await self._version_source(call)
        if verb in _MODEL_WRITES:
            return ALLOW
        return _deny(f"{verb} is not available to jobs")

    async def _version_source(self, call: Call) -> Decision:
        """A version may only be made from this job's own experiment (else it could republish another org's model)."""
        refuse = _deny(f"a model version must come from experiment {self.scope.experiment!r}")
        run_id = call.param("run_id")
        if run_id and not await self._experiment_writable(await self.lookup.run_experiment(run_id)):
            return refuse
        model_id = call.param("model_id")
        source = call.param("source") or ""
        if source.startswith("models:/m-"):
            model_id = model_id or source.removeprefix("models:/").split("/")[0]
        if model_id:
            ok = await self._experiment_writable(await self.lookup.logged_model_experiment(model_id))
            return ALLOW if ok else refuse
        if source.startswith("runs:/"):
            source_run = source.removeprefix("runs:/").split("/")[0]
            ok = await self._experiment_writable(await self.lookup.run_experiment(source_run))
            return ALLOW if ok else refuse
        if source.startswith("mlflow-artifacts:/"):
            first = source.removeprefix("mlflow-artifacts:").lstrip("/").split("/")[0]
            return ALLOW if await self._experiment_writable(first) else refuse
        return refuse

    # ---- artifacts (mlflow-artifacts:/<experiment id>/…) ----
    async def _artifacts(self, call: Call, rest: str, reading: bool) -> Decision:
        kind, _, artifact = rest.partition("/")
        if kind == "artifacts" and not artifact:  # listing: GET …/artifacts?path=<experiment id>/…
            artifact = (call.param("path") or "").strip("/")
            if not reading:
                return _deny("artifact listing is read-only")
        elif kind == "mpu" and not reading:
            artifact = artifact.partition("/")[2]  # mpu/{create,complete,abort}/<path>
        elif kind == "presigned" and reading:
            pass  # a presigned S3 GET of <path>: MLflow 3 downloads through these when the server offers them
        elif kind != "artifacts":
            return _deny(f"{kind} is not available to jobs")
        parts = artifact.split("/")
        if any(p in ("", ".", "..") for p in parts):
            return _deny("artifact paths must be <experiment id>/…")
        experiment_id = parts[0]
        if reading:
            if await self._experiment_readable(experiment_id):
                return ALLOW
            if len(parts) >= 3 and parts[1] == "models" and await self._logged_model_readable(parts[2]):
                return ALLOW
            return _missing("artifact not found")
        if call.method == "DELETE":
            return _deny("jobs may not delete artifacts")
        if not self.writable:
            return _deny("this job's token may only read now (the job has ended or its org is suspended)")
        if await self._experiment_writable(experiment_id):
            return ALLOW
        return _deny(f"{self.scope.label} may only write artifacts of experiment {self.scope.experiment!r}")

    # ---- response filtering for searches ----
    async def filter_body(self, kind: Filter, body: dict[str, Any]) -> dict[str, Any]:
        """Drop from a search answer what the job may not see (kept: own org's experiments, visible models)."""
        if kind == "experiments":
            items = body.get("experiments") or []
            body["experiments"] = [e for e in items if self.scope.may_read_experiment(str(e.get("name", "")))]
        elif kind == "registered_models":
            items = body.get("registered_models") or []
            body["registered_models"] = [m for m in items if self._listed_model(m)]
        else:
            items = body.get("model_versions") or []
            kept = []
            for v in items:
                if await self._model_visible(str(v.get("name", ""))):
                    kept.append(v)
            body["model_versions"] = kept
        return body

    def _listed_model(self, model: Mapping[str, Any]) -> bool:
        name = str(model.get("name", ""))
        if self.scope.sees_own_model(name):
            return True
        tags = {str(t.get("key")): str(t.get("value")) for t in model.get("tags") or () if isinstance(t, dict)}
        return tags.get(ZOO_VISIBILITY) == "public"


ENDPOINT_SCOPE = "endpoint:"  # job_id of a serving token: "endpoint:<id>" (read-only, checked against the row)
SERVING_TOKEN_TTL_S = 365 * 24 * 3600  # replicas restart at any time; the endpoint row is what really gates it


def serving_tracking(mlflow_url: str, public_url: str, secret: str, endpoint_id: int,
                     org: str) -> tuple[str, str]:
    """``(tracking URI, token)`` for an endpoint's model servers: the platform's proxy with a read-only token of
    the endpoint's org, so replicas load zoo models like jobs do and never reach MLflow itself (the local
    cluster's firewall rejects them there)."""
    if not mlflow_url:
        return "", ""
    scope = JobScope(f"{ENDPOINT_SCOPE}{endpoint_id}", org, "")
    return f"{public_url.rstrip('/')}/mlflow", issue_token(secret, scope, ttl_s=SERVING_TOKEN_TTL_S)


def job_tracking(mlflow_url: str, public_url: str, secret: str, scope: JobScope) -> tuple[str, str]:
    """``(MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN)`` for a job: the platform's proxy and a token for its
    project. Empty strings when the platform has no MLflow server."""
    if not mlflow_url:
        return "", ""
    return f"{public_url.rstrip('/')}/mlflow", issue_token(secret, scope)
