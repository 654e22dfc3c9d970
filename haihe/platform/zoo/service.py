"""The zoo service: who may see, change, publish, delete and pull which model, and the job → run reads of the portal.

The library (:mod:`haihe.model_zoo`) stores models, cards, lineage and visibility in MLflow; this module decides who
may do what, in ONE function, :func:`can_see`: a platform admin sees everything; everyone sees ``public`` models;
members of the owner org see its ``org`` and ``private`` ones. A model you cannot see does not exist for you (404).
Changing aliases needs a writing role in the owner org, publishing (visibility) and deleting need its org admin —
a 403 when you can see the model but not change it. Every change is audited.

Tracking reads (a job's runs, params and metric histories) go through
:func:`haihe.platform.jobs.service.get_job`, so a job you cannot see has no runs for you either. MLflow errors
arrive as ``TrackingUnavailable`` (503) from the library.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy.orm import Session

from haihe.errors import HaiheError, InvalidInput, NotFound, PermissionDenied, TrackingUnavailable
from haihe.jobs.render import job_experiment
from haihe.model_zoo import Lineage, ModelZoo, ZooModel, ZooModelDetail, ZooRef, ZooVersion
from haihe.model_zoo.names import DatasetRef
from haihe.model_zoo.registry import check_visibility
from haihe.model_zoo.tracking import MetricPoint, RunInfo, TrackingClient
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.jobs import service as jobs
from haihe.platform.models import Project
from haihe.platform.zoo.catalog import (
    ZooServices,
    org_ids,
    visible,
)
from haihe.platform.zoo.schemas import JobLinkPublic, VersionLineage

log = logging.getLogger(__name__)

DOWNLOAD_TTL = dt.timedelta(hours=1)
MAX_METRIC_KEYS = 50  # loss curves the portal draws per run; more are listed by name only
MAX_RUNS = 100  # a sweep's runs per job


def _writable(services: ZooServices, session: Session, principal: Principal, ref: ZooRef, *,
              admin: bool) -> ZooModelDetail:
    """Visible (else 404) and changeable by the caller (else 403): a writing role, or the org admin role."""
    detail = visible(services, session, principal, ref)
    try:
        if admin:
            access.org_for_admin(session, principal, ref.org)
        else:
            access.org_for_write(session, principal, ref.org)
    except NotFound:  # the caller sees the (public) model but is not in its org
        raise PermissionDenied(f"model {ref.model} belongs to org {ref.org!r}: you may use it but not change it",
                               field="model") from None
    return detail


def permissions(session: Session, principal: Principal, org: str) -> tuple[bool, bool]:
    """(may change aliases, may publish/delete) in ``org``: what the portal shows as buttons."""
    allowed = []
    for check in (access.org_for_write, access.org_for_admin):
        try:
            check(session, principal, org)
            allowed.append(True)
        except (NotFound, PermissionDenied):
            allowed.append(False)
    return allowed[0], allowed[1]


def lineage(session: Session, principal: Principal, versions: Sequence[ZooVersion]) -> list[VersionLineage]:
    out = []
    for v in versions:
        out.append(VersionLineage(v.version, v.lineage.job_id, _job_link(session, principal, v.lineage),
                                  v.lineage.run_id, v.lineage.dataset, v.lineage.environment))
    return out


def _job_link(session: Session, principal: Principal, lin: Lineage) -> JobLinkPublic | None:
    if not lin.job_id:
        return None
    try:
        job = jobs.get_job(session, principal, lin.job_id)
    except NotFound:
        return None
    return JobLinkPublic(id=job.id, name=job.name, org=job.org.name, project=job.project.name, state=job.state,
                         dataset=job.dataset_ref)


def models_for_dataset(services: ZooServices, session: Session, principal: Principal, dataset: str) -> list[ZooVersion]:
    """Zoo versions trained on a dataset version (the dataset page), only those of models the caller may see."""
    ref = DatasetRef.parse(dataset, "dataset")
    zoo = services.zoo
    found = zoo.models_from_dataset(str(ref))
    seen: dict[str, bool] = {}
    out = []
    for v in found:
        key = str(v.ref.model)
        if key not in seen:
            try:
                visible(services, session, principal, v.ref.model)
                seen[key] = True
            except NotFound:
                seen[key] = False
        if seen[key]:
            out.append(v)
    return out


# -- changing --------------------------------------------------------------------------------------------------------
def _unpinned(ref: str) -> ZooRef:
    parsed = ZooRef.parse(ref)
    if parsed.pinned():
        raise InvalidInput("name the model as org/name", field="model")
    return parsed


def set_alias(services: ZooServices, session: Session, principal: Principal, ref: str, alias: str,
              version: int | None) -> ZooVersion | None:
    """Point an alias at a version (None removes it): writing role in the owner org; a missing version is a 422."""
    model = _unpinned(ref)
    _writable(services, session, principal, model, admin=False)
    result = services.zoo.set_alias(model, alias, version)
    audit.record(session, principal, "model.alias", target_type="model", target=str(model),
                 org_id=org_ids(session, {model.org}).get(model.org), details={"alias": alias, "version": version})
    session.commit()
    return result


def set_visibility(services: ZooServices, session: Session, principal: Principal, ref: str,
                   visibility: str) -> ZooModel:
    """private | org | public (publishing to the public zoo): the owner org's admin only."""
    model = _unpinned(ref)
    vis = check_visibility(visibility)
    _writable(services, session, principal, model, admin=True)
    result = services.zoo.set_visibility(model, vis)
    audit.record(session, principal, "model.visibility", target_type="model", target=str(model),
                 org_id=org_ids(session, {model.org}).get(model.org), details={"visibility": vis})
    session.commit()
    return result


