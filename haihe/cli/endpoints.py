"""``haihe endpoints …``: create (deploy a zoo model), ls, show, update (rolling), scale, rm, usage.

Right after ``haihe up``: ``haihe endpoints create minilm --model public/minilm-l6@production`` serves the seeded
MiniLM embeddings at ``/v1/embeddings`` (model ``minilm``) and ``/v2/models/minilm/infer``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from haihe.cli.common import JsonOpt, OrgOpt, only_org, open_client, print_rows

if TYPE_CHECKING:
    from haihe.client import HaiheClient
    from haihe.platform.endpoints.schemas import EndpointPublic

endpoints_app = typer.Typer(help="Hosted inference endpoints: deploy zoo models behind the gateway.",
                            no_args_is_help=True)
_COLS = ["org", "name", "state", "model", "model_version", "backend", "min_replicas", "max_replicas", "reason"]


def _split(client: HaiheClient, text: str, org: str | None) -> tuple[str, str]:
    owner, slash, name = text.rpartition("/")
    if slash and org and owner != org:
        raise typer.BadParameter(f"{text!r} names org {owner!r} but --org is {org!r}")
    if slash:
        return owner, name
    return org or only_org(client, "endpoint"), name


def _wait(client: HaiheClient, org: str, name: str, timeout: float) -> EndpointPublic:
    deadline = time.monotonic() + timeout
    ep = client.get_endpoint(org, name)
    while ep.state in ("deploying",) or ep.generation < ep.target_generation:
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
        ep = client.get_endpoint(org, name)
    return ep


@endpoints_app.command()
def create(
    name: Annotated[str, typer.Argument(help="Endpoint name ([ORG/]NAME); clients call it by NAME.")],
    model: Annotated[str, typer.Option("--model", help="Zoo model: org/name@alias or org/name:version.")],
    org: OrgOpt = None,
    scheduler: Annotated[str | None, typer.Option(help="ray (Ray Serve) or slurm (a serving job).")] = None,
    min_replicas: Annotated[int, typer.Option("--min-replicas", min=0)] = 1,
    max_replicas: Annotated[int, typer.Option("--max-replicas", min=0)] = 1,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1)] = 16,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", min=0)] = 5.0,
    cpus: Annotated[float, typer.Option("--cpus", help="CPUs per replica (fractions allowed on Ray).")] = 0.5,
    rate: Annotated[float | None, typer.Option("--rate", help="Per-key requests/s (default: gateway's).")] = None,
    burst: Annotated[int | None, typer.Option("--burst", help="Per-key burst.")] = None,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    gpus: Annotated[int, typer.Option(help="GPUs of the Slurm serving job.")] = 0,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until ready.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a zoo model as an endpoint."""

    with open_client() as c:
        owner, short = _split(c, name, org)
        ep = c.create_endpoint(owner, short, model, scheduler=scheduler, min_replicas=min_replicas,
                               max_replicas=max_replicas, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                               cpus_per_replica=cpus, rate_limit_per_s=rate, rate_limit_burst=burst,
                               partition=partition, gpus=gpus or None)
        if wait:
            ep = _wait(c, owner, short, timeout)
    print_rows(ep, [*_COLS, "infer_path"], as_json)


@endpoints_app.command("ls")
def ls(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """List the endpoints you can see."""

    with open_client() as c:
        rows = c.list_endpoints(org)
    print_rows(rows, _COLS, as_json, title="endpoints")


@endpoints_app.command()
def show(name: str, org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Show one endpoint: state (and why), model version, scaling, batching, rate limit."""

    with open_client() as c:
        ep = c.get_endpoint(*_split(c, name, org))
    extra = ["max_batch_size", "batch_wait_ms", "rate_limit_per_s", "rate_limit_burst", "generation",
             "target_generation", "infer_path"]
    print_rows(ep, [*_COLS, *extra], as_json)


@endpoints_app.command()
def update(
    name: str,
    model: Annotated[str | None, typer.Option("--model", help="New zoo model version (rolling switch).")] = None,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size", min=1)] = None,
    batch_wait_ms: Annotated[float | None, typer.Option("--batch-wait-ms", min=0)] = None,
    rate: Annotated[float | None, typer.Option("--rate")] = None,
    burst: Annotated[int | None, typer.Option("--burst")] = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Roll to a new model version or batching (no failed requests), or change the per-key rate limit."""

    with open_client() as c:
        ep = c.update_endpoint(*_split(c, name, org), model=model, max_batch_size=max_batch_size,
                               batch_wait_ms=batch_wait_ms, rate_limit_per_s=rate, rate_limit_burst=burst)
    print_rows(ep, [*_COLS, "generation", "target_generation"], as_json)


@endpoints_app.command()
def scale(
    name: str,
    min_replicas: Annotated[int, typer.Option("--min-replicas", min=0)],
    max_replicas: Annotated[int, typer.Option("--max-replicas", min=0)],
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the replica bounds (Ray autoscales between them); 0/0 stops the endpoint."""

    with open_client() as c:
        ep = c.scale_endpoint(*_split(c, name, org), min_replicas, max_replicas)
    print_rows(ep, _COLS, as_json)


@endpoints_app.command()
def rm(name: str, org: OrgOpt = None) -> None:
    """Stop and remove an endpoint (its usage stays in the ledger)."""

    with open_client() as c:
        owner, short = _split(c, name, org)
        c.delete_endpoint(owner, short)
    typer.echo(f"removed endpoint {owner}/{short}")


@endpoints_app.command()
def usage(name: str, org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Requests, errors and latency per key (flushed every few seconds)."""

    with open_client() as c:
        data = c.endpoint_usage(*_split(c, name, org))
    if as_json:
        print_rows(data, [], True)
        return
    typer.echo(f"{data['endpoint']}: {data['requests']} requests, {data['errors']} errors since {data['since']}")
    print_rows(data["by_key"], ["key", "requests", "errors", "mean_latency_ms", "max_latency_ms"], False,
               title="by key")
