"""``haihe submit`` and ``haihe jobs …``: pack and upload code with a progress bar, submit, follow state and logs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from haihe.cli.common import JsonOpt, open_client, plain, print_error, print_json, print_rows

if TYPE_CHECKING:
    from haihe.client import HaiheClient

jobs_app = typer.Typer(help="List, inspect, follow, cancel and resubmit jobs.", no_args_is_help=True)
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}
_JOB_COLS = ["id", "name", "org", "project", "user", "scheduler", "state", "reason", "created_at"]


def _resolve_project(client: HaiheClient, project: str | None) -> tuple[str, str]:
    if not project:
        raise typer.BadParameter("name the project: `project:` in the spec or --project ORG/PROJECT")
    if "/" in project:
        org, _, name = project.partition("/")
        return org, name
    orgs = [m.org for m in client.whoami().user.memberships]
    if len(orgs) != 1:
        raise typer.BadParameter(f"you belong to {len(orgs)} orgs; write the project as ORG/{project}")
    return orgs[0], project


def _upload_workdir(client: HaiheClient, org: str, project: str, workdir: Path) -> str:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from haihe.workdir import pack

    # progress on stderr: stdout carries only the answer, so `--json | jq` works
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(f"packing {workdir}", total=None)
        bundle = pack(workdir, progress=lambda done, total: bar.update(task, completed=done, total=total))
        bar.update(task, description=f"packed {bundle.files} files", completed=bundle.raw_bytes,
                   total=bundle.raw_bytes)
        upload = client.create_code_upload(org, project, len(bundle.data), bundle.sha256)
        up = bar.add_task("uploading code", total=len(bundle.data))
        client.upload_bytes(upload.upload_url, bundle.data, progress=lambda n: bar.update(up, completed=n))
    return upload.code_uri


def submit(
    spec_file: Annotated[Path, typer.Argument(help="The job spec (YAML).", exists=False)],
    project: Annotated[str | None, typer.Option(help="ORG/PROJECT (default: the spec's `project`).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow state, then logs, until it ends.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job: validate the spec, pack and upload its workdir, submit, optionally follow it."""
    from haihe.errors import HaiheError
    from haihe.jobs.spec import load_spec

    try:
        spec = load_spec(spec_file)
    except HaiheError as exc:
        print_error(exc.message)
        raise typer.Exit(2) from None
    raw = spec.model_dump(mode="json", exclude_none=True, by_alias=True)
    raw.pop("workdir", None)
    with open_client() as c:
        org, proj = _resolve_project(c, project or spec.project)
        raw.pop("project", None)
        code_uri = None
        if spec.workdir:
            workdir = (spec_file.parent / spec.workdir).resolve()
            code_uri = _upload_workdir(c, org, proj, workdir)
        job = c.submit_job(org, proj, raw, code_uri=code_uri, idempotency_key=str(uuid.uuid4()))
        if as_json and not follow:
            print_json(job)
            return
        print_rows(job, ["id", "name", "scheduler", "native_id", "state", "reason"], False)
        if follow:
            raise typer.Exit(_follow(c, job.id))


def _follow(client: HaiheClient, job_id: str) -> int:
    from rich.console import Console

    console = Console(stderr=True)  # status lines on stderr; stdout is the job's log
    last_state = ""
    with console.status("waiting for the job to start…") as status:
        while True:
            job = client.get_job(job_id)
            if job.state != last_state or job.reason:
                pos = f", position {job.queue_position}" if job.queue_position else ""
                status.update(f"{job.state} {job.reason or ''}{pos}")
                last_state = job.state
            if job.state == "RUNNING" or job.state in TERMINAL:
                break
            time.sleep(1.0)
    console.print(f"[bold]{job.state}[/] on {', '.join(job.nodes or []) or job.scheduler}")
    state = _stream_logs(client, job_id)
    console.print(f"[bold]{state}[/]")
    return 0 if state == "SUCCEEDED" else 1


def _stream_logs(client: HaiheClient, job_id: str) -> str:
    offset = 0
    while True:
        chunk = client.job_logs(job_id, offset)
        if chunk.data:
            typer.echo(chunk.data, nl=False)
        offset = chunk.offset
        job = client.get_job(job_id)
        if job.state in TERMINAL:
            # one last read: the scheduler may have flushed more after the state changed
            tail = client.job_logs(job_id, offset)
            if tail.data:
                typer.echo(tail.data, nl=False)
            return job.state
        if not chunk.data:
            time.sleep(1.0)


@jobs_app.command("ls")
def jobs_ls(
    org: Annotated[str | None, typer.Option()] = None,
    project: Annotated[str | None, typer.Option()] = None,
    state: Annotated[list[str] | None, typer.Option(help="Filter by state (repeatable).")] = None,
    mine: Annotated[bool, typer.Option(help="Only jobs I submitted.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first (keyset pages: pass --cursor to continue)."""

    with open_client() as c:
        page = c.list_jobs(org, project, state, mine, cursor, limit)
    if as_json:
        print_json(page)
        return
    print_rows(page.items, _JOB_COLS, False)
    if page.next_cursor:
        typer.echo(f"more: --cursor {page.next_cursor}")


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    """A job and its timeline."""

    with open_client() as c:
        job = c.get_job(job_id)
        events = c.job_events(job_id)
    if as_json:
        print_json({**plain(job), "events": plain(events)})
        return
    print_rows(job, [*_JOB_COLS, "native_id", "nodes", "exit_code", "elapsed_s", "environment_ref"], False)
    print_rows(events, ["at", "kind", "state", "message"], False, title="timeline")


@jobs_app.command("logs")
def jobs_logs(job_id: str, follow: Annotated[bool, typer.Option("--follow", "-f")] = False) -> None:
    """Print a job's output; with -f keep following until it ends."""

    with open_client() as c:
        if follow:
            state = _stream_logs(c, job_id)
            raise typer.Exit(0 if state == "SUCCEEDED" else 1)
        offset = 0
        while True:
            chunk = c.job_logs(job_id, offset)
            typer.echo(chunk.data, nl=False)
            if not chunk.data or chunk.offset == offset:
                break
            offset = chunk.offset


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a job."""

    with open_client() as c:
        job = c.cancel_job(job_id)
    typer.echo(f"cancel requested for {job.id} ({job.state})")


@jobs_app.command("resubmit")
def jobs_resubmit(job_id: str) -> None:
    """Submit a job again with the same spec and code."""

    with open_client() as c:
        job = c.resubmit_job(job_id)
    typer.echo(f"resubmitted as {job.id} ({job.state})")
