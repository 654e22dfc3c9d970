"""``haihe admin quota …``, ``haihe admin usage report``, ``haihe admin orgs suspend|resume`` and ``haihe quota``."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer

from haihe.cli.common import JsonOpt, open_client, print_rows

quota_app = typer.Typer(help="Quotas: GPU/CPU-hours, storage, requests, concurrency.", no_args_is_help=True)
usage_app = typer.Typer(help="Usage reports from the ledger.", no_args_is_help=True)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*$", re.IGNORECASE)
_BAL_COLS = ["resource", "limit", "used", "reserved", "left", "fraction", "warning"]


def parse_size(text: str) -> int:
    """'500G', '1.5T', '1024' → bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size like 500G or 2T")
    return int(float(m.group(1)) * 1024 ** " kmgtp".index((m.group(2) or " ").lower()))


def _scope(target: str) -> tuple[str, str | None]:
    org, _, project = target.partition("/")
    return org, project or None


def _show(q: dict[str, Any], as_json: bool) -> None:

    if as_json:
        typer.echo(json.dumps(q, indent=2))
        return
    print_rows(q["balances"], _BAL_COLS, False, title=f"{q['scope']} — {q['period']} (org {q['org_status']})")
    if q["events"]:
        print_rows(q["events"], ["at", "resource", "level", "message"], False, title="quota events")


@quota_app.command("set")
def quota_set(
    target: Annotated[str, typer.Argument(help="ORG or ORG/PROJECT")],
    gpu_hours: Annotated[float | None, typer.Option(min=0)] = None,
    cpu_hours: Annotated[float | None, typer.Option(min=0)] = None,
    storage: Annotated[str | None, typer.Option(help="e.g. 500G, 2T")] = None,
    requests: Annotated[int | None, typer.Option(min=0, help="Inference requests per month.")] = None,
    max_jobs: Annotated[int | None, typer.Option(min=0)] = None,
    max_gpus: Annotated[int | None, typer.Option(min=0)] = None,
    period: Annotated[str | None, typer.Option(help="monthly | none")] = None,
    warn: Annotated[float | None, typer.Option(help="Warning level, e.g. 0.8")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set limits of an org (platform admins) or of a project inside it (org admins)."""

    limits: dict[str, Any] = {"gpu_hours": gpu_hours, "cpu_hours": cpu_hours, "requests_per_month": requests,
                              "max_jobs": max_jobs, "max_gpus": max_gpus, "period": period, "warn_fraction": warn}
    if storage is not None:
        limits["storage_bytes"] = parse_size(storage)
    limits = {k: v for k, v in limits.items() if v is not None}
    if not limits:
        raise typer.BadParameter("give at least one limit (see --help)")
    org, project = _scope(target)
    with open_client() as c:
        _show(c.set_quota(org, project, **limits), as_json)


@quota_app.command("show")
def quota_show(target: Annotated[str, typer.Argument(help="ORG or ORG/PROJECT")],
               month: Annotated[str | None, typer.Option(help="YYYY-MM (default: this month)")] = None,
               as_json: JsonOpt = False) -> None:
    """Limits, use, reservations and what is left."""

    org, project = _scope(target)
    with open_client() as c:
        _show(c.get_quota(org, project, month), as_json)


def _sync(apply: bool, scheduler: str, as_json: bool) -> None:

    with open_client() as c:
        report = c.quota_sync(scheduler, apply)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if report["drift"]:
        print_rows(report["drift"], ["account", "slurm", "platform"], False,
               title="changed" if apply else "drift (run `haihe admin quota sync` to fix)")
    typer.echo(f"in sync: {len(report['in_sync'])}; created: {len(report['created'])}; "
               f"updated: {len(report['updated'])}")
    if not apply and report["drift"]:
        raise typer.Exit(1)


@quota_app.command("sync")
def quota_sync(scheduler: Annotated[str, typer.Option(help="The Slurm scheduler's name.")] = "slurm",
               as_json: JsonOpt = False) -> None:
    """Push quotas into Slurm's accounting as GrpTRESMins / GrpTRES / GrpJobs (the second wall)."""
    _sync(True, scheduler, as_json)


@quota_app.command("check")
def quota_check(scheduler: Annotated[str, typer.Option(help="The Slurm scheduler's name.")] = "slurm",
                as_json: JsonOpt = False) -> None:
    """Report differences between the platform's quotas and Slurm's associations (exit 1 on drift)."""
    _sync(False, scheduler, as_json)


@usage_app.command("report")
def usage_report(
    month: Annotated[str, typer.Option(help="YYYY-MM")],
    org: Annotated[str | None, typer.Option()] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
) -> None:
    """Usage per org, project, user and resource; training and inference side by side."""

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    with open_client() as c:
        data = c.usage_report(month, org, "csv" if fmt == "csv" else "json")
    if fmt == "csv":
        typer.echo(data, nl=False)
    elif fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        print_rows(data, ["org", "project", "user", "source", "resource", "amount", "unit"], False, title=month)


def my_quota(project: Annotated[str | None, typer.Option(help="ORG/PROJECT; default: each of your orgs.")] = None,
             as_json: JsonOpt = False) -> None:
    """Your balances: what you may still use."""

    with open_client() as c:
        if project:
            org, proj = _scope(project)
            _show(c.get_quota(org, proj), as_json)
            return
        for m in c.whoami().user.memberships:
            _show(c.get_quota(m.org), as_json)
