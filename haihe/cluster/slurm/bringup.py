"""Bring a local Slurm 22.05 cluster up and down under one state directory.

munged is system-wide (started if not running, never stopped); every other daemon is our child with a pid file
under ``<state>/run``: slurmctld, one slurmd per node (each in its own UTS namespace so ``hostname`` is the node
name), slurmrestd (JWT; it refuses root, so under root it runs as its own account :data:`REST_USER`), and
optionally MariaDB + slurmdbd. Ports, paths and the ClusterName all derive from the PortPlan and the state dir, so
several clusters can coexist.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import ManagedProcess, StartupError, as_user, port_open, wait_until
from haihe.cluster.slurm.description import ClusterDescription, load_description
from haihe.cluster.slurm.render import (
    CTLD_PORT,
    DB_PORT,
    DB_USER,
    DBD_PORT,
    REST_PORT,
    Layout,
    render_gres_conf,
    render_my_cnf,
    render_slurm_conf,
    render_slurmdbd_conf,
)

Progress = Callable[[str], None]
MANIFEST = "cluster.json"
REST_PLUGINS = "openapi/v0.0.38"
# slurmrestd's own account (it refuses root): a group of its own, so the state dir's private ancestors (e.g.
# /root/.local/share/haihe) are opened to it alone, search only, never to every process running as nobody
REST_USER = "haihe-slurmrestd"


def _noop(_: str) -> None:
    pass


def _run(argv: list[str], env: dict[str, str], timeout: float = 30, check: bool = True) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise StartupError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class SlurmCluster:
    """A running (or described) local cluster: paths, env and ways to reach it."""

    layout: Layout
    description: ClusterDescription
    accounting: bool

    @property
    def state_dir(self) -> Path:
        return self.layout.state_dir

    @property
    def slurm_conf(self) -> Path:
        return self.layout.slurm_conf

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.slurm_conf)}

    @property
    def rest_url(self) -> str:
        return self.layout.rest_url

    @property
    def jobs_dir(self) -> Path:
        return self.layout.jobs_dir

    def command_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def token(self, user: str = "root", lifespan: int = 3600) -> str:
        """A JWT for slurmrestd, minted by ``scontrol token`` (needs root or SlurmUser on this host)."""
        out = _run(["scontrol", "token", f"username={user}", f"lifespan={lifespan}"], self.command_env())
        return out.strip().split("=", 1)[1]

    def rest_ready(self) -> bool:
        """Whether slurmrestd answers on its port."""
        return port_open("127.0.0.1", self.layout.port(REST_PORT))

    def scheduler_url(self, transport: str = "cli") -> str:
        """The URL the scheduler registry builds a SlurmScheduler from (``slurm+cli://`` or ``slurm+rest://``)."""
        query = {"conf": str(self.slurm_conf), "jobs": str(self.jobs_dir)}
        if not self.accounting:
            query["qos"] = ",".join(self.description.qos_names())
        if transport == "cli":
            return f"slurm+cli://?{urlencode(query)}"
        if transport == "rest":
            query["jwt_key"] = str(self.layout.jwt_key)  # jobs are submitted as their user with a minted token
            return f"slurm+rest://127.0.0.1:{self.layout.port(REST_PORT)}?{urlencode(query)}"
        raise ValueError(f"unknown transport {transport!r} (cli, rest)")

    # -- processes -----------------------------------------------------------------------------------------
    def _proc(self, name: str, argv: list[str], user: str | None = None, env: dict[str, str] | None = None
              ) -> ManagedProcess:
        run, log = self.state_dir / "run", self.state_dir / "log"
        return ManagedProcess(name, argv, log / f"{name}.out", run / f"{name}.pid", env=env, user=user)

    def mariadb(self) -> ManagedProcess:
        return self._proc("mariadbd", ["mariadbd", f"--defaults-file={self.layout.etc / 'my.cnf'}"])

    def slurmdbd(self) -> ManagedProcess:
        return self._proc("slurmdbd", ["slurmdbd", "-D"], env=self.command_env())

    def slurmctld(self) -> ManagedProcess:
        return self._proc("slurmctld", ["slurmctld", "-D", "-f", str(self.slurm_conf)], env=self.command_env())

    def slurmd(self, node: str) -> ManagedProcess:
        # unshare without --fork execs in place, so the pid we record is slurmd's own
        script = f"hostname {node} && exec slurmd -D -f {self.slurm_conf} -N {node}"
        return self._proc(f"slurmd-{node}", ["unshare", "--uts", "sh", "-c", script], env=self.command_env())

    def slurmrestd(self) -> ManagedProcess:
        # SLURM_BITSTR_LEN=0: whole array task-id expressions in /jobs (default cuts them at 64 chars with '...')
        env = {**self.command_env(), "SLURM_JWT": "daemon", "SLURM_BITSTR_LEN": "0"}
        plugins = REST_PLUGINS + (",openapi/dbv0.0.38" if self.accounting else "")
        user, group = (REST_USER, REST_USER) if os.geteuid() == 0 else ("nobody", "nogroup")
        argv = ["slurmrestd", "-f", str(self.slurm_conf), "-a", "rest_auth/jwt", "-s", plugins,
                "-u", user, "-g", group, f"127.0.0.1:{self.layout.port(REST_PORT)}"]
        return self._proc("slurmrestd", argv, env=env)

    def processes(self) -> list[ManagedProcess]:
        """Every daemon, in start order."""
        procs = []
        if self.accounting:
            procs += [self.mariadb(), self.slurmdbd()]
        procs.append(self.slurmctld())
        procs += [self.slurmd(n) for n, _ in self.description.all_nodes()]
        procs.append(self.slurmrestd())
        return procs

    def ping(self) -> bool:
        if not port_open("127.0.0.1", self.layout.port(CTLD_PORT)):
            return False
        with contextlib.suppress(subprocess.TimeoutExpired, StartupError):
            return "UP" in _run(["scontrol", "ping"], self.command_env(), timeout=10, check=False)
        return False

    def idle_nodes(self) -> int:
        out = _run(["sinfo", "-h", "-N", "-o", "%N %t"], self.command_env(), timeout=10, check=False)
        return len({ln.split()[0] for ln in out.splitlines() if ln.split()[1:] in (["idle"], ["mix"], ["alloc"])})


def _ensure_munge(progress: Progress) -> None:
    """munged is system-wide: start it (as user munge) only if nothing answers yet."""
    def ok() -> bool:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
        return enc.returncode == 0 and subprocess.run(["unmunge"], input=enc.stdout, capture_output=True,
                                                      timeout=5).returncode == 0
    if ok():
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists() or key.stat().st_size == 0:
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(as_user(["/usr/sbin/munged"], "munge"), check=True)
    wait_until(ok, timeout=10, what="munged")
    progress("started munged (system-wide)")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def _prepare(cl: SlurmCluster, db_password: str) -> None:
    lay, desc = cl.layout, cl.description
    s = lay.state_dir
    for sub in ("etc", "state", "log", "run", "jobs", "fakedev"):
        (s / sub).mkdir(parents=True, exist_ok=True)
    s.chmod(0o755)
    # platform jobs log into their own <jobs>/<unix user> (made by the scheduler, 2750); the jobs dir itself is
    # only traversed by job accounts and slurmrestd (REST_USER). slurm.conf and gres.conf stay world-readable (srun
    # and scontrol in jobs need them); the JWT key, slurmdbd.conf and the db secret are 0600, the munge key 0400.
    (s / "jobs").chmod(0o755)
    for node, _ in desc.all_nodes():
        (s / "spool" / node).mkdir(parents=True, exist_ok=True)
        (s / "nodetmp" / node).mkdir(parents=True, exist_ok=True)
        (s / "nodetmp" / node).chmod(0o1777)  # TmpFS: pmix's per-job dirs of every job account
    for i in range(max((nt.gpus for nt in desc.node_types), default=0)):
        dev = lay.fakedev / f"nvidia{i}"
        if not dev.exists():
            try:
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a char device like /dev/null
            except OSError:
                dev.touch()
    if not lay.jwt_key.exists():
        lay.jwt_key.write_bytes(secrets.token_bytes(32))
    lay.jwt_key.chmod(0o600)
    _write(lay.slurm_conf, render_slurm_conf(desc, lay, accounting=cl.accounting))
    _write(lay.etc / "gres.conf", render_gres_conf(desc, lay))
    if cl.accounting:
        _write(lay.etc / "my.cnf", render_my_cnf(lay))
        # slurmdbd refuses a slurmdbd.conf others can read; it finds it next to $SLURM_CONF
        _write(lay.etc / "slurmdbd.conf", render_slurmdbd_conf(lay, db_password), 0o600)


def _start_accounting(cl: SlurmCluster, progress: Progress) -> None:
    s, env = cl.state_dir, cl.command_env()
    mycnf = cl.layout.etc / "my.cnf"
    if not (s / "mysql" / "mysql").exists():
        for d in ("mysql", "mysqlrun"):
            (s / d).mkdir(exist_ok=True)
            shutil.chown(s / d, "mysql", "mysql")
        _run(["mariadb-install-db", f"--defaults-file={mycnf}", "--user=mysql",
              "--auth-root-authentication-method=socket", "--skip-test-db"], env, timeout=120)
    db = cl.mariadb()
    db.start()
    wait_until(lambda: _run(["mariadb", f"--defaults-file={mycnf}", "-uroot", "-e", "select 1"], env,
                            timeout=5) is not None, timeout=60, what="mariadb", log_path=s / "log" / "mysqld.err",
               alive=db.is_running)
    password = _db_password(cl)
    sql = "".join(
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'{h}' IDENTIFIED BY '{password}'; "
        f"GRANT ALL ON slurm_acct_db.* TO '{DB_USER}'@'{h}'; "
        for h in ("127.0.0.1", "localhost")
    )
    _run(["mariadb", f"--defaults-file={mycnf}", "-uroot", "-e", sql], env)
    progress(f"mariadb up on 127.0.0.1:{cl.layout.port(DB_PORT)}")
    dbd = cl.slurmdbd()
    dbd.start()
    wait_until(lambda: port_open("127.0.0.1", cl.layout.port(DBD_PORT)), timeout=60, what="slurmdbd",
               log_path=s / "log" / "slurmdbd.log", alive=dbd.is_running)
    name = cl.layout.cluster_name
    if name not in _run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], env):
        _run(["sacctmgr", "-i", "add", "cluster", name], env)
    progress(f"slurmdbd up on 127.0.0.1:{cl.layout.port(DBD_PORT)}")


