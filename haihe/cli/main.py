"""The ``haihe`` command line.

Everything but local bring-up goes through the REST API (``haihe.client``), so admin acts work remotely and land in
the audit log. ``haihe up`` and ``haihe cluster …`` act on this machine. Heavy modules are imported inside the
commands, so ``haihe --help`` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from haihe.cli.common import JsonOpt, console, human_bytes, open_client, plain, print_json, print_rows
from haihe.cli.datasets import datasets_app
from haihe.cli.endpoints import endpoints_app
from haihe.cli.jobs import jobs_app
from haihe.cli.jobs import submit as submit_job
from haihe.cli.quota import my_quota, quota_app, usage_app
from haihe.cli.zoo import models_app

if TYPE_CHECKING:
    from haihe.client import HaiheClient

app = typer.Typer(name="haihe", help="Haihe: AI supercomputing as a service.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
admin = typer.Typer(help="Administer orgs, projects, users, API keys and the audit log.", no_args_is_help=True)
orgs = typer.Typer(help="Organisations (platform admins).", no_args_is_help=True)
projects = typer.Typer(help="Projects inside an org (org admins).", no_args_is_help=True)
users = typer.Typer(help="Users and service accounts (org admins).", no_args_is_help=True)
keys = typer.Typer(help="API keys: created once-shown, listed by prefix, revoked.", no_args_is_help=True)
cluster = typer.Typer(help="The compute side: its status (any user), and the local Slurm cluster's bring-up.",
                      no_args_is_help=True)


def _mount(parent: typer.Typer, **groups: typer.Typer) -> None:
    """Add each command group under ``parent`` by its keyword (the command's name), in the order given."""
    for name, group in groups.items():
        parent.add_typer(group, name=name)


_mount(app, admin=admin, jobs=jobs_app, datasets=datasets_app, models=models_app, endpoints=endpoints_app,
       cluster=cluster)
_mount(admin, orgs=orgs, projects=projects, users=users, keys=keys, quota=quota_app, usage=usage_app)
app.command("submit")(submit_job)
app.command("quota")(my_quota)


def _memberships(user: dict[str, Any]) -> dict[str, Any]:
    return {**user, "orgs": [f"{m['org']}:{m['role']}" for m in user.get("memberships", [])]}


# -- top level -----------------------------------------------------------------------------------------------
@app.command()
def version() -> None:
    """Print Haihe's version."""
    from haihe import __version__

    typer.echo(__version__)


@app.command()
def up(
    home: Annotated[Path | None, typer.Option(help="State directory (default $HAIHE_HOME or ~/.local/share/haihe).")]
    = None,
    port: Annotated[int, typer.Option(help="Port of the API and portal.")] = 8000,
    port_base: Annotated[int, typer.Option(help="First of the ports the local services use.")] = 20000,
    ray: Annotated[bool, typer.Option(help="Start a local Ray head (the default scheduler).")] = True,
    slurm: Annotated[bool, typer.Option(help="Also bring up the local Slurm cluster and register it.")] = False,
    detach: Annotated[bool, typer.Option(help="Start everything and return (stop with `haihe down`).")] = False,
    api_workers: Annotated[int, typer.Option(min=1, max=16, help="API processes sharing the port: one crashing "
                                             "leaves the others answering while it restarts.")] = 2,
    supervise_only: Annotated[bool, typer.Option(hidden=True, help="Watch a running stack (what --detach leaves)."
                                                 )] = False,
) -> None:
    """Run the embedded stack on this machine: S3 server, MLflow, Ray head, API and portal."""
    from haihe.embedded import EmbeddedOptions, run_embedded

    options = EmbeddedOptions(home=home, api_port=port, port_base=port_base, with_ray=ray, with_slurm=slurm,
                              detach=detach, supervise_only=supervise_only, api_workers=api_workers)
    sys.exit(run_embedded(options, echo=console().print))


@app.command()
def down(
    home: Annotated[Path | None, typer.Option(help="State directory of the stack to stop.")] = None,
) -> None:
    """Stop an embedded stack started with `haihe up --detach`."""
    from haihe.embedded import stop_embedded

    stop_embedded(home, echo=console().print)


@app.command()
def status(url: Annotated[str | None, typer.Option(help="API URL.")] = None, as_json: JsonOpt = False) -> None:
    """Readiness of the platform and each component it depends on."""
    from haihe.cluster.supervisor import read_state
    from haihe.platform.settings import default_home

    with open_client(url) as c:
        ready = c.readiness()
    children = read_state(default_home() / "supervisor.json")  # `haihe up` on this machine: its children
    if as_json:
        typer.echo(json.dumps({**ready, **({"children": children} if children else {})}, indent=2))
    else:
        rows = [{"component": k, **v} for k, v in ready.get("components", {}).items()]
        print_rows(rows, ["component", "ok", "detail", "latency_ms"], False, title=f"status: {ready.get('status')}")
        if children:
            print_rows([{"child": k, **v} for k, v in children.items()], ["child", "state", "restarts", "last_error"],
                   False, title="haihe up: supervised children")
    if ready.get("status") != "ok":
        raise typer.Exit(1)


@app.command()
def login(
    url: Annotated[str | None, typer.Option(help="API URL (default $HAIHE_URL or http://127.0.0.1:8000).")] = None,
    username: Annotated[str | None, typer.Option("--username", "-u", help="Your username.")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input.")] = False,
) -> None:
    """Sign in and store a token in ~/.config/haihe/credentials.json (mode 600)."""
    from haihe.client import save_credentials

    username = username or typer.prompt("Username")
    password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt("Password", hide_input=True)
    with open_client(url) as c:
        token = c.login(username, password)
        path = save_credentials(c.url, token.token, username)
    typer.echo(f"signed in to {c.url} as {username}; token saved in {path}")


@app.command()
def logout() -> None:
    """Revoke the stored token and forget it."""
    from haihe.client import credentials_path

    with open_client() as c:
        if c.token:
            c.logout()
    credentials_path().unlink(missing_ok=True)
    typer.echo("signed out")


@app.command()
def whoami(as_json: JsonOpt = False) -> None:
    """Who the stored credentials belong to."""
    with open_client() as c:
        me = c.whoami()
    user = _memberships(plain(me.user))
    row = {**user, "credential": me.credential_kind, "scopes": me.scopes, "bound_org": me.bound_org}
    print_rows(row, ["username", "is_platform_admin", "orgs", "credential", "bound_org"], as_json)


# -- admin ---------------------------------------------------------------------------------------------------
@admin.command("init")
def admin_init(
    username: Annotated[str, typer.Option("--username", "-u", help="The first platform admin.")] = "admin",
    url: Annotated[str | None, typer.Option(help="API URL.")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input.")] = False,
) -> None:
    """Create the first platform administrator (only on a platform with no users), then sign in."""
    from haihe.client import save_credentials

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with open_client(url) as c:
        c.setup(username, password)
        token = c.login(username, password)
        save_credentials(c.url, token.token, username)
    typer.echo(f"platform admin {username!r} created and signed in")


@admin.command("audit")
def admin_audit(
    org: Annotated[str | None, typer.Option(help="Only this org's events (default: every org you administer).")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. key.create, auth.login")] = None,
    actor: Annotated[str | None, typer.Option(help="Username of the actor.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Search the audit log, newest first."""
    with open_client() as c:
        rows = c.audit(org=org, action=action, actor=actor, limit=limit)
    print_rows(rows, ["id", "at", "actor", "action", "target", "outcome", "source_ip"], as_json)


@admin.command("environments")
def admin_environments(
    org: Annotated[str, typer.Option(help="The org whose job environments to list.")],
    pruned: Annotated[bool, typer.Option(help="Also those the nodes removed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Job environments (spec environment) built on the nodes: where, size, jobs, last use. They count against the
    org's storage quota; a node removes one no job used for HAIHE_ENVIRONMENT_KEEP_DAYS (default 30)."""
    with open_client() as c:
        rows = [plain(e) for e in c.environments(org, pruned=pruned)]
    if not as_json:
        for r in rows:
            r["ref"], r["size"] = str(r["ref"])[:19] + "…", human_bytes(int(r["bytes"]))
    print_rows(rows, ["ref", "location", "size", "jobs", "last_used_at", "pruned_at"], as_json)


_ORG_COLS = ["name", "display_name", "status", "created_at"]


@orgs.command("create")
def orgs_create(name: str, display_name: Annotated[str, typer.Option()] = "", as_json: JsonOpt = False) -> None:
    """Create an organisation."""
    with open_client() as c:
        print_rows(plain(c.create_org(name, display_name)), _ORG_COLS, as_json)


@orgs.command("ls")
def orgs_ls(as_json: JsonOpt = False) -> None:
    """List the organisations you can see."""
    with open_client() as c:
        print_rows(c.list_orgs(), _ORG_COLS, as_json)


@orgs.command("show")
def orgs_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one organisation."""
    with open_client() as c:
        print_rows(plain(c.get_org(name)), _ORG_COLS, as_json)


def _status_command(group: typer.Typer, verb: str, status: str, fn: Callable[[HaiheClient, str, str], Any],
                    cols: list[str], help_text: str) -> None:
    @group.command(verb, help=help_text)
    def _cmd(name: str, as_json: JsonOpt = False) -> None:
        with open_client() as c:
            print_rows(plain(fn(c, name, status)), cols, as_json)


_status_command(orgs, "disable", "disabled", lambda c, n, s: c.set_org_status(n, s), _ORG_COLS,
                "Disable an org (read-only for its members).")
_status_command(orgs, "suspend", "suspended", lambda c, n, s: c.suspend_org(n), _ORG_COLS,
                "Suspend an org: its members can read but not submit or change anything.")
_status_command(orgs, "resume", "active", lambda c, n, s: c.resume_org(n), _ORG_COLS, "Resume a suspended org.")
_status_command(orgs, "enable", "active", lambda c, n, s: c.set_org_status(n, s), _ORG_COLS, "Re-enable an org.")

_PROJECT_COLS = ["org", "name", "description", "status", "created_at"]


@projects.command("create")
def projects_create(org: str, name: str, description: Annotated[str, typer.Option()] = "",
                    as_json: JsonOpt = False) -> None:
    """Create a project in ORG."""
    with open_client() as c:
        print_rows(plain(c.create_project(org, name, description)), _PROJECT_COLS, as_json)


@projects.command("ls")
def projects_ls(org: str, as_json: JsonOpt = False) -> None:
    """List ORG's projects."""
    with open_client() as c:
        print_rows(c.list_projects(org), _PROJECT_COLS, as_json)


@projects.command("show")
def projects_show(org: str, name: str, as_json: JsonOpt = False) -> None:
    """Show one project."""
    with open_client() as c:
        print_rows(plain(c.get_project(org, name)), _PROJECT_COLS, as_json)


@projects.command("disable")
def projects_disable(org: str, name: str, as_json: JsonOpt = False) -> None:
    """Disable a project (read-only)."""
    with open_client() as c:
        print_rows(plain(c.set_project_status(org, name, "disabled")), _PROJECT_COLS, as_json)


_USER_COLS = ["username", "orgs", "is_platform_admin", "is_service_account", "status", "created_at"]


@users.command("create")
def users_create(
    org: str,
    username: str,
    role: Annotated[str, typer.Option(help="org_admin | researcher | service_account")] = "researcher",
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input.")] = False,
    display_name: Annotated[str, typer.Option()] = "",
    email: Annotated[str, typer.Option()] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a user in ORG (service accounts have no password: give them API keys)."""
    password = None
    if role != "service_account":
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = typer.prompt("Password for the new user", hide_input=True, confirmation_prompt=True)
    with open_client() as c:
        user = c.create_user(org, username, role, password, display_name, email)
    print_rows(_memberships(plain(user)), _USER_COLS, as_json)


@users.command("map")
def users_map(org: str, username: str, unix_name: str, as_json: JsonOpt = False) -> None:
    """Map USERNAME of ORG to the existing Unix account UNIX_NAME: their Slurm jobs run as it."""
    with open_client() as c:
        print_rows(plain(c.map_unix_account(org, username, unix_name)), ["org", "username", "unix_name", "origin"],
               as_json)


@users.command("ls")
def users_ls(org: Annotated[str | None, typer.Option(help="Only members of this org.")] = None,
             as_json: JsonOpt = False) -> None:
    """List users you can see."""
    with open_client() as c:
        print_rows([_memberships(plain(u)) for u in c.list_users(org)], _USER_COLS, as_json)


@users.command("show")
def users_show(username: str, as_json: JsonOpt = False) -> None:
    """Show one user."""
    with open_client() as c:
        print_rows(_memberships(plain(c.get_user(username))), _USER_COLS, as_json)


_status_command(users, "disable", "disabled", lambda c, n, s: c.set_user_status(n, s), _USER_COLS,
                "Disable a user; their tokens and keys stop working at once.")
_status_command(users, "enable", "active", lambda c, n, s: c.set_user_status(n, s), _USER_COLS, "Re-enable a user.")

_KEY_COLS = ["prefix", "name", "owner", "org", "scopes", "expires_at", "revoked_at", "last_used_at"]


@keys.command("create")
def keys_create(
    org: str,
    name: str,
    user: Annotated[str | None, typer.Option(help="Owner (a service account of ORG); default: you.")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="api | inference | endpoint:<name> (repeatable).")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, max=3650)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key bound to ORG. The key is printed once: store it now."""
    with open_client() as c:
        issued = c.create_key(org, name, user, scope, expires_in_days)
    if as_json:
        print_json(issued)
        return
    print_rows(issued, _KEY_COLS, False)
    typer.echo(f"\nAPI key (shown once): {issued.key}")


@keys.command("ls")
def keys_ls(org: Annotated[str | None, typer.Option(help="All of this org's keys (org admins).")] = None,
            as_json: JsonOpt = False) -> None:
    """List API keys (never their secrets)."""
    with open_client() as c:
        print_rows(c.list_keys(org), _KEY_COLS, as_json)


@keys.command("revoke")
def keys_revoke(prefix: str, as_json: JsonOpt = False) -> None:
    """Revoke an API key by its prefix; it stops working at once."""
    with open_client() as c:
        print_rows(plain(c.revoke_key(prefix)), _KEY_COLS, as_json)


# -- local cluster -------------------------------------------------------------------------------------------
def _cluster_dir(state_dir: Path | None) -> Path:
    from haihe.embedded import default_home

    return state_dir or default_home() / "slurm"


@cluster.command("status")
def cluster_status(url: Annotated[str | None, typer.Option(help="API URL.")] = None, as_json: JsonOpt = False) -> None:
    """What the compute side looks like now: partitions with free CPUs and GPUs, the queue, why your jobs wait."""
    with open_client(url) as c:
        status = c.cluster_status()
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    for sched in status["schedulers"]:
        if not sched["ok"]:
            console().print(f"[red]{sched['name']}: unreachable[/] {sched['error']}")
            continue
        rows = [{"partition": p["name"] + (" (default)" if p["default"] else ""), "state": p["state"],
                 "nodes": p["nodes"], "cpus free": f"{p['cpus_free']}/{p['cpus_total']}",
                 "gpus free": f"{p['gpus_free']}/{p['gpus_total']}" if p["gpus_total"] else "-",
                 "max time": f"{p['max_time_min']} min" if p["max_time_min"] else "unlimited"}
                for p in sched["partitions"]]
        print_rows(rows, ["partition", "state", "nodes", "cpus free", "gpus free", "max time"], False,
               title=f"{sched['name']}: {sched['waiting']} waiting, {sched['running']} running")
    waiting = status["my_waiting_jobs"]
    if waiting:
        print_rows([{**j, "id": j["id"][:8], "why": j["why"] or j["reason"]} for j in waiting],
               ["id", "name", "scheduler", "state", "queue_position", "why"], False, title="your waiting jobs")
    else:
        typer.echo("none of your jobs is waiting")


@cluster.command("up")
def cluster_up(
    slurm: Annotated[bool, typer.Option("--slurm", help="Bring up the local Slurm cluster.")] = True,
    accounting: Annotated[bool, typer.Option(help="Also MariaDB + slurmdbd (limits, sacct history).")] = False,
    state_dir: Annotated[Path | None, typer.Option(help="State directory of the cluster.")] = None,
    description: Annotated[Path | None, typer.Option(help="Cluster description TOML.")] = None,
    port_base: Annotated[int, typer.Option(help="First of the local services' ports.")] = 20000,
) -> None:
    """Start munge, slurmctld, the slurmd nodes and slurmrestd (and slurmdbd with --accounting)."""
    from haihe.cluster.ports import PortPlan
    from haihe.cluster.slurm import cluster_up as up_fn

    out = console()
    result = up_fn(_cluster_dir(state_dir), PortPlan(port_base), accounting=accounting,
                   description_path=description, progress=lambda m: out.print(f"  {m}"))
    out.print(f"[green]Slurm cluster up[/]: SLURM_CONF={result.slurm_conf}  REST {result.rest_url}")


@cluster.command("down")
def cluster_down(state_dir: Annotated[Path | None, typer.Option(help="State directory of the cluster.")] = None
                 ) -> None:
    """Stop every daemon of the local Slurm cluster (by pid)."""
    from haihe.cluster.slurm import cluster_down as down_fn

    down_fn(_cluster_dir(state_dir))
    typer.echo("Slurm cluster stopped")


@cluster.command("daemons")
def cluster_daemons(state_dir: Annotated[Path | None, typer.Option(help="State directory of the cluster.")] = None,
                    as_json: JsonOpt = False) -> None:
    """Which daemons of the local Slurm cluster run (on this machine)."""
    from haihe.cluster.slurm import cluster_status as status_fn

    result = status_fn(_cluster_dir(state_dir))
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        print_rows([{"component": k, "state": v} for k, v in result.items()], ["component", "state"], False)


def main() -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    app()


if __name__ == "__main__":
    main()
