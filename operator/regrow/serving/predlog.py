"""The sampled, bounded prediction log, and the feedback that joins real outcomes to it.

Requests hand records to a bounded in-memory queue and never wait: when the queue is full the record is
dropped and counted. A writer thread writes what has queued, in batches of JSON lines, to the registry:
``<model>/predictions/<version>/<time>-<host>-<n>.jsonl`` and ``<model>/feedback/<version>/...``.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from regrow.storage import Store

log = logging.getLogger(__name__)
BATCH = 1000


class PredictionLog:
    def __init__(
        self, store: Store, model: str, version: str, sample_percent: int, max_queue: int, flush_seconds: float = 5.0
    ) -> None:
        self.store = store
        self.prefix = (model, version)
        self.fraction = sample_percent / 100
        self.max_queue = max_queue
        self.flush_seconds = flush_seconds
        self.queue: deque[tuple[str, dict[str, Any]]] = deque()
        self.queued = self.dropped = self.written = self.failed = 0  # dropped: queue full; failed: store errors
        self.host = socket.gethostname()
        self.sequence = 0
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self.thread.start()

    def sampled(self) -> bool:
        return self.fraction > 0 and (self.fraction >= 1 or random.random() < self.fraction)

    def offer(self, kind: str, record: dict[str, Any]) -> bool:
        """Queue a record (kind: predictions | feedback) without waiting; False if it was dropped."""
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            return False
        self.queue.append((kind, record))
        self.queued += 1
        if len(self.queue) >= BATCH:
            self.wake.set()
        return True

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.wake.wait(self.flush_seconds)
            self.wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write everything queued so far; a failed write is logged and its records counted as failed."""
        while self.queue:
            batch: dict[str, list[str]] = {}
            for _ in range(min(BATCH, len(self.queue))):
                kind, record = self.queue.popleft()
                batch.setdefault(kind, []).append(json.dumps(record, separators=(",", ":")))
            for kind, lines in batch.items():
                self.sequence += 1
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                key = f"{self.prefix[0]}/{kind}/{self.prefix[1]}/{stamp}-{self.host}-{self.sequence:06d}.jsonl"
                try:
                    self.store.put(key, ("\n".join(lines) + "\n").encode())
                    self.written += len(lines)
                except Exception:  # the store is down: the log is best effort, serving goes on
                    log.exception("Could not write %d %s records to %s", len(lines), kind, key)
                    self.failed += len(lines)

    def close(self) -> None:
        self.stopped.set()
        self.wake.set()
        self.thread.join(10)
        self.flush()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "regrow_prediction_log_records",
            "Prediction log records by outcome.",
            labels=["model", "version", "outcome"],
        )
        for outcome, value in (("queued", self.queued), ("dropped", self.dropped), ("written", self.written),
                               ("failed", self.failed)):  # fmt: skip
            family.add_metric([*self.prefix, outcome], value)
        yield family

    def describe(self) -> list[Metric]:
        return []