def _db_password(cl: SlurmCluster) -> str:
    path = cl.layout.etc / "db.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, secrets.token_hex(12), 0o600)
    return path.read_text().strip()


def _setup_associations(cl: SlurmCluster) -> None:
    """QoS from the description, the default account, and root's association (jobs run as root here)."""
    env, desc = cl.command_env(), cl.description
    existing = set(_run(["sacctmgr", "-n", "-P", "show", "qos", "format=name"], env).split())
    for q in desc.qos:
        limits = [f"Priority={q.priority}"]
        if q.max_wall_min:
            limits.append(f"MaxWall={q.max_wall_min}")
        if q.max_jobs_per_user:
            limits.append(f"MaxJobsPerUser={q.max_jobs_per_user}")
        verb = "modify" if q.name in existing else "add"
        argv = ["sacctmgr", "-i", verb, "qos", q.name] if verb == "add" else ["sacctmgr", "-i", "modify", "qos",
                                                                             f"name={q.name}"]
        _run([*argv, "set", *limits], env)
    acct = desc.default_account
    _run(["sacctmgr", "-i", "add", "account", acct, f"Cluster={cl.layout.cluster_name}",
          "Description=haihe default", "Organization=haihe"], env, check=False)
    _run(["sacctmgr", "-i", "add", "user", "root", f"Account={acct}", f"Cluster={cl.layout.cluster_name}"], env,
         check=False)
    _run(["sacctmgr", "-i", "modify", "user", "root", "set", f"QOS={','.join(desc.qos_names())}",
          "DefaultQOS=normal"], env, check=False)
    # accounts and users the platform adds later inherit the QoS of the root association
    _run(["sacctmgr", "-i", "modify", "account", "where", "name=root", "set", f"QOS={','.join(desc.qos_names())}",
          "DefaultQOS=normal"], env, check=False)


