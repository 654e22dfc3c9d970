"""The Checkpointer over a local directory and over an S3 prefix (the datasets library's memory fake)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from haihe.datasets.memory import MemoryStore
from haihe.errors import InvalidInput
from haihe.jobs.runtime.checkpoint import (
    Checkpointer,
    CheckpointStore,
    LocalDirStore,
    ObjectStoreCheckpoints,
    StopSignals,
    checkpoint_name,
    open_store,
)
from haihe.jobs.runtime.contract import RequeueRequested


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "local":
        return LocalDirStore(tmp_path / "ckpt")
    return ObjectStoreCheckpoints(MemoryStore("ckpts"), "org1/job-1/")


def state(value: float) -> dict[str, object]:
    return {"model": {"w": torch.full((3,), value)}, "note": "x"}


def test_save_keeps_newest_k_and_resumes_from_newest(store: CheckpointStore) -> None:
    ck = Checkpointer(store, every=10, keep=2)
    assert ck.latest() is None
    for step in (10, 20, 30):
        ck.save(step, state(step))
    assert ck.steps() == [20, 30]
    assert store.names() == [checkpoint_name(20), checkpoint_name(30)]
    latest = ck.latest()
    assert latest is not None and latest.step == 30
    assert torch.equal(latest.state["model"]["w"], torch.full((3,), 30.0))
    assert latest.state["step"] == 30
    # a fresh process (a requeued job) sees the same newest checkpoint
    again = Checkpointer(store, every=10, keep=2).latest()
    assert again is not None and again.step == 30


def test_step_end_saves_on_interval_only(store: CheckpointStore) -> None:
    ck = Checkpointer(store, every=3, keep=5)
    for step in range(1, 10):
        ck.step_end(step, lambda s=step: state(s))
    assert ck.steps() == [3, 6, 9]


def test_non_writer_never_writes_but_reads(store: CheckpointStore) -> None:
    Checkpointer(store, keep=2).save(4, state(4))
    reader = Checkpointer(store, every=1, writer=False)
    reader.step_end(5, lambda: state(5))
    assert reader.steps() == [4]
    latest = reader.latest()
    assert latest is not None and latest.step == 4


def test_sigterm_checkpoints_at_step_end_and_requests_requeue(store: CheckpointStore) -> None:
    barriers: list[int] = []
    signals = StopSignals().install()
    try:
        ck = Checkpointer(store, every=100, keep=2, signals=signals, barrier=lambda: barriers.append(1))
        ck.step_end(1, lambda: state(1))
        assert ck.steps() == []
        os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the installed handler
        with pytest.raises(RequeueRequested) as stop:
            ck.step_end(2, lambda: state(2))
    finally:
        signals.restore()
    assert stop.value.step == 2 and stop.value.signum == signal.SIGTERM
    assert ck.steps() == [2] and barriers == [1]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_usr1_and_agreement_stop_every_rank_at_the_same_step(store: CheckpointStore) -> None:
    other_rank_saw_signal = {"flag": False}

    def agree(mine: bool) -> bool:  # an all-reduce(MAX) across two ranks, the other one's flag held here
        return mine or other_rank_saw_signal["flag"]

    ck = Checkpointer(store, every=0, signals=StopSignals(), agree=agree)
    ck.step_end(1, lambda: state(1))
    other_rank_saw_signal["flag"] = True
    with pytest.raises(RequeueRequested):
        ck.step_end(2, lambda: state(2))
    assert ck.steps() == [2]
    signals = StopSignals()
    signals.trigger(signal.SIGUSR1)
    with pytest.raises(RequeueRequested) as stop:
        Checkpointer(store, signals=signals).step_end(3, lambda: state(3))
    assert stop.value.signum == signal.SIGUSR1


def test_local_store_ignores_unfinished_files(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path)
    (tmp_path / ".step-000000099.pt.abc").write_bytes(b"half")  # a crash mid-write
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    ck = Checkpointer(store)
    ck.save(7, state(7))
    assert ck.steps() == [7]


def test_open_store_by_uri(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "c")), LocalDirStore)
    assert isinstance(open_store(f"file://{tmp_path}/c"), LocalDirStore)
    s3 = open_store("s3://bucket/jobs/1", endpoint="http://127.0.0.1:9", access_key="k", secret_key="secretkey")
    assert isinstance(s3, ObjectStoreCheckpoints) and s3.uri == "s3://bucket/jobs/1/"
    with pytest.raises(InvalidInput) as err:
        open_store("s3://bucket/x")
    assert err.value.field == "HAIHE_S3_ENDPOINT"
    with pytest.raises(InvalidInput):
        open_store("gs://bucket/x")
    with pytest.raises(InvalidInput):
        Checkpointer(None, keep=0)


def test_stop_agreement_runs_only_every_n_steps(store: CheckpointStore) -> None:
    asked: list[int] = []
    signals = StopSignals()
    ck = Checkpointer(store, signals=signals, agree=lambda flag: asked.append(1) or flag, check_every=10)
    signals.trigger(signal.SIGTERM)
    for step in range(1, 10):
        ck.step_end(step, lambda: state(0))  # not a check step: no collective, keep training
    assert asked == [] and ck.steps() == []
    with pytest.raises(RequeueRequested):
        ck.step_end(10, lambda: state(10))
    assert asked == [1] and ck.steps() == [10]
