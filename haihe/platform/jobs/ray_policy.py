"""Which Ray cluster an org's job goes to, and whether it may run its own code there (docs/security.md).

Ray jobs share one Unix account per cluster and are kept apart only by the per-job sandbox, so a site may let only
some orgs run their own code on the shared cluster (``ray_shared_code_orgs``; the others run recipes only) and may
give an org a Ray cluster of its own (``ray_org_clusters``: org → scheduler name), which no other org may use.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from haihe.errors import InvalidInput, PermissionDenied
from haihe.jobs.spec import JobSpec
from haihe.platform.settings import Settings


def is_ray(url: str) -> bool:
    return urlsplit(url).scheme == "ray"


def shared_code_allowed(settings: Settings, org: str) -> bool:
    allowed = {o.strip() for o in settings.ray_shared_code_orgs.split(",") if o.strip()}
    return "*" in allowed or org in allowed


def runs_own_code(spec: JobSpec) -> str | None:
    """The spec field that makes it run the submitter's code (not a built-in recipe), or None."""
    if spec.workdir:
        return "workdir"
    if spec.entrypoint:
        return "entrypoint"
    if spec.environment is not None:  # packages of its choosing run inside the recipe's process
        return "environment"
    return None


def route(settings: Settings, scheduler: str, org: str, spec: JobSpec) -> str:
    """The scheduler name the job goes to; PermissionDenied (403, naming the field) when it may not run there."""
    owners = {name: owner for owner, name in settings.ray_org_clusters.items()}
    owner = owners.get(scheduler)
    if owner is not None and owner != org:
        raise PermissionDenied(f"scheduler {scheduler!r} is a Ray cluster dedicated to another org", field="scheduler")
    if not is_ray(settings.schedulers.get(scheduler, "")):
        return scheduler
    if spec.environment is not None and spec.environment.image:
        raise InvalidInput("container images run on Slurm schedulers; on Ray they are not supported yet (use "
                           "environment.pip, or a Slurm scheduler)", field="environment.image")
    own = settings.ray_org_clusters.get(org)
    if own is not None:
        return own  # the org's own cluster: its code runs there, never on the shared one
    field = runs_own_code(spec)
    if field is not None and not shared_code_allowed(settings, org):
        raise PermissionDenied(
            f"org {org!r} may run only recipes on the shared Ray cluster {scheduler!r} (its own code needs a "
            "Slurm scheduler or a Ray cluster of its own; ask the platform admins)",
            field=field,
        )
    return scheduler
