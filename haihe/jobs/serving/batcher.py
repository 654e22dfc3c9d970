"""Dynamic batching for the plain HTTP model server: the same idea as ``@serve.batch``, with one worker thread.

Callers hand in their rows and wait on a future; the worker takes the first waiting request, gathers more for at
most ``wait_s`` (or until ``max_batch_size`` requests), predicts once and resolves every future with its slice.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from haihe.jobs.serving.predictor import join_rows, split_rows


class MicroBatcher:
    def __init__(self, predict: Callable[[Sequence[Any]], list[Any]], max_batch_size: int, wait_s: float) -> None:
        self._predict = predict
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = max(0.0, wait_s)
        self._queue: queue.Queue[tuple[list[Any], Future[list[Any]]] | None] = queue.Queue()
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: list[Any]) -> Future[list[Any]]:
        future: Future[list[Any]] = Future()
        self._queue.put((rows, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._serve(batch)

    def _serve(self, batch: list[tuple[list[Any], Future[list[Any]]]]) -> None:
        flat, counts = split_rows([rows for rows, _ in batch])
        self.batches += 1
        try:
            results = join_rows(self._predict(flat), counts)
        except Exception as exc:  # every waiting caller gets the model's error, the worker keeps going
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
