"""Pick a scheduler backend from its URL scheme (``slurm+rest://``, ``slurm+cli://``, ``ray://``).

Backends register a builder per scheme; builders import their heavy SDKs lazily, so listing or resolving
schemes never imports ray or httpx transports that are not used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from haihe.errors import InvalidInput
from haihe.schedulers.base import Scheduler

Builder = Callable[..., Scheduler]

# scheme -> "module:function"; resolved on first use so that no backend SDK is imported before it is needed.
_BUILTIN: dict[str, str] = {
    "slurm+cli": "haihe.schedulers.slurm.backend:build",
    "slurm+rest": "haihe.schedulers.slurm.backend:build",
    "ray": "haihe.schedulers.ray.backend:build",
}


class SchedulerRegistry:
    """A typed registry of scheme → builder."""

    def __init__(self, builtin: dict[str, str] | None = None) -> None:
        self._lazy: dict[str, str] = dict(_BUILTIN if builtin is None else builtin)
        self._builders: dict[str, Builder] = {}

    def register(self, scheme: str, builder: Builder) -> None:
        self._builders[scheme] = builder

    def schemes(self) -> list[str]:
        return sorted(set(self._lazy) | set(self._builders))

    def builder(self, scheme: str) -> Builder:
        if scheme in self._builders:
            return self._builders[scheme]
        target = self._lazy.get(scheme)
        if target is None:
            valid = ", ".join(f"{s}://" for s in self.schemes())
            raise InvalidInput(f"unknown scheduler scheme {scheme!r}; valid schemes: {valid}", field="scheduler")
        module, _, func = target.partition(":")
        builder: Builder = getattr(importlib.import_module(module), func)
        self._builders[scheme] = builder
        return builder

    def create(self, url: str, **options: Any) -> Scheduler:
        scheme = urlsplit(url).scheme
        if not scheme:
            raise InvalidInput(f"scheduler URL {url!r} has no scheme", field="scheduler")
        return self.builder(scheme)(url, **options)


def create_scheduler(url: str, **options: Any) -> Scheduler:
    """Build the backend for ``url`` from the default registry."""
    return SchedulerRegistry().create(url, **options)
