"""Score on many threads, write from one: the shape of every scoring run.

A judge call is I/O (hundreds of milliseconds of waiting); a store write is a
transaction that, on SQLite, waits for the disk and admits one writer at a time.
Doing both on the same thread (claim, judge, log, confirm per trace) leaves judge
slots idle while their threads queue for the store. Here ``concurrency`` threads
only run the scorer, and one writer thread takes whatever results are waiting and
writes them together (``TraceScorer.commit``: one MLflow transaction, one ledger
transaction), then hands the outcomes back. While it writes, more results pile
up, so the batches grow exactly when the store is the bottleneck.

Claims are taken by the feeding thread just before traces are handed to the
scorer threads. How many traces may wait claimed but unscored adapts to the
scorer's speed: about a tenth of the lease TTL's worth of work (hundreds of
traces for a code scorer, so reads, claims and writes come in large batches;
about twice ``concurrency`` for a slow judge), so a claim never waits long
enough to look stale to another worker.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlflow.entities import Trace

from mlflow_llmops.scoring.runner import PendingWrite, TraceOutcome, TraceScorer

log = logging.getLogger(__name__)
_STOP = object()

#: Cyclic-GC thresholds while scoring runs (at least these; never lowered).
SCORING_GC_THRESHOLD = (50_000, 20, 10)
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def fewer_gc_pauses() -> Iterator[None]:
    """Run the block with fewer cyclic garbage collections; the thresholds are put back
    when the last such block of the process ends.

    Scoring allocates millions of short-lived objects (trace entities, span dicts, rows),
    almost none of them in cycles, while MLflow, SQLAlchemy and pydantic keep a million
    long-lived objects. Every 700 net allocations the default thresholds start a
    collection, and every few thousand traces a full one walks all those long-lived
    objects: a third of a code-scorer backfill's CPU. Reference counting still frees
    everything not in a cycle at once; cycles wait a little longer."""
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(
                *(max(a, b) for a, b in zip(_gc_saved, SCORING_GC_THRESHOLD, strict=True))
            )
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


class ScoringPipeline:
    """``put`` traces, collect ``TraceOutcome``s with ``wait``/``drain``.

    ``on_commit(outcomes)`` runs on the writer thread right after each batch is
    confirmed in the ledger (the backfill marks its work items there). A failure of
    the writer (the store is down) stops the pipeline and is raised by the next
    ``put``/``wait``/``drain``; the traces it held stay claimed and are taken over
    later, as after a crash.
    """

    def __init__(
        self,
        worker: TraceScorer,
        *,
        concurrency: int,
        on_commit: Callable[[list[TraceOutcome]], None] | None = None,
        max_batch: int = 1000,
        linger_s: float = 0.25,
        max_ahead: int = 1024,
        horizon_s: float | None = None,
    ) -> None:
        self.worker = worker
        self.concurrency = max(1, concurrency)
        self.on_commit = on_commit
        self.max_batch = max_batch
        #: How long the writer waits for more results to join a batch (each batch costs a
        #: few milliseconds of CPU and, on SQLite, a disk sync, whatever its size).
        self.linger_s = linger_s
        self.max_ahead = max(max_ahead, 2 * self.concurrency)
        #: Scoring time that may wait claimed ahead of the scorer threads.
        self.horizon_s = worker.ledger.lease_ttl_ms / 10_000 if horizon_s is None else horizon_s
        self._avg_s: float | None = None  # moving average of one trace's scoring time
        self._timed = 0
        self._last_put = 0
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="llmops-score")
        self._queue: queue.Queue[Any] = queue.Queue()
        self._cv = threading.Condition()
        self._scoring = 0  # handed to the scorer threads, not scored yet
        self._writing = 0  # scored (or decided), not written yet
        self._done: list[TraceOutcome] = []
        self._error: BaseException | None = None
        self._queued: dict[int, tuple[Trace, Any]] = {}  # claimed, not started by a scorer
        self._writer = threading.Thread(
            target=self._write_loop, name="llmops-score-writer", daemon=True
        )
        self._writer.start()
        self._closed = False

    # -- feeding side ---------------------------------------------------------
    @property
    def pending(self) -> int:
        """Traces put and not yet written (their outcomes not yet returned)."""
        with self._cv:
            return self._scoring + self._writing

    def room(self) -> int:
        """How many more traces to put now to keep every scorer thread busy."""
        with self._cv:
            self._raise()
            return self._room()

    def ahead(self) -> int:
        """Traces that may be claimed and waiting for a scorer thread, scoring included."""
        low = 2 * self.concurrency
        if self._avg_s is None or self._timed < self.concurrency:
            return low
        return max(
            low,
            min(self.max_ahead, int(self.concurrency * self.horizon_s / max(self._avg_s, 1e-4))),
        )

    def _room(self) -> int:
        """Free places, once at least half the look-ahead is free. Refills grow by doubling,
        so the first large one (slow to read and claim) never starts on an empty queue."""
        ahead = self.ahead()
        free = min(
            ahead - self._scoring, ahead + 2 * self.max_batch - self._scoring - self._writing
        )
        if free < max(1, ahead // 2):
            return 0
        return min(free, max(2 * self.concurrency, 2 * self._last_put))

    def put(self, traces: Sequence[Trace]) -> None:
        """Claim ``traces`` and score the ones claimed (the others end as ``skipped``, or
        ``held`` while another live worker holds them)."""
        if not traces:
            return
        self._raise()
        claims = self.worker.claim(traces)
        with self._cv:
            self._last_put = len(traces)
            self._scoring += sum(c.ours for c in claims)
            self._writing += sum(not c.ours for c in claims)
        for trace, claim in zip(traces, claims, strict=True):
            if not claim.ours:
                self._queue.put(self.worker.evaluate(trace, claim))
            else:
                with self._cv:
                    self._queued[id(trace)] = (trace, claim)
                self._pool.submit(self._evaluate, trace, claim)

    def _evaluate(self, trace: Trace, claim: Any) -> None:
        with self._cv:
            self._queued.pop(id(trace), None)
        t0 = time.monotonic()
        try:
            result: Any = self.worker.evaluate(trace, claim)
        except BaseException as e:  # noqa: BLE001 - handed to the writer, raised to the feeder
            result = e
        took = time.monotonic() - t0
        with self._cv:
            self._avg_s = took if self._avg_s is None else 0.9 * self._avg_s + 0.1 * took
            self._timed += 1
            self._scoring -= 1
            self._writing += 1
            # the feeder waits here only for room (outcomes and "nothing pending" come from
            # the writer): waking it for every trace scored costs a thread switch each
            if self._room() > 0:
                self._cv.notify_all()
        self._queue.put(result)

    def wait(self, timeout: float | None = None, *, for_room: bool = True) -> list[TraceOutcome]:
        """Block until there are outcomes (or, with ``for_room``, room for more traces, or
        nothing is pending); the outcomes not returned yet."""
        with self._cv:
            self._cv.wait_for(
                lambda: (
                    bool(self._done)
                    or self._error is not None
                    or self._scoring + self._writing == 0
                    or (for_room and self._room() > 0)
                ),
                timeout,
            )
            self._raise()
            out, self._done = self._done, []
            return out

    def drain(self) -> list[TraceOutcome]:
        """Block until everything put is written; the outcomes not returned yet."""
        with self._cv:
            self._cv.wait_for(lambda: self._error is not None or self._scoring + self._writing == 0)
            self._raise()
            out, self._done = self._done, []
            return out

    def feed(self, traces: Sequence[Trace]) -> list[TraceOutcome]:
        """Put ``traces`` as room frees up (each slice claimed just before it is scored);
        the outcomes that came back meanwhile. The last slice may still be scoring."""
        out: list[TraceOutcome] = []
        i = 0
        while i < len(traces):
            n = self.room()
            if n == 0:
                out.extend(self.wait())
                continue
            self.put(traces[i : i + n])
            i += n
        return out

    def score_all(self, traces: Sequence[Trace]) -> list[TraceOutcome]:
        """``feed`` then ``drain``: every outcome, including those of earlier puts."""
        return self.feed(traces) + self.drain()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer side ------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = [first], False
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    left = deadline - time.monotonic()
                    with self._cv:
                        idle = self._scoring == 0  # nothing more is coming soon
                    if left <= 0 or idle:
                        break
                    try:
                        item = self._queue.get(timeout=min(left, 0.02))
                    except queue.Empty:
                        continue
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[Any]) -> None:
        outcomes: list[TraceOutcome] = []
        error: BaseException | None = None
        if self._error is None:
            try:
                failed = next((b for b in batch if isinstance(b, BaseException)), None)
                pending: list[PendingWrite] = [b for b in batch if isinstance(b, PendingWrite)]
                outcomes = self.worker.commit(pending)
                if self.on_commit is not None and outcomes:
                    self.on_commit(outcomes)
                error = failed
            except BaseException as e:  # noqa: BLE001 - raised to the feeder
                error, outcomes = e, []
        with self._cv:
            self._writing -= len(batch)
            self._done.extend(outcomes)
            if error is not None and self._error is None:
                self._error = error
            self._cv.notify_all()

    # -- lifetime -------------------------------------------------------------
    def close(self) -> None:
        """Stop: traces being scored are finished and written; traces still queued (the run
        stopped early, e.g. on an error) are not scored and their claims are given back."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue.put(_STOP)
        self._writer.join()
        self.worker.writer.close()
        with self._cv:
            never = list(self._queued.values())
            self._queued.clear()
        if never:
            try:
                self.worker.ledger.release([(self.worker.key(t), c) for t, c in never])
            except Exception:  # noqa: BLE001 - the store may be what failed: leases expire
                log.warning(
                    "could not give back %d unscored claims; they are taken over "
                    "after scoring.lease_ttl",
                    len(never),
                    exc_info=True,
                )

    def __enter__(self) -> ScoringPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
