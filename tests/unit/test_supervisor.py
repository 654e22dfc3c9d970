"""The embedded stack's supervisor: restart with backoff, the others untouched, a crash loop given up with a reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

from haihe.cluster.supervisor import Child, Supervisor, read_state


class FakeChild:
    def __init__(self, name: str, fail_starts: int = 0) -> None:
        self.name = name
        self.up = True
        self.starts = 0
        self.fail_starts = fail_starts

    def alive(self) -> bool:
        return self.up

    def restart(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("port taken")
        self.up = True

    def child(self) -> Child:
        return Child(self.name, self.alive, self.restart)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _sup(tmp_path: Path, *children: FakeChild, clock: Clock, crash_loop: tuple[int, float] = (3, 60.0)
         ) -> tuple[Supervisor, list[str]]:
    said: list[str] = []
    sup = Supervisor({c.name: c.child() for c in children}, tmp_path / "supervisor.json", backoff=(1.0, 2.0, 4.0),
                     crash_loop=crash_loop, clock=clock, say=said.append)
    return sup, said


def test_a_dead_child_is_restarted_after_its_backoff_and_the_others_are_untouched(tmp_path: Path) -> None:
    clock = Clock()
    api, ray = FakeChild("api"), FakeChild("ray")
    sup, said = _sup(tmp_path, api, ray, clock=clock)
    api.up = False
    sup.step()  # noticed: restart due in 1 s
    assert api.starts == 0 and sup.states["api"].state == "restarting"
    clock.t = 0.5
    sup.step()
    assert api.starts == 0
    clock.t = 1.0
    sup.step()
    assert api.starts == 1 and api.up and sup.states["api"].restarts == 1
    assert ray.starts == 0 and sup.states["ray"].state == "running"
    assert any("api exited" in m for m in said) and any("api restarted" in m for m in said)
    # haihe status reads the file the supervisor keeps (this process is alive, so it is current)
    state = read_state(tmp_path / "supervisor.json")
    assert state["api"]["restarts"] == 1 and state["api"]["state"] == "running"
    assert state["ray"]["restarts"] == 0
    assert oct(os.stat(tmp_path / "supervisor.json").st_mode & 0o777) == "0o600"


def test_backoff_grows_with_repeated_deaths(tmp_path: Path) -> None:
    clock = Clock()
    mlflow = FakeChild("mlflow")
    sup, _ = _sup(tmp_path, mlflow, clock=clock, crash_loop=(10, 60.0))
    waits = []
    for _ in range(3):
        mlflow.up = False
        sup.step()
        waits.append(sup.states["mlflow"].next_try - clock.t)  # type: ignore[operator]
        clock.t = sup.states["mlflow"].next_try  # type: ignore[assignment]
        sup.step()
        assert mlflow.up
    assert waits == [1.0, 2.0, 4.0]


def test_a_crash_loop_is_given_up_with_a_clear_message_and_the_others_keep_running(tmp_path: Path) -> None:
    clock = Clock()
    api, s3 = FakeChild("api"), FakeChild("s3")
    log = tmp_path / "api.log"
    log.write_text("Traceback ...\nImportError: no module named broken\n")
    sup, said = _sup(tmp_path, api, s3, clock=clock)
    sup.children["api"].log_path = log
    for _ in range(3):
        api.up = False
        sup.step()
        clock.t += 10
        sup.step()
    assert sup.given_up() == ["api"]
    assert sup.states["api"].state == "crash-loop"
    message = said[-1]
    assert "api died 3 times" in message and "ImportError: no module named broken" in message
    starts = api.starts
    clock.t += 100
    sup.step()
    assert api.starts == starts  # not restarted again
    assert s3.up and sup.states["s3"].state == "running"
    assert json.loads((tmp_path / "supervisor.json").read_text())["children"]["api"]["state"] == "crash-loop"


def test_deaths_outside_the_window_do_not_count_towards_a_crash_loop(tmp_path: Path) -> None:
    clock = Clock()
    ray = FakeChild("ray")
    sup, _ = _sup(tmp_path, ray, clock=clock, crash_loop=(3, 60.0))
    for _ in range(6):
        ray.up = False
        sup.step()
        clock.t += 61  # each death more than a window after the last
        sup.step()
    assert sup.states["ray"].state == "running" and sup.states["ray"].restarts == 6


def test_a_failed_restart_is_retried_with_backoff(tmp_path: Path) -> None:
    clock = Clock()
    api = FakeChild("api", fail_starts=1)
    sup, _ = _sup(tmp_path, api, clock=clock, crash_loop=(5, 60.0))
    api.up = False
    sup.step()
    clock.t = 1.0
    sup.step()  # the restart raises
    assert sup.states["api"].state == "restarting" and "port taken" in sup.states["api"].last_error
    clock.t = 3.0
    sup.step()
    assert api.up and sup.states["api"].restarts == 1


def test_a_state_file_of_a_dead_supervisor_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"pid": 2**22 + 12345, "children": {"api": {"restarts": 3}}}))
    assert read_state(path) == {}
