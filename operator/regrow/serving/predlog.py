"""The sampled, bounded prediction log, and the feedback that joins real outcomes to it.

Requests hand records to bounded in-memory queues and never wait: one queue for predictions and one for
feedback, each bounded in records and in bytes, so that neither can crowd the other out; a record that does
not fit is dropped and counted. A writer thread writes what has queued, in batches of JSON lines, to the
registry: ``<model>/predictions/<version>/<time>-<host>-<token>-<n>.jsonl`` and ``<model>/feedback/<version>/...``
(feedback under the version that made the prediction it labels, in a folder of the process that issued its id).
With a retention, a thread of its own deletes the model's log files (every version's) older than it, about once
an hour in each pod (at a time of its own), so that neither a flood of records nor the years fill the store.
(Deployments that log under one model name in one registry share the log: the shortest retention wins.)
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from regrow.contracts import LOG_KINDS, log_key, log_prefix, logged_at
from regrow.storage import Store

log = logging.getLogger(__name__)
BATCH = 1000


KINDS = LOG_KINDS
MAX_QUEUE_BYTES = 16 * 1024 * 1024  # per queue
SWEEP_SECONDS = 3600.0  # how often each pod deletes what is past the retention


class PredictionLog:
    def __init__(
        self, store: Store, model: str, version: str, sample_percent: int, max_queue: int, flush_seconds: float = 5.0,
        max_bytes: int = MAX_QUEUE_BYTES, retention: float | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.retention = retention
        self.next_sweep = time.time() + random.uniform(0, SWEEP_SECONDS)  # the pods of a model take turns
        self.deleted: Counter[str] = Counter()  # files deleted past the retention, per kind
        self.prefix = (model, version)
        self.fraction = sample_percent / 100
        self.max_queue, self.max_bytes = max_queue, max_bytes
        self.flush_seconds = flush_seconds
        self.queues: dict[str, deque[tuple[str, str]]] = {kind: deque() for kind in KINDS}  # (version, line)
        # Bytes queued and bytes taken out, each written by one thread only (the event loop, the writer).
        self.bytes_in, self.bytes_out = dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0)
        # queued, dropped (queue full), written, failed (store errors), per kind
        self.counts: Counter[tuple[str, str]] = Counter()
        # A log of its own in the file names: a restarted container keeps its host name and counts from 1 again.
        self.writer = f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.sequence = 0
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self.thread.start()
        if retention is not None:
            threading.Thread(target=self._sweep_forever, name="prediction-log-sweep", daemon=True).start()

    def sampled(self) -> bool:
        return self.fraction > 0 and (self.fraction >= 1 or random.random() < self.fraction)

    def offer(self, kind: str, record: dict[str, Any]) -> bool:
        """Queue a record (kind: predictions | feedback) of the version served, without waiting; False if its
        queue is full."""
        return self.offer_all(kind, [(self.prefix[1], record)])

    def offer_all(self, kind: str, records: list[tuple[str, dict[str, Any]]]) -> bool:
        """Queue (version, record) pairs, all or none (none when they do not fit), without waiting."""
        lines = [(version, json.dumps(record, separators=(",", ":"))) for version, record in records]
        queue = self.queues[kind]
        size = sum(len(line) for _, line in lines)
        if (
            len(queue) + len(lines) > self.max_queue
            or self.bytes_in[kind] - self.bytes_out[kind] + size > self.max_bytes
        ):
            self.counts[(kind, "dropped")] += len(lines)
            return False
        queue.extend(lines)
        self.bytes_in[kind] += size
        self.counts[(kind, "queued")] += len(lines)
        if len(queue) >= BATCH:
            self.wake.set()
        return True

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.wake.wait(self.flush_seconds)
            self.wake.clear()
            self.flush()

    def _sweep_forever(self) -> None:
        """On a thread of its own, so that a long listing never holds up the writes."""
        while not self.stopped.wait(max(0.0, self.next_sweep - time.time())):
            self.next_sweep = time.time() + SWEEP_SECONDS
            try:
                self.sweep(time.time())
            except Exception:  # the store is down: the next sweep tries again
                log.exception("Could not delete the old files of the prediction log")

    def sweep(self, now: float) -> int:
        """Delete the files of the model's log (every version's predictions and labels) written more than the
        retention before ``now``; returns how many."""
        assert self.retention is not None
        deleted = 0
        for kind in KINDS:
            for key in self.store.list(log_prefix(self.prefix[0], kind)):
                written = logged_at(key)
                if written is not None and written < now - self.retention:
                    self.store.delete(key)
                    self.deleted[kind] += 1
                    deleted += 1
        if deleted:
            log.info("Deleted %d files of the prediction log of %s older than its retention", deleted, self.prefix[0])
        return deleted

    def flush(self) -> None:
        """Write everything queued so far; a failed write is logged and its records counted as failed."""
        for kind, queue in self.queues.items():
            while queue:
                batch: dict[str, list[str]] = {}
                for _ in range(min(BATCH, len(queue))):
                    version, line = queue.popleft()
                    self.bytes_out[kind] += len(line)
                    batch.setdefault(version, []).append(line)
                for version, lines in batch.items():
                    self._write(kind, version, lines)

    def _write(self, kind: str, version: str, lines: list[str]) -> None:
        self.sequence += 1
        key = log_key(self.prefix[0], kind, version, time.time(), self.writer, self.sequence)
        try:
            self.store.put(key, ("\n".join(lines) + "\n").encode())
            self.counts[(kind, "written")] += len(lines)
        except Exception:  # the store is down: the log is best effort, serving goes on
            log.exception("Could not write %d %s records to %s", len(lines), kind, key)
            self.counts[(kind, "failed")] += len(lines)

    def close(self) -> None:
        self.stopped.set()
        self.wake.set()
        self.thread.join(10)
        self.flush()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "regrow_prediction_log_records",
            "Prediction log records by kind (predictions, feedback) and outcome (queued, dropped: its queue was "
            "full, written, failed: the store refused).",
            labels=["model", "version", "kind", "outcome"],
        )
        for kind in KINDS:
            for outcome in ("queued", "dropped", "written", "failed"):
                family.add_metric([*self.prefix, kind, outcome], self.counts[(kind, outcome)])
        deleted = CounterMetricFamily(
            "regrow_prediction_log_deleted_files", "Files of the model's log deleted once older than its retention.",
            labels=["model", "kind"],
        )  # fmt: skip
        for kind in KINDS:
            deleted.add_metric([self.prefix[0], kind], self.deleted[kind])
        yield from (family, deleted)

    def describe(self) -> list[Metric]:
        return []
