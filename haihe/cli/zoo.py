"""``haihe models …``: the model zoo — ls, show (card, versions, aliases, lineage), alias, pull, rm, publish."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from haihe.cli.common import JsonOpt, console, open_client, plain, print_json, print_rows

if TYPE_CHECKING:
    from haihe.platform.zoo.schemas import VersionPublic

models_app = typer.Typer(help="The model zoo: search, inspect, alias, publish, pull and remove models.",
                         no_args_is_help=True)
RefArg = Annotated[str, typer.Argument(help="ORG/NAME (show, alias, publish), ORG/NAME[@ALIAS|:VERSION] (pull, rm).")]
_LIST_COLS = ["ref", "task", "visibility", "aliases", "description"]


@models_app.command("ls")
def ls(
    query: Annotated[str | None, typer.Argument(help="Text to search for (name, task, description, use).")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task, e.g. text-embedding.")] = None,
    org: Annotated[str | None, typer.Option(help="Only models of this org.")] = None,
    visibility: Annotated[str | None, typer.Option(help="private | org | public")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the models you may see: your orgs' models and the public zoo."""

    with open_client() as c:
        rows = c.list_models(task=task, q=query, org=org, visibility=visibility)
    if as_json:
        print_json(rows)
        return
    print_rows([{**plain(row), "description": row.description[:60]} for row in rows], _LIST_COLS, False,
               title="models")


@models_app.command("show")
def show(ref: RefArg, as_json: JsonOpt = False) -> None:
    """A model's card, versions, aliases and lineage (job → run → dataset)."""

    with open_client() as c:
        model = c.get_model(ref)
    if as_json:
        print_json(model)
        return
    out = console()
    out.print(f"[bold]{model.ref}[/]  {model.task}  ({model.visibility})", highlight=False)
    out.print(model.description, highlight=False)
    card = model.card or {}
    for key in ("intended_use", "limitations", "license", "owner"):
        if card.get(key):
            out.print(f"[dim]{key}:[/] {card[key]}", highlight=False)
    if card.get("metrics"):
        out.print(f"[dim]metrics:[/] {card['metrics']}", highlight=False)
    print_rows([_version_row(v) for v in model.versions],
               ["version", "aliases", "status", "job", "run", "dataset", "created_at"], False, title="versions")


def _version_row(v: VersionPublic) -> dict[str, Any]:
    lin, job = v.lineage, v.lineage.job
    return {"version": v.version, "aliases": v.aliases, "status": v.status,
            "job": f"{job.name} ({job.state})" if job else lin.job_id, "run": lin.run_id,
            "dataset": lin.dataset, "created_at": v.created_at}


@models_app.command("alias")
def alias(
    ref: RefArg,
    name: Annotated[str, typer.Argument(help="The alias: production, staging or your own word.")],
    version: Annotated[int | None, typer.Argument(help="The version it points at.")] = None,
    remove: Annotated[bool, typer.Option("--rm", help="Remove the alias instead.")] = False,
) -> None:
    """Point an alias at a version (members of the owner org), or remove it with --rm."""

    if version is None and not remove:
        raise typer.BadParameter("give the VERSION, or --rm to remove the alias")
    with open_client() as c:
        c.set_model_alias(ref, name, None if remove else version)
    typer.echo(f"{ref}@{name} removed" if remove else f"{ref}@{name} -> version {version}")


@models_app.command("publish")
def publish(
    ref: RefArg,
    visibility: Annotated[str, typer.Option(help="public (the public zoo), org or private.")] = "public",
) -> None:
    """Publish a model to the public zoo, or take it back (org admins of the owner org)."""

    with open_client() as c:
        model = c.set_model_visibility(ref, visibility)
    typer.echo(f"{model.ref} is now {model.visibility}")


@models_app.command("pull")
def pull(
    ref: RefArg,
    dest: Annotated[Path | None, typer.Option("--to", help="Directory to create (default: ./<name>-v<N>).")] = None,
) -> None:
    """Download a version's MLflow model directory (straight from storage when it can be)."""
    from rich.console import Console
    from rich.progress import Progress

    from haihe.client.zoo import split_ref

    with open_client() as c:
        manifest = c.model_download(ref)
        target = dest or Path(f"{split_ref(ref)[1]}-v{manifest.version}")
        total = sum(f.size or 0 for f in manifest.files)
        with Progress(console=Console(stderr=True)) as bar:
            task = bar.add_task(f"pulling {manifest.ref}", total=total or None)
            done: dict[str, int] = {}

            def progress(name: str, n: int) -> None:
                done[name] = n
                bar.update(task, completed=sum(done.values()))

            pinned = f"{split_ref(ref)[0]}/{split_ref(ref)[1]}:{manifest.version}"
            _, path = c.pull_model(pinned, target, progress=progress)
    typer.echo(f"{manifest.ref} -> {path} ({len(manifest.files)} files)")


@models_app.command("rm")
def rm(
    ref: RefArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a model (ORG/NAME: every version) or one version (ORG/NAME:N): org admins of the owner org."""

    if not yes:
        typer.confirm(f"delete {ref}?", abort=True)
    with open_client() as c:
        c.delete_model(ref)
    typer.echo(f"{ref} deleted")
