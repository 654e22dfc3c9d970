"""``haihe datasets …``: push (parallel, resumable, with progress), ls, show, pull, share, visibility, rm.

``push`` remembers an unfinished upload in ``$XDG_CACHE_HOME/haihe/uploads/`` (default ``~/.cache``), keyed by the
API URL, the dataset and the directory, so running the same command again after a crash, a Ctrl-C or a storage
outage sends only the parts that have not arrived.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from haihe.cli.common import JsonOpt, OrgOpt, console, only_org, open_client, print_error, print_json, print_rows

if TYPE_CHECKING:
    from haihe.client import HaiheClient
    from haihe.datasets.store import ReadStream

datasets_app = typer.Typer(help="Versioned datasets on S3: push, list, show, pull, share, remove.",
                           no_args_is_help=True)
_LIST_COLS = ["org", "name", "visibility", "latest_version", "stored_bytes", "licence", "created_by"]


def parse_name(text: str, org: str | None) -> tuple[str | None, str, str | None]:
    """``[org/]name[@vN|@latest]`` → (org, name, version)."""
    base, _, version = text.partition("@")
    owner, slash, name = base.rpartition("/")
    if slash and org and owner != org:
        raise typer.BadParameter(f"{text!r} names org {owner!r} but --org is {org!r}")
    return (owner if slash else org), name, (version or None)


def _owner(client: HaiheClient, org: str | None) -> str:
    return org or only_org(client, "dataset")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "haihe" / "uploads"


def _state_path(url: str, org: str, name: str, root: Path) -> Path:
    key = hashlib.sha256(f"{url}\n{org}\n{name}\n{root.resolve()}".encode()).hexdigest()[:32]
    return _cache_dir() / f"{key}.json"


def _save_state(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


class _CountingTransport:
    """The presigned-URL transport, counting the parts it actually sends (reported after a resume)."""

    def __init__(self, workers: int) -> None:
        from haihe.datasets.presigned import HttpTransport

        self._inner = HttpTransport(pool_size=max(workers, 8))
        self.sent = 0
        self._lock = threading.Lock()

    def put(self, url: str, data: bytes) -> str:
        etag = self._inner.put(url, data)
        with self._lock:
            self.sent += 1
        return etag

    def get(self, url: str) -> ReadStream:
        return self._inner.get(url)


def _bar() -> Any:
    """A transfer progress bar on stderr (stdout stays clean for ``--json``)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True))