def delete(services: ZooServices, session: Session, principal: Principal, ref: str, version: int | None = None) -> None:
    """Delete a model or one version of it: the owner org's admin only. The run keeps its artifacts."""
    model = _unpinned(ref)
    _writable(services, session, principal, model, admin=True)
    target = ZooRef(model.org, model.name, version=version) if version is not None else model
    services.zoo.delete(target)
    audit.record(session, principal, "model.delete", target_type="model", target=str(target),
                 org_id=org_ids(session, {model.org}).get(model.org))
    session.commit()


def register(
    services: ZooServices, session: Session,
    principal: Principal,
    ref: str,
    card: dict[str, Any],
    *,
    job_id: str,
    artifact_path: str = "model",
    run_id: str | None = None,
    visibility: str | None = None,
) -> ZooVersion:
    """Register the model a job logged as the next version of ``org/name`` (writing role in that org).

    The job must belong to the same org and be visible to the caller; the run must be that job's run. Card and
    lineage are validated by the library before anything is written."""
    model = _unpinned(ref)
    access.org_for_write(session, principal, model.org)
    if visibility == "public":
        access.org_for_admin(session, principal, model.org)
    job = jobs.get_job(session, principal, job_id)
    if job.org.name != model.org:
        raise InvalidInput(f"job {job_id} belongs to org {job.org.name!r}, not {model.org!r}", field="job_id")
    runs = job_runs(services, session, principal, job_id)
    if not runs:
        raise InvalidInput(f"job {job_id} has no MLflow run", field="job_id")
    chosen = runs[0] if run_id is None else next((r for r in runs if r.run_id == run_id), None)
    if chosen is None:
        raise InvalidInput(f"run {run_id} is not a run of job {job_id}", field="run_id")
    lin = Lineage(job_id=job.id, run_id=chosen.run_id, dataset=job.dataset_ref or None,
                  environment=job.environment_ref or None)
    vis = check_visibility(visibility) if visibility is not None else None
    version = services.zoo.register(model, card, run_id=chosen.run_id, artifact_path=artifact_path,
                                             lineage=lin, visibility=vis)
    audit.record(session, principal, "model.register", target_type="model", target=str(version.ref),
                 org_id=job.org_id, details={"job_id": job.id, "run_id": chosen.run_id})
    session.commit()
    return version


# -- pulling ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownloadFile:
    path: str
    size: int | None
    url: str  # presigned S3 GET, or the API's streaming route (relative) when S3 cannot be reached directly


