"""The job timeline in the reader's language: every event the platform writes, said from its data in Chinese."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from haihe.platform.models import JobEvent
from haihe.portal.i18n import Translator
from haihe.portal.timeline import timeline

AT = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
# (kind, job state then, stored English message, data) as platform/jobs/service.py and platform/jobs/reconciler.py
# write them
EVENTS = [
    ("created", "PENDING", "job digits created", {"scheduler": "slurm"}),
    ("submit_deferred", "PENDING", "slurm unavailable: connection refused", {}),
    ("submitted", "SUBMITTED", "submitted to slurm as 4211", {"native_id": "4211"}),
    ("queued", "QUEUED", "queued (Priority, position 3)", {"reason": "Priority", "position": 3}),
    ("queued", "QUEUED", "queued (waiting for resources)", {"reason": None, "position": None}),
    ("started", "RUNNING", "started on cn1, cn2", {"nodes": ["cn1", "cn2"]}),
    ("requeued", "PREEMPTED", "preempted; will run again", {"reason": None}),
    ("retrying", "PENDING", "attempt 1 lost (node failure); running again as attempt 2 of 2",
     {"attempt": 2, "lost_native_id": "4211"}),
    ("retry_refused", "FAILED", "attempt 2 lost (node failure); not run again: quota exceeded", {}),
    ("cancel_requested", "RUNNING", "cancel sent to slurm", {}),
    ("environment", "RUNNING", "environment sha256:0123456789ab… built in 41.2 s on gn1",
     {"ref": "sha256:" + "0123456789abcdef" * 4, "cached": False, "seconds": 41.2, "node": "gn1"}),
    ("environment", "RUNNING", "environment sha256:0123456789ab… reused (cached) on gn2",
     {"ref": "sha256:" + "0123456789abcdef" * 4, "cached": True, "seconds": 0.01, "node": "gn2"}),
    ("environment", "RUNNING", "image oci-archive:/x.tar (sha256:0123…) ready in 0.2 s on gn1",
     {"ref": "sha256:" + "0123456789abcdef" * 4, "cached": False, "seconds": 0.2, "node": "gn1",
      "image": "oci-archive:/x.tar"}),
    ("environment_failed", "RUNNING", "environment could not be built on gn1: resolving failed for no-such-pkg",
     {"node": "gn1"}),
    ("finished", "FAILED", "failed with exit code 3: NonZeroExitCode", {"exit_code": 3, "elapsed_s": 12}),
    ("finished", "SUCCEEDED", "succeeded", {"exit_code": None}),
]
ALLOWED_LATIN = {"slurm", "cn1", "cn2", "4211", "gn1", "gn2", "sha256", "ab", "oci", "archive", "x", "tar"}  # ids


def _events() -> list[JobEvent]:
    return [JobEvent(kind=k, state=st, message=m, data=d, at=AT) for k, st, m, d in EVENTS]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_event_is_said_in_the_readers_language(lang: str) -> None:
    entries = timeline(_events(), Translator(lang), "slurm", lambda at: at.isoformat())
    assert len(entries) == len(EVENTS)
    for entry, (kind, _, stored, _) in zip(entries, EVENTS, strict=True):
        assert entry["message"], kind
        if lang == "zh":
            words = set(re.findall(r"[A-Za-z][A-Za-z0-9_]*", entry["kind"] + " " + entry["message"]))
            assert words <= ALLOWED_LATIN, (kind, entry)
            if entry["message"] != stored:
                assert entry["detail"] == stored  # the stored English stays at hand (a tooltip)
    zh = {e["message"] for e in entries} if lang == "zh" else set()
    if lang == "zh":
        assert "已交给 slurm，编号 4211" in zh and "在 cn1, cn2 上运行" in zh and "失败，退出码 3" in zh
        assert any("第 3 位" in m and "公平份额" in m for m in zh)


def test_an_event_of_a_kind_the_catalogue_does_not_know_keeps_its_words() -> None:
    e = JobEvent(kind="brand_new", state="RUNNING", message="something new happened", data={}, at=AT)
    [entry] = timeline([e], Translator("zh"), "ray", str)
    assert entry == {"kind": "brand_new", "at": str(AT), "message": "something new happened", "detail": ""}
