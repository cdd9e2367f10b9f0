"""Run one project's reader ahead in a thread, so resources and projects wait on PostHog together.

Network latency, not CPU, bounds most syncs: while dlt extracts one resource, the readers of the others
already fetch their first pages. A bounded queue keeps memory flat; the rate budget is the client's, shared.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Feed:
    """Items of one reader, produced in a daemon thread and consumed by iterating the feed once.

    Args:
        read: called in the thread; yields the items (Arrow tables) for dlt.
        state: the state dict the reader updates; read it after the feed is exhausted.
        cancelled: stops the thread at its next hand-over (the run ended or failed elsewhere).
        depth: items that may wait in the queue.
    """

    def __init__(
        self,
        read: Callable[[], Iterator[Any]],
        state: dict[str, Any],
        cancelled: threading.Event,
        depth: int = 4,
    ) -> None:
        self.state = state
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._cancelled = cancelled
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(read,), daemon=True)
        self._thread.start()

    def _run(self, read: Callable[[], Iterator[Any]]) -> None:
        try:
            for item in read():
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failed(error))

    def _put(self, item: Any) -> bool:
        while not (self._cancelled.is_set() or self._closed.is_set()):
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the thread at its next hand-over; pending items are dropped."""
        self._closed.set()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
