"""The zoo's catalogue as a caller may see it: the zoo's clients (``ZooServices``, one a process, built on first use
through the context), the ONE visibility rule, and the reads that apply it. Everything that needs a job (lineage,
registering a job's model, a job's runs) is in ``haihe.platform.zoo.service``, which builds on this; the jobs
service uses this module to check a job's base model at admission, so the two never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from haihe.datasets.store import ObjectStore
from haihe.errors import InvalidInput, NotFound, Unsupported
from haihe.model_zoo import ModelZoo, ZooModel, ZooModelDetail, ZooRef
from haihe.model_zoo.registry import check_visibility
from haihe.model_zoo.tracking import TrackingClient
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.models import Org
from haihe.platform.settings import Settings

MLFLOW_ARTIFACTS_BUCKET = "mlflow"  # where the embedded MLflow server proxies artifacts (haihe.cluster.stack)
MLFLOW_ARTIFACTS_PREFIX = "artifacts"


@dataclass
class ZooServices:
    """The zoo's outside world: the registry (library), MLflow's REST API, and S3 for presigned downloads."""

    zoo: ModelZoo
    tracking: TrackingClient
    artifacts: ObjectStore | None = None  # the bucket MLflow proxies artifacts into; None: stream through the API
    artifacts_prefix: str = MLFLOW_ARTIFACTS_PREFIX

    @classmethod
    def from_settings(cls, settings: Settings) -> ZooServices:
        if not settings.mlflow_url:  # a setting, not an outage: 422 (an outage of a configured MLflow is a 503)
            raise Unsupported("this platform has no MLflow server configured (HAIHE_MLFLOW_URL): no zoo or tracking",
                              field="mlflow_url")
        store: ObjectStore | None = None
        if settings.s3_endpoint:
            from haihe.datasets.store import MinioStore

            store = MinioStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                               MLFLOW_ARTIFACTS_BUCKET, region=settings.s3_region)
        cache = settings.home / "cache" / "models"
        return cls(zoo=ModelZoo.connect(settings.mlflow_url, cache_dir=cache),
                   tracking=TrackingClient(settings.mlflow_url), artifacts=store)


def services(ctx: PlatformContext) -> ZooServices:
    """The process's zoo clients, built on first use (Unsupported without MLflow; tests ``ctx.provide`` fakes)."""
    return ctx.service("zoo", lambda: ZooServices.from_settings(ctx.settings))


# -- who may see what: the ONE rule ----------------------------------------------------------------------------------
def org_ids(session: Session, names: set[str]) -> dict[str, int]:
    if not names:
        return {}
    return {name: org_id for name, org_id in session.execute(select(Org.name, Org.id).where(Org.name.in_(names)))}


def can_see(principal: Principal, model: ZooModel, org_id: int | None) -> bool:
    """The zoo's visibility rule (``org_id`` is the owner org's row id, None when the org is not on this platform)."""
    if model.visibility == "public":
        return True
    if principal.is_platform_admin and principal.bound_org_id is None:
        return True
    return org_id is not None and principal.can_see_org(org_id)


def visible(services: ZooServices, session: Session, principal: Principal, ref: ZooRef | str) -> ZooModelDetail:
    """The model (and the version a pinned ref selects) if the caller may see it; NotFound otherwise."""
    ref = ref if isinstance(ref, ZooRef) else ZooRef.parse(ref)
    zoo_model = services.zoo
    try:
        detail = zoo_model.get(ref)
    except NotFound:
        raise NotFound(f"model {ref} not found", field="model") from None
    if not can_see(principal, detail.model, org_ids(session, {ref.org}).get(ref.org)):
        raise NotFound(f"model {ref} not found", field="model")
    return detail


# -- reading -------------------------------------------------------------------------------------------------------
def list_models(
    services: ZooServices, session: Session,
    principal: Principal,
    *,
    task: str | None = None,
    text: str | None = None,
    org: str | None = None,
    visibility: str | None = None,
) -> list[ZooModel]:
    """Models the caller may see, filtered by task, text (ref, task, description, intended use, owner), org."""
    if text is not None and len(text) > 200:
        raise InvalidInput("search text is longer than 200 characters", field="q")
    vis = check_visibility(visibility) if visibility is not None else None
    models = services.zoo.list(org=org, task=task, text=text or None, visibility=vis)
    ids = org_ids(session, {m.org for m in models})
    return [m for m in models if can_see(principal, m, ids.get(m.org))]


def get_model(services: ZooServices, session: Session, principal: Principal, ref: str) -> ZooModelDetail:
    return visible(services, session, principal, ref)


