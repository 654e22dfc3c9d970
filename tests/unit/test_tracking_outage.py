"""The job's tracker across an MLflow outage: writes are kept and sent again, never duplicated, never fatal; what
never got through is named in the log. A stateful fake ``MlflowClient`` (an MLflow that can be switched off) and a
fake clock are injected through ``MlflowTracker``'s constructor."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from haihe.jobs.runtime.tracking import FLUSH_EVERY, RETRY_MIN_S, MlflowTracker


class FakeMlflow:
    """Stores metrics as MLflow does: a (key, step, timestamp, value) logged twice is kept once."""

    tracking_uri = "http://fake-mlflow"

    def __init__(self) -> None:
        self.up = True
        self.metrics: set[tuple[str, int, int, float]] = set()
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.status: str | None = None
        self.calls = 0

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        self.calls += 1
        if not self.up:
            raise ConnectionError("Connection refused")
        self.metrics.update((m.key, m.step, m.timestamp, m.value) for m in metrics)
        self.params.update({p.key: p.value for p in params})
        self.tags.update({t.key: t.value for t in tags})

    def set_terminated(self, run_id: str, status: str) -> None:
        if not self.up:
            raise ConnectionError("Connection refused")
        self.status = status

    def steps(self, key: str) -> list[int]:
        return sorted(step for k, step, _, _ in self.metrics if k == key)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def tracker(fake: FakeMlflow, clock: Clock, **kwargs: Any) -> MlflowTracker:
    return MlflowTracker(fake, "run-1", clock=clock, sleep=clock.sleep, **kwargs)


def test_metrics_logged_during_an_outage_arrive_once_mlflow_is_back() -> None:
    fake, clock = FakeMlflow(), Clock()
    t = tracker(fake, clock)
    t.log_params({"lr": 0.1})
    for step in range(100):
        t.log_metrics({"loss": 1.0 / (step + 1)}, step)
    fake.up = False
    for step in range(100, 200):  # training goes on; nothing raises
        t.log_metrics({"loss": 0.5}, step)
        clock.now += 0.1
    assert t.pending >= 100 and not t.active
    fake.up = True
    clock.now += 60
    for step in range(200, 300):
        t.log_metrics({"loss": 0.1}, step)
    t.end()
    assert fake.steps("loss") == list(range(300))  # every step once: none lost, none twice
    assert fake.params == {"lr": "0.1"} and fake.status == "FINISHED" and t.pending == 0


def test_params_and_tags_written_while_down_are_kept_too() -> None:
    fake, clock = FakeMlflow(), Clock()
    t = tracker(fake, clock)
    fake.up = False
    t.set_tags({"haihe.recipe": "digits-cnn"})
    t.log_params({"epochs": 3})
    fake.up = True
    t.end()
    assert fake.tags == {"haihe.recipe": "digits-cnn"} and fake.params == {"epochs": "3"}


def test_a_down_server_is_not_hammered_between_retries() -> None:
    fake, clock = FakeMlflow(), Clock()
    t = tracker(fake, clock)
    fake.up = False
    for step in range(10 * FLUSH_EVERY):  # ten flush points within the first backoff window
        t.log_metrics({"loss": 1.0}, step)
    assert fake.calls == 1
    clock.now += RETRY_MIN_S
    t.log_metrics({"loss": 1.0}, 10 * FLUSH_EVERY)
    t.flush()
    assert fake.calls == 2


def test_an_outage_past_the_end_names_what_was_not_recorded(caplog: pytest.LogCaptureFixture) -> None:
    fake, clock = FakeMlflow(), Clock()
    t = tracker(fake, clock)
    t.log_metrics({"loss": 1.0}, 1)
    t.flush()
    fake.up = False
    for step in range(2, 12):
        t.log_metrics({"loss": 1.0, "acc": 0.5}, step)
    with caplog.at_level(logging.ERROR):
        t.end()  # gives up after a bounded time (fake clock), does not raise
    text = caplog.text
    assert "NOT recorded" in text and "loss steps 2-11 (10 values)" in text and "acc steps 2-11" in text
    assert fake.steps("loss") == [1] and clock.now >= 30


def test_a_long_outage_keeps_the_newest_values_and_names_the_dropped_ones(caplog: pytest.LogCaptureFixture) -> None:
    fake, clock = FakeMlflow(), Clock()
    t = tracker(fake, clock, max_pending=100)
    fake.up = False
    for step in range(250):
        t.log_metrics({"loss": float(step)}, step)
    fake.up = True
    with caplog.at_level(logging.ERROR):
        t.end()
    assert fake.steps("loss") == list(range(150, 250))
    assert "loss steps 0-149 (150 values)" in caplog.text


def test_a_slow_run_sends_its_metrics_within_seconds_not_after_fifty_values() -> None:
    """The job page draws the curve while the run goes on: a run logging one value a minute must not wait for
    FLUSH_EVERY values (50 minutes) before MLflow sees any of them."""
    from haihe.jobs.runtime.tracking import FLUSH_AFTER_S

    fake, clock = FakeMlflow(), Clock()
    t = tracker(fake, clock)
    t.log_metrics({"loss": 2.0}, 1)
    assert fake.steps("loss") == []  # batched: one value is not worth a request yet
    clock.now += FLUSH_AFTER_S
    t.log_metrics({"loss": 1.5}, 2)
    assert fake.steps("loss") == [1, 2]
    calls = fake.calls
    for step in range(3, 3 + FLUSH_EVERY - 1):  # a fast run still sends in batches
        t.log_metrics({"loss": 1.0}, step)
    assert fake.calls == calls


def test_a_job_that_must_register_waits_for_a_busy_mlflow_and_one_that_need_not_does_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CI saw a README job fail with exit 5 because MLflow did not answer one 5 s probe on a loaded box: a job that
    registers a model now asks again with backoff (bounded); a job that only logs starts at once without tracking."""
    from haihe.jobs.runtime import tracking
    from haihe.jobs.runtime.contract import RuntimeEnv

    answers = ["TimeoutError: timed out", "ConnectionRefusedError", None]
    calls: list[str] = []

    def probe(uri: str, timeout: float = 5.0) -> str | None:
        calls.append(uri)
        return answers[min(len(calls) - 1, len(answers) - 1)]

    class Client:
        def __init__(self, uri: str, token: str = "") -> None:
            pass

        def experiment_id(self, name: str) -> str:
            return "1"

        def find_run(self, experiment_id: str, filter_string: str) -> None:
            return None

        def create_run(self, experiment_id: str, tags: object, run_name: object = None) -> str:
            return "a" * 32

    monkeypatch.setattr(tracking, "probe", probe)
    monkeypatch.setattr(tracking, "RestTrackingClient", Client)
    slept: list[float] = []
    env = RuntimeEnv(job_id="j", org="acme", project="p", tracking_uri="http://127.0.0.1:9", cache_dir="/tmp")
    tracker = tracking.start(env, is_main=True, required=True, wait_s=60, sleep=slept.append, system_metrics=False)
    assert tracker.active and len(calls) == 3 and slept == [1.0, 2.0]
    calls.clear()
    slept.clear()
    answers[:] = ["TimeoutError: timed out"]
    assert not tracking.start(env, is_main=True, sleep=slept.append, system_metrics=False).active
    assert len(calls) == 1 and slept == []  # no registration: no waiting
    calls.clear()
    assert not tracking.start(env, is_main=True, required=True, wait_s=10, sleep=slept.append,
                              system_metrics=False).active
    assert sum(slept) < 10 and len(calls) >= 3  # bounded: then it says so and the job fails with exit 5
