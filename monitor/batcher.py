"""Serving many sessions at once: requests from any thread are gathered into
batches for :meth:`monitor.engine.Engine.run_batch`, run by one worker thread.

A batch holds requests with the same generation options and at most one
request per session (a session's next turn waits for its previous one). Each
submitter gets a :class:`concurrent.futures.Future`.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from monitor.engine import ChatRequest, Engine

log = logging.getLogger(__name__)


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 8, max_wait_s: float = 0.02):
        self.engine, self.max_batch, self.max_wait_s = engine, max_batch, max_wait_s
        self._q: queue.Queue = queue.Queue()
        self._held: list[tuple[ChatRequest, Future]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="axiswatch-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest) -> Future:
        if self._stop.is_set():
            raise RuntimeError("the batcher is closed")
        self.engine.validate(request)  # a bad request fails alone, here, not its whole batch
        fut: Future = Future()
        self._q.put((request, fut))
        return fut

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._q.put(None)
        self._thread.join(timeout)

    def _take(self) -> list[tuple[ChatRequest, Future]]:
        items = self._held
        self._held = []
        if not items:
            first = self._q.get()
            if first is None:
                return []
            items = [first]
        try:
            while len(items) < self.max_batch * 2:
                nxt = self._q.get(timeout=self.max_wait_s)
                if nxt is None:
                    self._stop.set()
                    break
                items.append(nxt)
        except queue.Empty:
            pass
        batch, sessions, key = [], set(), None
        for req, fut in items:
            k = (req.options.max_new_tokens, req.options.temperature, req.options.top_p, req.options.seed)
            if len(batch) < self.max_batch and req.session_id not in sessions and key in (None, k):
                batch.append((req, fut))
                sessions.add(req.session_id)
                key = k
            else:
                self._held.append((req, fut))
        return batch

    def _loop(self) -> None:
        while not (self._stop.is_set() and not self._held and self._q.empty()):
            batch = self._take()
            if not batch:
                continue
            live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self.engine.run_batch([r for r, _ in live])
            except Exception as e:  # noqa: BLE001 - hand every error to the waiting callers
                for _, f in live:
                    f.set_exception(e)
                continue
            for (_, f), res in zip(live, results):
                f.set_result(res)