@dataclass(frozen=True)
class DownloadManifest:
    ref: str
    version: int
    source: str
    presigned: bool
    files: list[DownloadFile]


def _artifact_root(zoo: ModelZoo, version: ZooVersion) -> str:
    """The ``mlflow-artifacts:/…`` directory holding the version's MLmodel."""
    client = getattr(zoo.backend, "client", None)
    if client is None:
        raise TrackingUnavailable("the registry backend cannot locate artifacts", component="mlflow")
    from haihe.model_zoo.mlflow_backend import translated

    name = version.ref.registered_name
    with translated(f"model {version.ref}"):
        uri = str(client.get_model_version_download_uri(name, str(version.version)))
        if uri.startswith("models:/m-"):
            uri = str(client.get_logged_model(uri.removeprefix("models:/")).artifact_location)
    return uri


def _selected(detail: ZooModelDetail) -> ZooVersion:
    chosen = detail.selected or detail.latest
    if chosen is None:
        raise NotFound(f"model {detail.model.ref} has no versions", field="model")
    return chosen


def download(services: ZooServices, session: Session, principal: Principal, ref: str,
             api_path: str) -> DownloadManifest:
    """The files of the version ``ref`` selects (``org/name``, ``@alias``, ``:N``) with URLs to fetch them.

    When the artifacts sit in the platform's S3 server the URLs are presigned GETs: the bytes never pass through
    the API. Otherwise each URL is the API's streaming route ``api_path?path=…``."""
    detail = visible(services, session, principal, ref)
    version = _selected(detail)
    root = _artifact_root(services.zoo, version)
    if not root.startswith("mlflow-artifacts:/"):
        raise NotFound(f"model {version.ref} is stored at {root.split(':', 1)[0]}:, which this platform cannot serve",
                       field="model")
    rel = root.removeprefix("mlflow-artifacts:").lstrip("/").rstrip("/")
    files = _presigned(services, rel) if services.artifacts is not None else []
    presigned = bool(files)
    if not files:
        files = [DownloadFile(p, size, f"{api_path}?version={version.version}&path={quote(p)}")
                 for p, size in _list_tree(services.tracking, rel)]
    if not any(f.path == "MLmodel" for f in files):
        raise NotFound(f"model {version.ref} has no MLmodel file", field="model")
    return DownloadManifest(str(version.ref), version.version, version.source, presigned, files)


def _presigned(services: ZooServices, rel: str) -> list[DownloadFile]:
    assert services.artifacts is not None
    store = services.artifacts
    prefix = f"{services.artifacts_prefix}/{rel}/"
    try:
        objects = [o for o in store.list(prefix) if not o.is_dir]
        return [DownloadFile(o.key.removeprefix(prefix), o.size,
                             store.presign("GET", o.key, expires=DOWNLOAD_TTL)) for o in objects]
    except HaiheError as exc:  # S3 down or refusing: fall back to streaming through MLflow
        log.info("presigned model download unavailable (%s); streaming through the API", exc)
        return []


def _artifacts_get(tracking: TrackingClient, rel: str, **params: Any) -> httpx.Response:
    url = f"{tracking.url}/api/2.0/mlflow-artifacts/artifacts"
    try:
        response = tracking.http.get(url, params={"path": rel, **params})
    except httpx.TransportError as exc:
        raise TrackingUnavailable(f"model artifacts: the MLflow server is unreachable ({type(exc).__name__})",
                                  component="mlflow") from exc
    if response.status_code >= 500:
        raise TrackingUnavailable(f"model artifacts: MLflow failed ({response.status_code})", component="mlflow")
    return response


def _list_tree(tracking: TrackingClient, rel: str, sub: str = "", depth: int = 0) -> list[tuple[str, int | None]]:
    if depth > 8:
        return []
    response = _artifacts_get(tracking, f"{rel}/{sub}".rstrip("/"))
    if not response.is_success:
        return []
    out: list[tuple[str, int | None]] = []
    for f in response.json().get("files", ()):
        path = f"{sub}/{f['path']}".lstrip("/")
        if f.get("is_dir"):
            out.extend(_list_tree(tracking, rel, path, depth + 1))
        else:
            out.append((path, int(f["file_size"]) if "file_size" in f else None))
    return out