def _grant_daemon_access(lay: Layout, accounting: bool) -> None:
    """The state dir may sit under a private directory (``haihe up --slurm`` as root: /root/.local/share/haihe):
    slurmrestd's account must reach slurm.conf, job accounts slurm.conf (srun, scontrol) and their log dirs, and
    MariaDB (as mysql) its data dir. Each group gets search permission on the ancestors that lack it (root only;
    never read or list)."""
    if os.geteuid() != 0:
        return
    from haihe.cluster import unix

    unix.ensure_user(REST_USER, group=REST_USER)
    unix.grant_traverse([lay.slurm_conf], group=REST_USER)
    unix.grant_traverse([lay.slurm_conf, lay.state_dir / "jobs" / "x"], group=unix.JOBS_GROUP)
    if accounting:
        unix.grant_traverse([lay.state_dir / "mysql" / "x"], group="mysql")


def _grant_job_accounts_runtime() -> None:
    """Job accounts (group haihe-jobs) run the node Python and import Haihe, which may sit under /root (pyenv):
    give the group search permission on the directories leading there (root only; never read on /root)."""
    if os.geteuid() != 0:
        return
    import sys

    import haihe
    from haihe.cluster import unix

    unix.grant_traverse([Path(sys.executable), Path(sys.base_prefix) / "lib", Path(haihe.__file__).parent])