@datasets_app.command("push")
def push(
    source: Annotated[Path, typer.Argument(help="Directory to upload as a new version.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name (or ORG/NAME).")],
    org: OrgOpt = None,
    project: Annotated[str | None, typer.Option(help="ORG/PROJECT: takes the org from it (datasets are per org).")]
    = None,
    version_note: Annotated[str, typer.Option(help="A note on this version.")] = "",
    description: Annotated[str, typer.Option(help="Description, when the dataset is created.")] = "",
    licence: Annotated[str, typer.Option(help="Licence, when the dataset is created.")] = "",
    visibility: Annotated[str, typer.Option(help="private | org | public, when the dataset is created.")]
    = "private",
    data_format: Annotated[str, typer.Option("--format", help="Format hint: webdataset, parquet, raw, …")] = "",
    workers: Annotated[int, typer.Option(min=1, max=64, help="Parts uploaded in parallel.")] = 8,
    restart: Annotated[bool, typer.Option(help="Forget an unfinished upload of this directory and start over.")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload a directory as the next version of a dataset (created if needed); resumes an interrupted push."""
    from haihe import errors

    if not source.is_dir():
        print_error(f"{source} is not a directory")
        raise typer.Exit(2)
    if project and not org and "/" in project:
        org = project.split("/", 1)[0]
    with open_client() as c:
        owner, ds_name, pinned = parse_name(name, org)
        if pinned:
            raise typer.BadParameter("push makes the next version; leave out @version", param_hint="--name")
        owner = _owner(c, owner)
        try:
            c.get_dataset(owner, ds_name)
        except errors.NotFound:
            c.create_dataset(owner, ds_name, description=description, licence=licence, visibility=visibility)
        state_path = _state_path(c.url, owner, ds_name, source)
        saved: dict[str, Any] = {}
        if state_path.exists() and not restart:
            try:
                saved = json.loads(state_path.read_text())
            except ValueError:
                saved = {}
        upload_id = saved.get("upload_id")
        if upload_id:
            try:
                c.resume_dataset_upload(owner, ds_name, upload_id)
            except (errors.NotFound, errors.Conflict) as exc:
                typer.echo(f"previous upload {upload_id} cannot be resumed ({exc.message}); starting over", err=True)
                upload_id = None
            else:
                typer.echo(f"resuming upload {upload_id} of {owner}/{ds_name} v{saved.get('version')}", err=True)
        elif restart and state_path.exists():
            state_path.unlink()

        def remember(new_id: str, version: int) -> None:
            _save_state(state_path, {"upload_id": new_id, "version": version, "org": owner, "name": ds_name,
                                     "dir": str(source.resolve()), "url": c.url})

        transport = _CountingTransport(workers)
        with _bar() as bar:
            task = bar.add_task(f"{owner}/{ds_name}", total=None)
            try:
                manifest = c.push_dataset(
                    owner, ds_name, source, upload_id=upload_id, note=version_note, data_format=data_format,
                    workers=workers, progress=lambda done, total: bar.update(task, completed=done, total=total),
                    on_begin=remember, transport=transport)
            except errors.StorageUnavailable as exc:
                raise errors.StorageUnavailable(
                    f"storage unavailable: {exc.message}. Run the same command again to resume.") from None
            except KeyboardInterrupt:
                print_error("interrupted; run the same command again to resume")
                raise typer.Exit(130) from None
        state_path.unlink(missing_ok=True)
        result = {"org": owner, "name": ds_name, "version": manifest.version, "files": len(manifest.files),
                  "total_size": manifest.total_size, "parts_sent": transport.sent, "resumed": bool(upload_id)}
        if as_json:
            typer.echo(json.dumps(result))
        else:
            typer.echo(f"pushed {owner}/{ds_name}@v{manifest.version}: {len(manifest.files)} files, "
                       f"{manifest.total_size} bytes ({transport.sent} parts sent)")


@datasets_app.command("ls")
def ls(org: Annotated[str | None, typer.Option(help="Only datasets of this org.")] = None,
       limit: Annotated[int, typer.Option(min=1, max=200)] = 50, as_json: JsonOpt = False) -> None:
    """List the datasets you can read: your org's, shared with your org, and public ones."""

    with open_client() as c:
        page = c.list_datasets(org, limit=limit)
    print_rows(page.items, _LIST_COLS, as_json, title="datasets")


@datasets_app.command("show")
def show(name: Annotated[str, typer.Argument(help="[ORG/]NAME[@vN]")], org: OrgOpt = None,
         as_json: JsonOpt = False) -> None:
    """Show a dataset: versions, the manifest of one version, shares and lineage."""

    with open_client() as c:
        owner, ds_name, version = parse_name(name, org)
        detail = c.get_dataset(_owner(c, owner), ds_name, version)
    if as_json:
        print_json(detail)
        return
    print_rows(detail, ["org", "name", "visibility", "licence", "latest_version", "stored_bytes", "shares",
                        "description"], False)
    print_rows(detail.versions, ["number", "state", "total_bytes", "files", "created_by", "committed_at", "note"],
               False, title="versions")
    manifest = detail.manifest
    if manifest:
        print_rows(manifest["files"][:50], ["path", "size", "sha256"], False,
                   title=f"v{detail.shown_version}: {len(manifest['files'])} files")
    lineage = detail.lineage
    if lineage.jobs:
        print_rows(lineage.jobs, ["id", "name", "org", "dataset", "state"], False, title="jobs that read it")
    if lineage.models:
        print_rows(lineage.models, ["model", "version"], False, title="models trained on it")
    if lineage.models_note:
        console().print(f"[dim]{lineage.models_note}[/]")


@datasets_app.command("pull")
def pull(name: Annotated[str, typer.Argument(help="[ORG/]NAME[@vN]")],
         dest: Annotated[Path, typer.Argument(help="Directory to download into.")], org: OrgOpt = None,
         workers: Annotated[int, typer.Option(min=1, max=64)] = 8, as_json: JsonOpt = False) -> None:
    """Download a version (default the latest), checking every file's size and sha256."""

    with open_client() as c:
        owner, ds_name, version = parse_name(name, org)
        owner = _owner(c, owner)
        with _bar() as bar:
            task = bar.add_task(f"{owner}/{ds_name}", total=None)
            manifest = c.pull_dataset(owner, ds_name, dest, version or "latest", workers=workers,
                                      progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        typer.echo(json.dumps({"org": owner, "name": ds_name, "version": manifest.version, "dest": str(dest),
                               "files": len(manifest.files), "total_size": manifest.total_size}))
    else:
        typer.echo(f"pulled {owner}/{ds_name}@v{manifest.version} into {dest}: {len(manifest.files)} files, "
                   f"{manifest.total_size} bytes")


@datasets_app.command("share")
def share(name: Annotated[str, typer.Argument(help="[OWNER/]NAME")],
          target: Annotated[str, typer.Option("--org", help="The org that may read it.")],
          revoke: Annotated[bool, typer.Option(help="Take the share back.")] = False, as_json: JsonOpt = False) -> None:
    """Let every member of another org read a dataset (owner org admins)."""

    with open_client() as c:
        owner, ds_name, _ = parse_name(name, None)
        owner = _owner(c, owner)
        detail = (c.unshare_dataset if revoke else c.share_dataset)(owner, ds_name, target)
    print_rows(detail, ["org", "name", "visibility", "shares"], as_json)


@datasets_app.command("visibility")
def visibility(name: Annotated[str, typer.Argument(help="[ORG/]NAME")],
               value: Annotated[str, typer.Argument(help="private | org | public")], org: OrgOpt = None,
               as_json: JsonOpt = False) -> None:
    """Set who may read a dataset (owner org admins)."""

    with open_client() as c:
        owner, ds_name, _ = parse_name(name, org)
        print_rows(c.set_dataset_visibility(_owner(c, owner), ds_name, value), ["org", "name", "visibility"], as_json)


@datasets_app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="[ORG/]NAME")], org: OrgOpt = None,
       yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False, as_json: JsonOpt = False) -> None:
    """Delete a dataset: it disappears at once; its data is removed after the retention window."""

    with open_client() as c:
        owner, ds_name, _ = parse_name(name, org)
        owner = _owner(c, owner)
        if not yes:
            typer.confirm(f"delete dataset {owner}/{ds_name}?", abort=True)
        print_rows(c.delete_dataset(owner, ds_name), ["org", "name", "deleted_at", "purge_after"], as_json)
