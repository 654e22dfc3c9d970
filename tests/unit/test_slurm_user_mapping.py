"""Jobs run as their user's Unix account on their org's Slurm account: the mapping, setpriv, per-user JWTs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pwd
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from haihe.cluster.unix import local_account_name
from haihe.errors import Unsupported
from haihe.jobs.runtime.contract import default_cache_dir
from haihe.platform.context import PlatformContext
from haihe.platform.models import Job, LedgerEntry, UnixAccount
from haihe.platform.settings import Settings
from haihe.schedulers.base import Launch, Resources
from haihe.schedulers.slurm.accounts import account_name
from haihe.schedulers.slurm.backend import build
from haihe.schedulers.slurm.cli import CliTransport, CommandResult
from haihe.schedulers.slurm.jwt import UserTokens, mint
from haihe.schedulers.slurm.rest import RestTransport
from haihe.schedulers.slurm.scheduler import SlurmScheduler
from tests.fixtures.fake_scheduler import FakeScheduler
from tests.fixtures.platform import Tenancy
from tests.unit.test_slurm_scheduler import FakeSlurm


class RecordingSlurm(FakeSlurm):
    """FakeSlurm that also records whole argv lists and answers ``setpriv --reuid=<user> … -- <slurm command>``."""

    def __init__(self) -> None:
        super().__init__()
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], *, stdin: str | None = None,
                 env: Mapping[str, str] | None = None) -> CommandResult:
        self.argvs.append(list(argv))
        if Path(argv[0]).name == "setpriv":
            assert argv[1].startswith("--reuid=") and argv[4] == "--", argv
            argv = argv[5:]
        argv = [a for a in argv if not a.startswith(("--uid=", "--gid="))]  # sbatch's own user switch
        return super().__call__(argv, stdin=stdin, env=env)


def _launch(**kw: Any) -> Launch:
    kw.setdefault("tag", "tag-1")
    return Launch(name="n", command=("id", "-un"), resources=Resources(time_limit_min=10), **kw)


@pytest.fixture
def fake() -> RecordingSlurm:
    return RecordingSlurm()


def _sched(fake: RecordingSlurm, jobs: Path) -> SlurmScheduler:
    s = build(f"slurm+cli://?jobs={jobs}", runner=fake, job_env={"PATH": "/bin"})
    assert isinstance(s, SlurmScheduler)
    assert isinstance(s.transport, CliTransport)
    s.transport.switch_user, s.transport.operator = True, "root"
    return s


def test_names() -> None:
    assert local_account_name("acme", "alice") == "hh-acme-alice"
    assert account_name("acme", "vision") == "acme.vision"
    long = local_account_name("a-very-long-organisation-name", "someone-with-a-long-name")
    assert len(long) <= 32 and long.startswith("hh-a-very-long")


def test_cli_submits_as_the_mapped_user_on_the_project_account(fake: RecordingSlurm, tmp_path: Path) -> None:
    sched = _sched(fake, tmp_path)
    ref = sched.submit(_launch(user="nobody", account="acme.vision"))
    sbatch = next(a for a in fake.argvs if "sbatch" in a)
    assert sbatch == ["sbatch", "--parsable", "--uid=nobody", f"--gid={pwd.getpwnam('nobody').pw_gid}"]
    script = fake.jobs[int(ref)]["script"]
    assert f"#SBATCH --output={tmp_path}/nobody/%j.out" in script
    assert f"#SBATCH --chdir={tmp_path}/nobody" in script
    assert "#SBATCH --account=acme.vision" in script
    # the org account, the project account and the user's association, made once
    adds = [a for a in fake.argvs if a[0] == "sacctmgr" and "add" in a]
    assert [a[a.index("add") + 1:a.index("add") + 3] for a in adds] == [
        ["account", "acme"], ["account", "acme.vision"], ["user", "nobody"]]
    assert "Parent=acme" in adds[1] and "Account=acme.vision" in adds[2]
    sched.submit(_launch(tag="tag-2", user="nobody", account="acme.vision"))
    assert len([a for a in fake.argvs if a[0] == "sacctmgr" and "add" in a]) == 3, "associations are cached"
    # the per-user log directory: the user's own, the platform's group, nothing for other job accounts
    d = tmp_path / "nobody"
    if os.geteuid() == 0:
        st = d.stat()
        assert st.st_uid == 65534 and st.st_gid == os.getegid() and stat.S_IMODE(st.st_mode) == 0o2750
    (d / f"{ref}.out").write_text("nobody\n")
    fresh = _sched(fake, tmp_path)  # a restarted API finds the log by globbing the per-user directories
    assert fresh.logs(ref).data == "nobody\n"
    assert sched.logs(ref).data == "nobody\n"


def test_operator_jobs_do_not_switch_user(fake: RecordingSlurm, tmp_path: Path) -> None:
    sched = _sched(fake, tmp_path)
    sched.submit(_launch())
    assert ["sbatch", "--parsable"] in fake.argvs
    assert f"#SBATCH --output={tmp_path}/%j.out" in fake.jobs[100]["script"]


def test_unprivileged_cli_refuses_another_user(fake: RecordingSlurm, tmp_path: Path) -> None:
    sched = _sched(fake, tmp_path)
    assert isinstance(sched.transport, CliTransport)
    sched.transport.switch_user = False
    with pytest.raises(Unsupported) as err:
        sched.transport.submit("#!/bin/sh\n", {}, {}, "nobody")
    assert err.value.field == "user"


def _decode(part: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def test_jwt_claims_and_signature(tmp_path: Path) -> None:
    key = os.urandom(32)
    token = mint(key, "hh-acme-alice", 300, now=1_000_000)
    header, claims, sig = token.split(".")
    assert _decode(header) == {"alg": "HS256", "typ": "JWT"}
    assert _decode(claims) == {"sun": "hh-acme-alice", "iat": 1_000_000, "exp": 1_000_300}
    want = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)) == want
    key_file = tmp_path / "jwt.key"
    key_file.write_bytes(key)
    clock = [1_000_000.0]
    tokens = UserTokens(key_file, lifespan_s=600, clock=lambda: clock[0])
    first = tokens("u1")
    clock[0] += 200
    assert tokens("u1") == first  # reused for half its lifespan
    clock[0] += 200
    assert tokens("u1") != first


def test_rest_submits_with_the_users_own_token(tmp_path: Path) -> None:
    key = os.urandom(32)
    (tmp_path / "k").write_bytes(key)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/jobs"):
            return httpx.Response(200, json={"jobs": []})
        return httpx.Response(200, json={"job_id": 7, "errors": []})

    client = httpx.Client(base_url="http://slurm", transport=httpx.MockTransport(handler))
    rest = RestTransport("http://slurm", user="root", token=lambda: "operator-token", client=client,
                         user_token=UserTokens(tmp_path / "k"))
    opts = {"job-name": "n.t", "comment": "t", "nodes": "1", "ntasks-per-node": "1", "cpus-per-task": "1",
            "time": "5", "output": "/j/u/%j.out", "chdir": "/j/u"}
    assert rest.submit("#!/bin/sh\n", opts, {"PATH": "/bin"}, user="hh-acme-alice") == "7"
    assert seen[-1].headers["X-SLURM-USER-NAME"] == "hh-acme-alice"
    token = seen[-1].headers["X-SLURM-USER-TOKEN"]
    assert _decode(token.split(".")[1])["sun"] == "hh-acme-alice"
    rest.jobs()  # the operator's own calls keep the operator's token
    assert seen[-1].headers["X-SLURM-USER-NAME"] == "root"
    assert seen[-1].headers["X-SLURM-USER-TOKEN"] == "operator-token"
    no_key = RestTransport("http://slurm", user="root", token=lambda: "x", client=client)
    with pytest.raises(Unsupported) as err:
        no_key.submit("#!/bin/sh\n", opts, {}, user="hh-acme-alice")
    assert err.value.field == "user"


# -- the platform: the mapping, the 4xx with nothing stored ------------------------------------------------------
class UserFake(FakeScheduler):
    RUNS_AS_USER: ClassVar[bool] = True


SPEC = {"name": "who", "entrypoint": ["id", "-un"], "resources": {"time_limit": "00:05:00"}}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[TestClient, PlatformContext, UserFake]]:
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", schedulers={"hpc": "userfake://"},
                        default_scheduler="hpc", reconcile_interval_s=0, unix_accounts="site")
    ctx = PlatformContext.from_settings(settings)
    fake = UserFake("userfake://")
    ctx.registry.register("userfake", lambda url, **_: fake)
    with TestClient(create_app(settings, ctx=ctx)) as client:
        yield client, ctx, fake


def _counts(ctx: PlatformContext) -> tuple[int, int]:
    with ctx.db.session() as s:
        return (int(s.scalar(select(func.count()).select_from(Job)) or 0),
                int(s.scalar(select(func.count()).select_from(LedgerEntry)) or 0))


def test_unmapped_user_gets_a_4xx_naming_user_and_nothing_is_stored(
        site: tuple[TestClient, PlatformContext, UserFake]) -> None:
    client, ctx, fake = site
    t = Tenancy(client).bootstrap()
    org = t.org()
    project = t.project(org)
    username = t.user(org)
    user = t.login(username)
    url = f"/api/v1/orgs/{org}/projects/{project}/jobs"
    r = client.post(url, json={"spec": SPEC}, headers=user)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "user" and "haihe admin users map" in r.json()["error"]["message"]
    assert _counts(ctx) == (0, 0) and not fake.jobs
    # only platform admins map, and only to an existing, unprivileged account
    map_url = f"/api/v1/orgs/{org}/users/{username}/unix-account"
    assert client.put(map_url, json={"unix_name": "nobody"}, headers=user).status_code == 403
    for bad in ("root", "no-such-account-xyz", "Bad Name"):
        r = client.put(map_url, json={"unix_name": bad}, headers=t.admin_headers)
        assert r.status_code == 422 and r.json()["error"]["field"] == "unix_name", r.text
    r = client.put(map_url, json={"unix_name": "nobody"}, headers=t.admin_headers)
    assert r.status_code == 200 and r.json()["origin"] == "site", r.text
    r = client.post(url, json={"spec": SPEC}, headers=user)
    assert r.status_code == 201, r.text
    launch = next(iter(fake.jobs.values())).launch
    assert launch.user == "nobody" and launch.account == f"{org}.{project}"
    with ctx.db.session() as s:
        assert s.scalar(select(UnixAccount.unix_name)) == "nobody"


def test_unix_accounts_none_is_refused_outside_development() -> None:
    with pytest.raises(ValueError, match="UNIX_ACCOUNTS=none"):
        Settings(mode="production", secret_key="x" * 40, unix_accounts="none")
    assert Settings().effective_unix_accounts == "local"
    assert Settings(mode="production", secret_key="x" * 40).effective_unix_accounts == "site"


def test_default_node_cache_is_private_per_user() -> None:
    path = Path(default_cache_dir())
    assert path.name == f"haihe-cache-{os.getuid()}"
    st = path.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_cli_without_sbatchs_uid_option_switches_with_setpriv(fake: RecordingSlurm, tmp_path: Path) -> None:
    sched = build(f"slurm+cli://?jobs={tmp_path}&switch=setpriv", runner=fake, job_env={"PATH": "/bin"})
    assert isinstance(sched, SlurmScheduler) and isinstance(sched.transport, CliTransport)
    sched.transport.switch_user, sched.transport.operator = True, "root"
    sched.submit(_launch(user="nobody"))
    sbatch = next(a for a in fake.argvs if "sbatch" in a)
    assert Path(sbatch[0]).name == "setpriv" and sbatch[1] == "--reuid=nobody" and sbatch[3:] == [
        "--init-groups", "--", "sbatch", "--parsable"]