def _manifest(cl: SlurmCluster) -> dict[str, Any]:
    return {"base": cl.layout.plan.base, "host": cl.layout.host, "cluster_name": cl.layout.cluster_name,
            "accounting": cl.accounting, "description": cl.description.name}


def load_cluster(state_dir: str | Path) -> SlurmCluster:
    """Rebuild the SlurmCluster object of a cluster brought up earlier in ``state_dir``."""
    state = Path(state_dir).resolve()
    meta = json.loads((state / MANIFEST).read_text())
    desc_path = state / "etc" / "description.toml"
    desc = load_description(desc_path if desc_path.exists() else None)
    lay = Layout(state, meta["host"], PortPlan(meta["base"]), meta["cluster_name"])
    return SlurmCluster(lay, desc, meta["accounting"])


def cluster_up(state_dir: str | Path, plan: PortPlan, accounting: bool = False,
               description_path: str | Path | None = None, progress: Progress | None = None) -> SlurmCluster:
    """Start the whole cluster; if one is already fully up in ``state_dir`` with the same shape, reuse it."""
    say = progress or _noop
    state = Path(state_dir).resolve()
    desc = load_description(description_path)
    lay = Layout.create(state, socket.gethostname().split(".")[0], plan, desc.name)
    cl = SlurmCluster(lay, desc, accounting)
    _grant_job_accounts_runtime()
    if (state / MANIFEST).exists():
        with contextlib.suppress(Exception):
            old = load_cluster(state)
            if (_manifest(old) == _manifest(cl) and all(p.is_running() for p in old.processes())
                    and old.ping()):
                say(f"slurm cluster already up in {state}")
                return old
        cluster_down(state)
    state.mkdir(parents=True, exist_ok=True)
    _ensure_munge(say)
    _prepare(cl, _db_password(cl) if accounting else "")
    _grant_daemon_access(lay, accounting)
    if description_path is not None:
        shutil.copyfile(description_path, lay.etc / "description.toml")
    (state / MANIFEST).write_text(json.dumps(_manifest(cl)))
    try:
        if accounting:
            _start_accounting(cl, say)
        ctld = cl.slurmctld()
        ctld.start()
        wait_until(cl.ping, timeout=30, what="slurmctld", log_path=state / "log" / "slurmctld.log",
                   alive=ctld.is_running)
        say(f"slurmctld up on 127.0.0.1:{lay.port(CTLD_PORT)} ({lay.cluster_name})")
        for node, _ in desc.all_nodes():
            cl.slurmd(node).start()
        n = len(desc.all_nodes())
        wait_until(lambda: cl.idle_nodes() == n, timeout=60, what=f"{n} slurmd nodes",
                   log_path=state / "log" / "slurmctld.log")
        say(f"{n} slurmd nodes up")
        if accounting:
            _setup_associations(cl)
        rest = cl.slurmrestd()
        rest.start()
        wait_until(lambda: port_open("127.0.0.1", lay.port(REST_PORT)), timeout=30, what="slurmrestd",
                   log_path=state / "log" / "slurmrestd.out", alive=rest.is_running)
        say(f"slurmrestd up at {cl.rest_url}")
    except BaseException:
        cluster_down(state)
        raise
    return cl


def cluster_down(state_dir: str | Path) -> list[str]:
    """Stop every daemon of the cluster in ``state_dir`` by pid (reverse start order); returns what stopped."""
    state = Path(state_dir).resolve()
    if not (state / MANIFEST).exists():
        return []
    cl = load_cluster(state)
    stopped = []
    for p in reversed(cl.processes()):
        if p.stop(timeout=15):
            stopped.append(p.name)
    return stopped


def cluster_status(state_dir: str | Path) -> dict[str, Any]:
    """Which daemons run (with pids), whether slurmctld answers, and how to reach the cluster."""
    state = Path(state_dir).resolve()
    if not (state / MANIFEST).exists():
        return {"state_dir": str(state), "up": False, "daemons": {}}
    cl = load_cluster(state)
    daemons = {p.name: (p.pid() if p.is_running() else None) for p in cl.processes()}
    up = all(daemons.values()) and cl.ping()
    return {
        "state_dir": str(state),
        "up": up,
        "cluster_name": cl.layout.cluster_name,
        "accounting": cl.accounting,
        "slurm_conf": str(cl.slurm_conf),
        "rest_url": cl.rest_url,
        "daemons": daemons,
        "nodes": [n for n, _ in cl.description.all_nodes()],
        "partitions": [p.name for p in cl.description.partitions],
    }