def open_file(services: ZooServices, session: Session, principal: Principal, ref: str,
              path: str) -> tuple[httpx.Client, httpx.Response]:
    """Stream one file of a version from MLflow's artifact proxy (the fallback when S3 cannot be presigned).
    The caller iterates the response and closes both."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise InvalidInput("path must be a relative file path inside the model", field="path")
    detail = visible(services, session, principal, ref)
    version = _selected(detail)
    rel = _artifact_root(services.zoo, version).removeprefix("mlflow-artifacts:").strip("/")
    client = httpx.Client(timeout=httpx.Timeout(30.0, connect=3.0))
    url = f"{services.tracking.url}/api/2.0/mlflow-artifacts/artifacts/{quote(rel)}/{quote(path)}"
    try:
        response = client.send(client.build_request("GET", url), stream=True)
    except httpx.TransportError as exc:
        client.close()
        raise TrackingUnavailable("model artifacts: the MLflow server is unreachable", component="mlflow") from exc
    if not response.is_success:
        response.close()
        client.close()
        if response.status_code >= 500:
            raise TrackingUnavailable(f"model artifacts: MLflow failed ({response.status_code})", component="mlflow")
        raise NotFound(f"{version.ref} has no file {path!r}", field="path")
    return client, response


# -- a job's runs and metrics (the portal's loss curves) -------------------------------------------------------------
def _experiment_ids(tracking: TrackingClient, names: Sequence[str]) -> builtins.list[str]:
    ids = []
    for name in names:
        try:
            response = tracking.http.get(f"{tracking.url}/api/2.0/mlflow/experiments/get-by-name",
                                         params={"experiment_name": name})
        except httpx.TransportError as exc:
            raise TrackingUnavailable(f"experiment {name}: the MLflow server is unreachable",
                                      component="mlflow") from exc
        if response.status_code >= 500:
            raise TrackingUnavailable(f"experiment {name}: MLflow failed ({response.status_code})", component="mlflow")
        if response.is_success:
            ids.append(str(response.json()["experiment"]["experiment_id"]))
    return ids


def experiment_names(org: str, project: str, custom: str | None) -> builtins.list[str]:
    """Where a job's runs live: ``<org>/<project>`` and, with ``tracking.experiment: X``, ``<org>/<project>/X``."""
    names = [f"{org}/{project}"]
    if custom and job_experiment(org, project, custom) not in names:
        names.append(job_experiment(org, project, custom))
    return names


def job_runs(services: ZooServices | None, session: Session, principal: Principal,
             job_id: str) -> builtins.list[RunInfo]:
    """The MLflow runs the job's runtime tagged with its id (newest first); [] before the job has logged, or
    when the platform tracks nothing (``services`` None)."""
    job = jobs.get_job(session, principal, job_id)
    if services is None:
        return []
    project = session.get(Project, job.project_id)
    assert project is not None
    tracking = services.tracking
    custom = (job.spec.get("tracking") or {}).get("experiment")
    ids = _experiment_ids(tracking, experiment_names(job.org.name, project.name, custom))
    if not ids:
        return []
    return tracking.search_runs(ids, job_id=job.id, max_results=MAX_RUNS)


@dataclass(frozen=True)
class RunMetrics:
    run: RunInfo
    histories: dict[str, builtins.list[MetricPoint]]


def job_metrics(services: ZooServices | None, session: Session, principal: Principal, job_id: str,
                keys: Sequence[str] = ()) -> builtins.list[RunMetrics]:
    """Each run of the job with the history of each metric (or only ``keys``)."""
    out = []
    for run in job_runs(services, session, principal, job_id):
        assert services is not None  # runs exist only when tracking is configured
        wanted = [k for k in (keys or sorted(run.metrics)) if k in run.metrics][:MAX_METRIC_KEYS]
        out.append(RunMetrics(run, {k: services.tracking.metric_history(run.run_id, k) for k in wanted}))
    return out
