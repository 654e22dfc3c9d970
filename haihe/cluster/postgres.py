"""A private PostgreSQL 15 cluster for the tests (and for trying the platform on PostgreSQL locally).

``initdb`` and ``postgres`` refuse to run as root, so when we are root both run as the ``postgres`` OS user
(through ``runuser``) on a data directory it owns. The server listens on loopback only with ``trust`` auth
and ``fsync=off``: a throwaway cluster for tests, never a place for data that must survive a crash.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from haihe.cluster import firewall
from haihe.cluster.procs import LocalService, ManagedProcess, StartupError, as_user, run_step, start_service
from haihe.errors import InvalidInput

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass
class PostgresServer(LocalService):
    """One PostgreSQL cluster (data dir, socket dir, log, pid) under ``home``, listening on host:port."""

    home: Path
    port: int
    host: str = "127.0.0.1"
    bin_dir: Path = DEFAULT_BIN_DIR
    os_user: str | None = None  # default: "postgres" when we are root, else ourselves

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        self.bin_dir = Path(self.bin_dir)
        if self.os_user is None and os.geteuid() == 0:
            self.os_user = "postgres"

    # ---- paths and command lines (pure) ----
    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "sock"

    @property
    def log_path(self) -> Path:
        return self.home / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of one database of this cluster."""
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def initdb_argv(self) -> list[str]:
        return [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",  # the server listens on loopback only (see server_argv)
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]

    def server_argv(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-k",
            str(self.socket_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            # a test cluster: trade durability for speed on a shared 2-core box
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=32MB",
        ]

    def _process(self) -> ManagedProcess:
        return ManagedProcess(
            name="postgres",
            argv=self.server_argv(),
            log_path=self.log_path,
            pid_path=self.home / "postgres.pid",
            cwd=self.home,
            user=self.os_user,
        )

    # ---- lifecycle ----
    def init(self) -> None:
        """Run initdb once; a data dir that already holds a cluster is reused."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        if not (self.bin_dir / "initdb").exists():
            raise StartupError(f"postgres: no initdb in {self.bin_dir} (install postgresql-15)")
        self.home.mkdir(parents=True, exist_ok=True)
        for path in (self.data_dir, self.socket_dir):
            path.mkdir(exist_ok=True)
            path.chmod(0o700)
            if self.os_user and os.geteuid() == 0:
                entry = pwd.getpwnam(self.os_user)
                os.chown(path, entry.pw_uid, entry.pw_gid)
        run_step(self.initdb_argv(), what="postgres: initdb", timeout=120, user=self.os_user)

    def start(self, timeout: float = 60.0) -> None:
        """initdb if needed, start the server (or reuse a running one) and wait until it accepts queries."""
        start_service(self._process(), name="postgres", host=self.host, port=self.port, ready=self.is_ready,
                      timeout=timeout, prepare=self.init, stop=self.stop)
        firewall.reject_from([self.port], gids=firewall.JOB_GROUPS)  # trust auth on loopback: never for jobs

    def stop(self) -> bool:
        """Fast shutdown (disconnect clients, checkpoint); the process-group kill is the fallback."""
        proc = self._process()
        if not proc.is_running():
            return proc.stop()
        subprocess.run(
            as_user([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"], self.os_user),
            capture_output=True,
            check=False,
            timeout=60,
        )
        proc.stop()
        return True

    def _answers(self) -> bool:
        """True when a connection over TCP runs ``SELECT 1``."""
        import psycopg

        try:
            with psycopg.connect(self._conninfo("postgres"), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    # ---- databases ----
    def _conninfo(self, dbname: str) -> str:
        return f"host={self.host} port={self.port} user={SUPERUSER} dbname={dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; returns its SQLAlchemy URL."""
        if not _DB_NAME.match(name):
            raise InvalidInput(
                "database name must be lower-case letters, digits and _ (max 63)", field="name", value=name
            )
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._conninfo("postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                # another caller may create it meanwhile
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists (closing its connections)."""
        if not _DB_NAME.match(name):
            raise InvalidInput("invalid database name", field="name", value=name)
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._conninfo("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
