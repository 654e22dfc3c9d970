"""The platform's runtime context: settings, database and clients, built once by the app factory."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from haihe.errors import InvalidInput
from haihe.platform.db import Database
from haihe.platform.quota_gate import QuotaGate
from haihe.platform.quotas import LedgerQuotaGate
from haihe.platform.settings import Settings
from haihe.schedulers.base import Scheduler
from haihe.schedulers.registry import SchedulerRegistry

if TYPE_CHECKING:
    from haihe.platform.dispatcher import Dispatcher
    from haihe.platform.zoo import ZooServices


@dataclass
class PlatformContext:
    settings: Settings
    db: Database
    registry: SchedulerRegistry = field(default_factory=SchedulerRegistry)
    quota: QuotaGate = field(default_factory=LedgerQuotaGate)
    zoo_services: ZooServices | None = None  # built on first use; tests set fakes here
    _schedulers: dict[str, Scheduler] = field(default_factory=dict)
    _dispatcher: Dispatcher | None = None
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

    def zoo(self) -> ZooServices:
        """The zoo's registry, MLflow and artifact clients, built on first use (Unsupported without MLflow)."""
        with self._lock:
            if self.zoo_services is None:
                from haihe.platform.zoo import ZooServices  # the zoo service imports the jobs service, which needs us

                self.zoo_services = ZooServices.from_settings(self.settings)
            return self.zoo_services

    def dispatcher(self) -> Dispatcher:
        """Submits stored jobs after the response, for clients that do not wait (``Prefer: respond-async``)."""
        with self._lock:
            if self._dispatcher is None:
                from haihe.platform.dispatcher import Dispatcher

                self._dispatcher = Dispatcher(self)
            return self._dispatcher

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()
        self.db.dispose()
