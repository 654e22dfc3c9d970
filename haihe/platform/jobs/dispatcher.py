"""Hand jobs to their schedulers after the response, for clients that ask not to wait (``Prefer: respond-async``).

A submit normally waits for the scheduler's answer (201 with the native id). A client sending a sweep or a CI
pipeline may prefer the answer as soon as the job is stored: the request commits the row and its quota reservation
(PENDING, exactly as before the scheduler call), answers 202, and puts the job's id here. A few threads per API
process take ids in batches and run the function they are given: the same
:func:`haihe.platform.jobs.service.dispatch` the request would have run (``service.dispatcher`` builds the process's
one dispatcher with it), with the Launch the request already built: the dispatcher neither re-reads the job's org,
project and user nor renders it again (on a busy API process that work competed with the next request).

Nothing is lost when a process dies with ids still queued: they are PENDING rows, and the reconciler submits
PENDING jobs older than its submit grace, after asking the scheduler whether it knows their tags already.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from haihe.platform.models import Job
from haihe.schedulers.base import JobState, Launch

if TYPE_CHECKING:
    from haihe.platform.context import PlatformContext

log = logging.getLogger(__name__)


class Dispatcher:
    """A queue of stored job ids and ``workers`` threads that submit them, ``batch`` per database session."""

    def __init__(self, ctx: PlatformContext, submit: Callable[[Session, Job, Launch | None], None], workers: int = 2,
                 batch: int = 32) -> None:
        self.ctx = ctx
        self._submit = submit
        self.workers = workers
        self.batch = batch
        self._ids: queue.Queue[tuple[str, Launch | None]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def put(self, job_id: str, launch: Launch | None = None) -> None:
        """Submit this stored PENDING job soon (threads start on first use), with ``launch`` when the caller has
        built it already."""
        with self._lock:
            if not self._threads and not self._stop.is_set():
                self._threads = [threading.Thread(target=self._run, name=f"haihe-dispatch-{i}", daemon=True)
                                 for i in range(self.workers)]
                for t in self._threads:
                    t.start()
        self._ids.put((job_id, launch))

    def pending(self) -> int:
        return self._ids.qsize()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand; ids still queued stay PENDING for the reconciler."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def _take(self) -> list[tuple[str, Launch | None]]:
        try:
            ids = [self._ids.get(timeout=0.5)]
        except queue.Empty:
            return []
        while len(ids) < self.batch:
            try:
                ids.append(self._ids.get_nowait())
            except queue.Empty:
                break
        return ids

    def _run(self) -> None:
        while not self._stop.is_set():
            ids = self._take()
            if ids:
                try:
                    self._dispatch(ids)
                except Exception:  # the reconciler submits what is left PENDING; keep serving the queue
                    log.exception("dispatching %d stored jobs failed; the reconciler will submit them", len(ids))

    def _dispatch(self, ids: list[tuple[str, Launch | None]]) -> None:
        with self.ctx.db.sessions() as session:
            for job_id, launch in ids:
                job = session.get(Job, job_id)
                # only what no one has tried yet: a reconciler may have taken a job that waited past its grace
                if job is None or job.state != JobState.PENDING.value or job.native_id or job.submit_attempts:
                    continue
                self._submit(session, job, launch)
