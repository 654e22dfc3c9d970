"""The platform's runtime context: settings, database and clients, built once by the app factory."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from haihe.errors import InvalidInput
from haihe.platform.db import Database
from haihe.platform.quotas.gate import QuotaGate
from haihe.platform.quotas.ledger import LedgerQuotaGate
from haihe.platform.settings import Settings
from haihe.schedulers.base import Scheduler
from haihe.schedulers.registry import SchedulerRegistry

T = TypeVar("T")


@dataclass
class PlatformContext:
    settings: Settings
    db: Database
    registry: SchedulerRegistry = field(default_factory=SchedulerRegistry)
    quota: QuotaGate = field(default_factory=LedgerQuotaGate)
    _schedulers: dict[str, Scheduler] = field(default_factory=dict)
    _services: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> PlatformContext:
        return cls(settings=settings, db=Database(settings.effective_database_url))

    def scheduler(self, name: str) -> Scheduler:
        """The named scheduler, built on first use (its SDK is imported then, not at start-up)."""
        url = self.settings.schedulers.get(name)
        if url is None:
            valid = ", ".join(sorted(self.settings.schedulers)) or "none configured"
            raise InvalidInput(f"unknown scheduler {name!r}; valid: {valid}", field="scheduler")
        with self._lock:
            if name not in self._schedulers:
                self._schedulers[name] = self.registry.create(url)
            return self._schedulers[name]

    def service(self, key: str, build: Callable[[], T]) -> T:
        """The process's one ``key`` client, built by ``build`` on first use. The module that owns a client names
        it (``zoo_catalog.services``, ``jobs.dispatcher``), so this context imports nothing above it."""
        with self._lock:
            if key not in self._services:
                self._services[key] = build()
            return cast(T, self._services[key])

    def provide(self, key: str, value: object) -> None:
        """Put a ready ``key`` client in place (tests: a fake zoo) before anything builds one."""
        with self._lock:
            self._services[key] = value

    def close(self) -> None:
        """Stop what runs in the background (the dispatcher: what it has not submitted stays PENDING), then the
        database pool."""
        for svc in list(self._services.values()):
            stop = getattr(svc, "stop", None)
            if callable(stop):
                stop()
        self.db.dispose()
