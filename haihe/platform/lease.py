"""The leader lease: several API processes may serve one platform, but only the holder of ``platform-leader`` runs
the background work (reconciler, endpoint supervisor, dataset maintenance), so no job is submitted twice and no
endpoint is stepped by two supervisors. Taken, renewed and handed over through the database both already share.

One conditional UPDATE takes or renews the lease (``holder = me OR expires_at < now``), atomic on SQLite and
PostgreSQL alike; a missing row is inserted, and the loser of that race sees the primary key conflict. A holder that
dies stops renewing, and another process takes over once ``ttl`` has passed — at once when the dead holder ran on
the same host (a restart after a crash need not wait).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, insert, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from haihe.platform.db import Database
from haihe.platform.models import Lease, utcnow

log = logging.getLogger(__name__)

LEADER = "platform-leader"


class LeaderLease:
    def __init__(self, db: Database, ttl_s: float, *, name: str = LEADER, holder: str | None = None,
                 now: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.ttl = dt.timedelta(seconds=ttl_s)
        self.name = name
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.now = now
        self.held = False

    def renew(self) -> bool:
        """Take or renew the lease; True while this process holds it. A database outage means not holding it."""
        now = self.now()
        try:
            with self.db.session() as s:
                taken = self._take(s, (Lease.holder == self.holder) | (Lease.expires_at < now), now)
                if not taken:
                    row = s.get(Lease, self.name)
                    if row is None:
                        s.execute(insert(Lease).values(name=self.name, holder=self.holder,
                                                       expires_at=now + self.ttl))
                        taken = True
                    elif _dead_here(row.holder):  # our own host's holder was killed: no need to wait the ttl out
                        taken = self._take(s, Lease.holder == row.holder, now)
                s.commit()
        except IntegrityError:  # another process inserted the row first: it leads
            taken = False
        except OperationalError as exc:
            log.warning("leader lease %s: database unavailable (%s)", self.name, type(exc).__name__)
            taken = False
        if bool(taken) != self.held:
            log.info("%s the leader lease %s", "took" if taken else "lost", self.name)
        self.held = bool(taken)
        return self.held

    def _take(self, s: Session, condition: ColumnElement[bool], now: dt.datetime) -> bool:
        """Make this process the holder where ``condition`` holds: one atomic conditional UPDATE."""
        result = s.execute(update(Lease).where(Lease.name == self.name, condition)
                           .values(holder=self.holder, expires_at=now + self.ttl)
                           .execution_options(synchronize_session=False))
        return bool(cast("CursorResult[Any]", result).rowcount)

    def release(self) -> None:
        """Hand the lease over at once (shutdown), instead of making the next leader wait out the ttl."""
        if not self.held:
            return
        try:
            with self.db.session() as s:
                s.execute(update(Lease).where(Lease.name == self.name, Lease.holder == self.holder)
                          .values(expires_at=self.now() - dt.timedelta(seconds=1)))
                s.commit()
        except OperationalError:
            pass  # it expires on its own
        self.held = False

    def guard(self, work: Callable[[], object]) -> Callable[[], object]:
        """``work`` run only while this process holds the lease (renewed first, every time)."""
        def run() -> object:
            return work() if self.renew() else None
        return run


def _dead_here(holder: str) -> bool:
    """The holder ran on this host and its process is gone (a crash, kill -9): ``host:pid:nonce``."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False
