"""Pooled database connections are pinged only after sitting idle; a dead one is replaced, not handed out."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import QueuePool

from haihe.platform import db


class _Cursor(sqlite3.Cursor):
    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        conn = self.connection
        assert isinstance(conn, _Conn)
        if sql == "SELECT 1":
            conn.pings += 1
        if conn.dead:
            raise sqlite3.OperationalError("server closed the connection unexpectedly")
        return super().execute(sql, *args)


class _Conn(sqlite3.Connection):
    pings = 0
    dead = False

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)


def test_a_connection_is_pinged_only_when_idle_and_a_dead_one_is_replaced(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[_Conn] = []

    def connect() -> _Conn:
        conn = sqlite3.connect(tmp_path / "x.db", factory=_Conn, check_same_thread=False)
        assert isinstance(conn, _Conn)
        made.append(conn)
        return conn

    clock = [100.0]
    monkeypatch.setattr(db, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    engine = create_engine("sqlite://", creator=connect, poolclass=QueuePool, pool_size=1)
    db._ping_when_idle(engine, idle_s=10)

    def query() -> int:
        with engine.connect() as c:
            return int(c.execute(text("SELECT 41 + 1")).scalar_one())

    assert query() == 42  # a new connection: never used, so pinged
    assert [c.pings for c in made] == [1]
    for _ in range(3):  # used a moment ago: trusted, no round trip
        clock[0] += 1
        assert query() == 42
    assert [c.pings for c in made] == [1]
    clock[0] += 10  # idle 10 s: pinged again
    assert query() == 42
    assert [c.pings for c in made] == [2]
    made[0].dead = True  # the server went away while it sat idle
    clock[0] += 30
    assert query() == 42  # the dead one was dropped; a fresh one answered
    assert len(made) == 2 and made[1].pings == 1
