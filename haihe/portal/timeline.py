"""A job's timeline in the reader's language: each event's kind and what happened, rebuilt from its data.

Events are stored with an English message (what the API and the CLI show) and structured data (scheduler, native
id, nodes, reason code, position, exit code, attempt). The portal says the same from the data through its
catalogue (``event_msg.*``, ``reason.*``, ``state.*``); the stored English stays as the entry's ``detail`` (a
tooltip), for free-form text such as a service's own error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from haihe.platform.models import JobEvent


class _Catalogue(Protocol):
    def __call__(self, key: str, **params: Any) -> str: ...
    def has(self, key: str) -> bool: ...


def _reason(t: _Catalogue, code: Any) -> str:
    """A scheduler's reason code in words (the code itself when the catalogue does not know it)."""
    code = str(code or "")
    return t(f"reason.{code}").rstrip("。.") if code and t.has(f"reason.{code}") else code


def _message(t: _Catalogue, e: JobEvent, scheduler: str) -> str:
    d: dict[str, Any] = e.data or {}
    kind = e.kind
    if kind == "created":
        return t("event_msg.created", scheduler=d.get("scheduler") or scheduler)
    if kind == "submitted" and d.get("native_id"):
        return t("event_msg.submitted", scheduler=scheduler, ref=d["native_id"])
    if kind == "started":
        nodes = ", ".join(d.get("nodes") or [])
        return t("event_msg.started", nodes=nodes) if nodes else t("event_msg.started_cluster")
    if kind == "queued":
        why = _reason(t, d.get("reason")) or t("event_msg.waiting")
        pos = d.get("position")
        return t("event_msg.queued_at", why=why, position=pos) if pos else t("event_msg.queued", why=why)
    if kind == "requeued":
        return _reason(t, d.get("reason")) or t("event_msg.requeued")
    if kind == "finished":
        state = t(f"state.{e.state}") if e.state and t.has(f"state.{e.state}") else e.state
        code = d.get("exit_code")
        return t("event_msg.finished_code", state=state, code=code) if code is not None else state
    if kind == "cancel_requested":
        return t("event_msg.cancel_requested", scheduler=scheduler)
    if kind == "environment" and d.get("ref"):
        ref, node = str(d["ref"])[:19] + "…", d.get("node") or "-"
        if d.get("image"):
            return t("event_msg.environment_image", image=d["image"], ref=ref, node=node)
        if d.get("cached"):
            return t("event_msg.environment_cached", ref=ref, node=node)
        return t("event_msg.environment_built", ref=ref, node=node, seconds=f"{float(d.get('seconds') or 0):.1f}")
    if kind == "retrying" and d.get("attempt"):
        return t("event_msg.retrying", attempt=d["attempt"])
    if t.has(f"event_msg.{kind}"):  # free-form causes (a service's error): said generally, the cause as detail
        return t(f"event_msg.{kind}")
    return e.message or ""


def timeline(events: Sequence[JobEvent], t: _Catalogue, scheduler: str,
             when: Callable[[Any], str]) -> list[dict[str, str]]:
    """Entries the job page draws (and its live stream sends): kind, time, message, and the stored English."""
    out = []
    for e in events:
        message = _message(t, e, scheduler)
        out.append({"kind": t(f"event.{e.kind}") if t.has(f"event.{e.kind}") else e.kind, "at": when(e.at),
                    "message": message, "detail": e.message if e.message and e.message != message else ""})
    return out
