"""Each label graded once: the live quality of the predictions this process issued.

A label reaches whichever pod the Service picks, and the pods share no state. So each id is graded by the
process that issued it (the id names it: ``Claims.issuer``, a random token of the process), from the store,
where every pod writes the labels it accepts (``<model>/feedback/<version>/<time>-<writer>-<n>.jsonl``, see
``regrow.serving.predlog``). Every READ_SECONDS the issuer lists the feedback files of the versions it served
that are new since its last look (by the time in their names, less MARGIN_SECONDS for writers whose clocks or
queues run late), reads them, and grades each of its own ids once: a later label for an id replaces the earlier
one (as training takes the latest), and a repeat changes nothing. A label counts only once it is written, a few
seconds after it was posted (the prediction log's flush, then the next look).

What it holds is bounded: MAX_IDS graded ids, the earliest issued forgotten first. An id issued no later than
the last one forgotten is not graded again, so that forgetting never lets a replay count twice.

``quality(since)`` sums what the labels of the ids issued since then graded: the canary's quality gate asks
each pod for the ids issued inside its step (``GET /v2/models/<model>/quality?since=<unix seconds>`` on the
metrics port), so that neither ids gathered before the step nor replays count in it. The counters
``regrow_feedback_labelled_rows_total`` and ``regrow_feedback_correct_rows_total`` (a classifier's) or
``regrow_feedback_absolute_error_total`` (a regressor's) count each id's first label, as counters cannot go
back.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from regrow.contracts import Graded, Quality, log_prefix, log_start, logged_at
from regrow.serving.feedback import Claims, Rejected, Signer
from regrow.storage import Store

log = logging.getLogger(__name__)

READ_SECONDS = 5.0
MARGIN_SECONDS = 120  # a feedback file named up to this long before the last look is still looked for
MAX_IDS = 100_000


def feedback_folder(claims: Claims) -> str:
    """Where a label of the id of ``claims`` is written, under the feedback log: its version's folder, and in it
    the issuer's, so that each pod reads the labels of its own ids alone."""
    return f"{claims.version}/{claims.issuer}" if claims.issuer else claims.version


def grade(claims: Claims, label: Any, classifier: bool) -> tuple[int, float]:
    """The rows a label grades and their grade (rows right, or the absolute errors summed), against what the id
    says was predicted; (0, 0) when it does not say (too many rows, or a regressor of several outputs)."""
    if claims.predicted is None:
        return 0, 0.0
    rows, graded = 0, 0.0
    for truth, guess in zip(label if isinstance(label, list) else [label], claims.predicted, strict=True):
        if classifier:
            graded += int(type(truth) is type(guess) and truth == guess)
        elif type(guess) in (int, float):
            graded += abs(float(truth) - float(guess))
        else:
            continue
        rows += 1
    return rows, graded


@dataclass
class _Entry:
    version: str
    issued: int
    rows: int
    graded: float
    time: float  # when its label was accepted


