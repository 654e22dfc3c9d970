"""Page: submit a job — a form in sbatch words (or the YAML editor), partition limits and free resources, the
estimated maximum charge against the remaining quota, and every refusal shown next to the field it concerns."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from haihe.errors import HaiheError, InvalidInput, QuotaExceeded
from haihe.names import LAUNCHERS, RECIPES
from haihe.platform.identity import service as identity
from haihe.platform.jobs import service as jobs
from haihe.platform.jobs.code import MAX_CODE_BYTES
from haihe.platform.quotas import ledger as quotas
from haihe.platform.quotas.ledger import job_need
from haihe.portal.forms import (
    DEFAULTS,
    SOURCES,
    FormErrors,
    errors_from,
    form_from_spec,
    spec_from_form,
    walltime_minutes,
)
from haihe.portal.summaries import describe_all, partition_table
from haihe.portal.web import Page, PortalRoute, SignedIn, redirect
from haihe.schedulers.base import Launch, Resources

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

MAX_TARGETS = 40  # org/project choices listed in the form (each needs its balances)


def _targets(page: Page) -> list[str]:
    s, p = page.session, page.principal
    out: list[str] = []
    for org in identity.list_orgs(s, p):
        if org.status != "active" or (not p.is_platform_admin and org.id not in p.roles):
            continue
        out.extend(f"{org.name}/{proj.name}" for proj in identity.list_projects(s, p, org.name)
                   if proj.status == "active")
        if len(out) >= MAX_TARGETS:
            break
    return out[:MAX_TARGETS]


def _left(page: Page, target: str) -> dict[str, float | None]:
    """What is left of the GPU- and CPU-hour quotas that a job in ``target`` draws on (org and project)."""
    org, _, project = target.partition("/")
    left: dict[str, float | None] = {"gpu_hours": None, "cpu_hours": None}
    for proj in (None, project):
        try:
            shown = quotas.show(page.session, page.principal, org, proj)
        except HaiheError:
            continue
        for b in shown["balances"]:
            if b["resource"] in left and b["left"] is not None:
                cur = left[b["resource"]]
                left[b["resource"]] = b["left"] if cur is None else min(cur, b["left"])
    return left


def estimate(values: dict[str, str]) -> dict[str, float] | None:
    """The most the job can be charged (every GPU and CPU for the whole walltime), as the quota gate reserves it."""
    minutes = walltime_minutes(values.get("time_limit", ""))
    try:
        res = Resources(nodes=int(values["nodes"]), tasks_per_node=int(values["tasks_per_node"]),
                        cpus_per_task=int(values["cpus_per_task"]), gpus_per_node=int(values["gpus_per_node"]),
                        time_limit_min=minutes or 0)
    except (KeyError, ValueError):
        return None
    if minutes is None:
        return None
    need = job_need(Launch(tag="estimate", name="estimate", command=("true",), resources=res))
    return {"gpu_hours": round(need["gpu_s"] / 3600, 4), "cpu_hours": round(need["cpu_s"] / 3600, 4)}


def scheduler_of_partition(values: dict[str, str], parts: dict[str, dict[str, Any]], default: str) -> str:
    """The scheduler follows the partition: a partition only one scheduler has (the form listed Slurm's partitions
    while Ray was selected) runs there, whatever the scheduler field said."""
    chosen = values.get("scheduler") or default
    partition = values.get("partition")
    if not partition or f"{chosen}/{partition}" in parts:
        return chosen
    owners = sorted({p["scheduler"] for p in parts.values() if p["partition"] == partition})
    return owners[0] if len(owners) == 1 else chosen


def _check_partition(values: dict[str, str], parts: dict[str, dict[str, Any]], errors: FormErrors,
                     page: Page) -> None:
    """Refuse at the field what the partition can never run (more nodes or walltime than it has)."""
    info = parts.get(f"{values.get('scheduler') or page.ctx.settings.default_scheduler}/{values.get('partition')}")
    if info is None:
        return
    if values["nodes"].isdigit() and int(values["nodes"]) > info["nodes"] > 0:
        errors.add("nodes", page.t("form.err.nodes_over", max=info["nodes"], partition=info["partition"]))
    minutes = walltime_minutes(values["time_limit"])
    if minutes is not None and info["max_time_min"] and minutes > info["max_time_min"]:
        errors.add("time_limit", page.t("form.err.walltime_over", max=info["max_time_min"],
                                        partition=info["partition"]))


def _render(page: Page, values: dict[str, str], errors: FormErrors, mode: str, spec_yaml: str,
            status: int = 200) -> HTMLResponse:
    targets = _targets(page)
    if not values.get("target") and targets:
        values["target"] = targets[0]
    schedulers = sorted(page.ctx.settings.schedulers)
    clusters = describe_all(page.ctx, schedulers)
    parts = partition_table(clusters)
    lefts = {t: _left(page, t) for t in targets}
    return page.render("job_new.html", status, nav="new", values=values, errors=errors, mode=mode,
                       spec_yaml=spec_yaml, targets=targets, schedulers=schedulers,
                       default_scheduler=page.ctx.settings.default_scheduler, partitions=parts,
                       clusters=clusters, lefts=lefts, estimate=estimate(values), sources=SOURCES,
                       launchers=LAUNCHERS, recipes=RECIPES, code_max_bytes=MAX_CODE_BYTES)


def _yaml_of(spec: dict[str, Any]) -> str:
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_form(
    page: SignedIn,
    mode: Annotated[str, Query(pattern="^(form|yaml)$")] = "form",
    copy: Annotated[str, Query(alias="from", max_length=64)] = "",
    recipe: Annotated[str, Query(max_length=32)] = "",
    model: Annotated[str, Query(max_length=200)] = "",
    dataset: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    values = dict(DEFAULTS)
    if copy:
        job = jobs.get_job(page.session, page.principal, copy)
        values = form_from_spec(dict(job.spec))
        values["target"] = f"{job.org.name}/{job.project.name}"
    if recipe in SOURCES:
        values["source"] = recipe
    if model:
        values["model"] = model
    if dataset:
        values["dataset"] = dataset
    spec = spec_from_form(values, FormErrors(), page.t)
    return _render(page, values, FormErrors(), mode, _yaml_of(spec))


@router.post("/jobs/new", response_class=HTMLResponse)
def submit_job(page: SignedIn) -> Response:
    mode = "yaml" if page.field("mode") == "yaml" else "form"
    values = {k: page.field(k, v) for k, v in DEFAULTS.items()}
    errors = FormErrors()
    target = values["target"]
    org, _, project = target.partition("/")
    if not org or not project:
        errors.add("target", page.t("form.err.target"))
    spec_yaml = page.field("spec_yaml")
    code_uri = values["code_uri"] or None
    if mode == "yaml":
        try:
            raw = yaml.safe_load(spec_yaml) if spec_yaml else None
        except yaml.YAMLError as exc:
            errors.add("spec_yaml", page.t("form.err.yaml", detail=str(exc).splitlines()[0]))
            raw = None
        if raw is None and not errors:
            errors.add("spec_yaml", page.t("form.err.yaml_empty"))
    else:
        parts = partition_table(describe_all(page.ctx, sorted(page.ctx.settings.schedulers)))
        values["scheduler"] = scheduler_of_partition(values, parts, page.ctx.settings.default_scheduler)
        raw = spec_from_form(values, errors, page.t)
        spec_yaml = _yaml_of(raw)
        _check_partition(values, parts, errors, page)
    if errors:
        return _render(page, values, errors, mode, spec_yaml, 422)
    try:
        if not isinstance(raw, dict):
            raise InvalidInput("a job spec must be a mapping of fields", field="spec")
        job = jobs.submit(page.ctx, page.session, page.principal, org, project, raw, code_uri=code_uri)
    except HaiheError as exc:
        page.session.rollback()  # a refused submit leaves nothing behind (no job row, no reservation)
        errors = errors_from(exc, page.t, with_path=mode == "yaml")
        if isinstance(exc, QuotaExceeded):
            errors.by_field.setdefault("_quota", []).append(page.t("form.err.quota"))
        if mode == "yaml":  # the editor has one place for messages: keep the field path in each
            errors = FormErrors({"spec_yaml": [m for msgs in errors.by_field.values() for m in msgs]})
        return _render(page, values, errors, mode, spec_yaml, exc.status if exc.status < 500 else 503)
    return redirect(f"/jobs/{job.id}?done=submitted")
