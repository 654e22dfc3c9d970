"""What every ``haihe`` command shares: the client from saved credentials (API errors as one line and an exit
code), tables or JSON on stdout, errors on stderr, the common options and the ``[ORG/]NAME`` rule for owned things.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel

    from haihe.client import HaiheClient

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def console() -> Any:
    from rich.console import Console

    return Console()


def print_error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)


@contextmanager
def open_client(url: str | None = None) -> Iterator[HaiheClient]:
    """A client from saved credentials; API errors become one clear line and exit code 1 (2 for bad input)."""
    from haihe import errors
    from haihe.client import HaiheClient

    try:
        with HaiheClient(url) as client:
            yield client
    except errors.HaiheError as exc:
        where = f" [{exc.field}]" if exc.field else ""
        print_error(f"{exc.message}{where}")
        raise typer.Exit(2 if isinstance(exc, errors.InvalidInput) else 1) from None


def plain(value: Any) -> Any:
    """An SDK answer as JSON-ready data: models (and lists of them) as the API wrote them, dicts as they are."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(plain(value), indent=2, default=str))


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (what a table shows; --json keeps the number)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def print_rows(rows: BaseModel | dict[str, Any] | Sequence[BaseModel | dict[str, Any]], columns: Sequence[str],
               as_json: bool, title: str | None = None) -> None:
    data = plain(rows)
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    items = [data] if isinstance(data, dict) else list(data)
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for item in items:
        table.add_row(*[cell(item.get(col)) for col in columns])
    console().print(table)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)




OrgOpt = Annotated[str | None, typer.Option("--org", help="Owner org (default: your only org, or NAME as ORG/NAME).")]


def only_org(client: HaiheClient, what: str) -> str:
    """The caller's one org, for a ``NAME`` given without ``ORG/``; more than one is a clear error."""
    orgs = [m.org for m in client.whoami().user.memberships]
    if len(orgs) != 1:
        raise typer.BadParameter(f"you belong to {len(orgs)} orgs; pass --org or write the {what} as ORG/NAME")
    return str(orgs[0])