class LabelBook:
    """The graded ids this process issued: each once, a later label replacing an earlier."""

    def __init__(self, model: str, classifier: bool, most: int = MAX_IDS) -> None:
        self.model, self.classifier, self.most = model, classifier, most
        self.entries: dict[str, _Entry] = {}  # by the id's nonce
        self.order: list[tuple[int, str]] = []  # (issued, nonce): a heap, to forget the earliest issued first
        self.floor: int | None = None  # ids issued no later than this are not graded again
        self.sums: defaultdict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0, 0.0])  # ids, rows, grade
        self.first: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # counters: rows, grade
        self.lock = threading.Lock()

    def add(self, claims: Claims, label: Any, when: float) -> bool:
        """Grade one label of an id this process issued; False when it changed nothing (a repeat, an earlier
        label than the one held, or an id issued before what was forgotten)."""
        rows, graded = grade(claims, label, self.classifier)
        with self.lock:
            held = self.entries.get(claims.nonce)
            if held is None and self.floor is not None and claims.issued <= self.floor:
                return False
            if held is not None and held.time > when:
                return False
            if held is not None and (held.rows, held.graded) == (rows, graded):
                held.time = when  # the same grade, later: a repeat
                return False
            if held is not None:
                self._count(held, -1)
            else:
                self.first[claims.version][0] += rows
                self.first[claims.version][1] += graded
                heapq.heappush(self.order, (claims.issued, claims.nonce))
            entry = self.entries[claims.nonce] = _Entry(claims.version, claims.issued, rows, graded, when)
            self._count(entry, 1)
            while len(self.entries) > self.most:
                issued, nonce = heapq.heappop(self.order)
                self._count(self.entries.pop(nonce), -1)
                self.floor = issued if self.floor is None else max(self.floor, issued)
        return True

    def _count(self, entry: _Entry, sign: int) -> None:
        sums = self.sums[(entry.version, entry.issued)]
        sums[0] += sign
        sums[1] += sign * entry.rows
        sums[2] += sign * entry.graded
        if not sums[0]:
            del self.sums[(entry.version, entry.issued)]

    def quality(self, since: int) -> Quality:
        """What the labels of the ids issued at ``since`` or later graded, per version."""
        out: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
        with self.lock:
            for (version, issued), (ids, rows, graded) in self.sums.items():
                if issued >= since:
                    totals = out[version]
                    totals[0], totals[1], totals[2] = totals[0] + ids, totals[1] + rows, totals[2] + graded
            complete = self.floor is None or self.floor < since
        versions = {  # a sum of floats added and taken away may end a hair below zero
            v: Graded(ids=int(i), rows=int(r), graded=max(0.0, g)) for v, (i, r, g) in sorted(out.items())
        }
        return Quality(since=since, complete=complete, versions=versions)

    def collect(self) -> Iterator[Metric]:
        labelled = CounterMetricFamily(
            "regrow_feedback_labelled_rows", "Predicted rows a label graded, by the version that predicted them "
            "(each id's first label, counted by the process that issued it).", labels=["model", "version"],
        )  # fmt: skip
        graded = CounterMetricFamily(
            "regrow_feedback_correct_rows" if self.classifier else "regrow_feedback_absolute_error",
            "Of the labelled rows, those predicted right (a classifier)" if self.classifier
            else "The labelled rows' absolute errors, summed (a regressor)",
            labels=["model", "version"],
        )  # fmt: skip
        with self.lock:
            first = {version: tuple(values) for version, values in self.first.items()}
        for version, (rows, grade_sum) in sorted(first.items()):
            labelled.add_metric([self.model, version], rows)
            graded.add_metric([self.model, version], grade_sum)
        yield from (labelled, graded)

    def describe(self) -> list[Metric]:
        return []


class LabelReader:
    """Reads the labels written to the store for ``version``, and grades in its ``book`` those of the ids this
    process issued (``issuer``): on a thread of its own, every ``interval`` seconds."""

    def __init__(self, store: Store, model: str, version: str, classifier: bool, signer: Signer, issuer: str,
                 interval: float = READ_SECONDS) -> None:  # fmt: skip
        self.store, self.signer, self.issuer, self.interval = store, signer, issuer, interval
        self.book = LabelBook(model, classifier)
        self.model, self.folder = model, f"{version}/{issuer}"
        self.since = time.time()  # files named from then on are looked for: the process issued no id before
        self.seen: dict[str, float] = {}  # files read, and when they were named
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="label-reader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(10)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.read(time.time())
            except Exception:  # the store is down: the next look tries again
                log.exception("Could not read the labels of %s under %s", self.model, self.folder)

    def read(self, now: float) -> int:
        """One look: the files new since the last, read; returns the labels that changed a grade."""
        changed = 0
        start = log_start(self.model, "feedback", self.folder, self.since - MARGIN_SECONDS)
        for key in self.store.list(log_prefix(self.model, "feedback", self.folder), start_after=start):
            named = logged_at(key)
            if named is not None and key not in self.seen:
                changed += self._read(key)
                self.seen[key] = named
        self.since = now
        self.seen = {key: named for key, named in self.seen.items() if named >= now - 2 * MARGIN_SECONDS}
        return changed

    def _read(self, key: str) -> int:
        changed = 0
        for line in self.store.get(key).splitlines():
            try:
                record = json.loads(line)
                when = float(record["time"])
                claims = self.signer.verify(record["id"], when)
                if claims.issuer == self.issuer:
                    changed += self.book.add(claims, record["label"], when)
            except (ValueError, KeyError, TypeError, Rejected):
                continue  # not a label this deployment's pods wrote
        return changed
