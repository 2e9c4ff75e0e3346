"""The micro-batcher of one model graph: requests from every client are coalesced into batches, run off the loop
and split back. A bounded queue answers 429 at once; a cancelled caller's rows are dropped before they run."""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .errors import InternalError, Overloaded, ServiceError
from .metrics import Metrics

log = logging.getLogger("titok.batcher")
RunFn = Callable[..., Awaitable[np.ndarray]]


def request_ids(ids) -> str:
    """The distinct request ids of a batch's rows, comma-separated, for the backend's logs."""
    return ",".join(dict.fromkeys(i for i in ids if i))


@dataclass(eq=False)
class _Job:
    """Some rows of one request, waiting for a batch."""

    inputs: tuple[np.ndarray, ...]
    future: asyncio.Future
    enqueued: float
    request_id: str

    @property
    def rows(self) -> int:
        return len(self.inputs[0])


@dataclass(eq=False)
class Seats:
    """Queue rows held for a request from its admission until it submits them (or leaves)."""

    rows: int


class MicroBatcher:
    """Coalesces calls of one graph (up to ``max_batch_size`` rows, waiting at most ``max_wait_s``).

    Up to ``max_in_flight`` batches are handed to the backend at once: the next batch waits in the backend's own
    queue (the embedded backend's worker thread) while one runs, and starts the moment it ends. Otherwise every
    batch would wait for the event loop to see the last one end, behind the answers of the batch before: idle
    graph time that cost a quarter of tokenize's rate at concurrency 32 (bench/routes.py)."""

    def __init__(
        self,
        model: str,
        graph: str,
        run: RunFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics,
        backend: str,
        max_in_flight: int = 2,
    ):
        self.model, self.graph, self._run = model, graph, run
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task] = set()
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._reserved_rows = 0  # held by admitted requests that have not submitted yet (Seats)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._depth = metrics.queue_depth.labels(model, graph)
        self._wait = metrics.queue_wait.labels(model, graph)
        self._batch = metrics.batch_size.labels(model, graph)
        self._infer = metrics.inference_seconds.labels(model, graph, backend)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.model}-{self.graph}")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in self._queue:
            job.future.cancel()

    def _refuse_beyond(self, rows: int) -> None:
        if self._queued_rows + self._reserved_rows + rows > self.max_queue:
            raise Overloaded(f"the {self.graph} queue of {self.model} is full; retry shortly")

    @contextmanager
    def reserve(self, rows: int) -> Iterator[Seats]:
        """Hold ``rows`` of the queue for work that comes later (429 now if they are not free), so that a request
        is refused before its earlier stages run, not after; released on exit unless ``submit`` took them."""
        self._refuse_beyond(rows)
        seats = Seats(rows)
        self._reserved_rows += rows
        try:
            yield seats
        finally:
            self._reserved_rows -= seats.rows
            seats.rows = 0

    async def submit(self, *inputs: np.ndarray, request_id: str = "", seats: Seats | None = None) -> np.ndarray:
        """The graph's output for ``inputs`` (arrays with the same first dimension), batched with others; ``seats``
        from ``reserve`` are taken instead of checking the queue again."""
        rows = len(inputs[0])
        if seats is not None:
            self._reserved_rows -= seats.rows
            seats.rows = 0
        else:
            self._refuse_beyond(rows)
        loop = asyncio.get_running_loop()
        jobs = []
        for begin in range(0, rows, self.max_batch_size):  # a request larger than a batch runs as several
            part = tuple(x[begin : begin + self.max_batch_size] for x in inputs)
            job = _Job(part, loop.create_future(), time.monotonic(), request_id)
            jobs.append(job)
            self._queue.append(job)
            self._queued_rows += job.rows
        self._depth.set(self._queued_rows)
        self._wake.set()
        try:
            parts = [await job.future for job in jobs]
        except BaseException:
            self._withdraw(jobs)  # the caller left (or failed): its waiting rows must not run
            raise
        return np.concatenate(parts)

    def _withdraw(self, jobs: list[_Job]) -> None:
        """Cancel ``jobs``; those still queued leave the queue (and its count) at once."""
        for job in jobs:
            job.future.cancel()
            if job in self._queue:
                self._queue.remove(job)
                self._queued_rows -= job.rows
        self._depth.set(self._queued_rows)

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()  # a batch may be formed: fewer than max_in_flight are with the backend
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run_batch(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:  # never expected: _run_batch answers its callers
            log.error("batch of %s/%s failed", self.model, self.graph, exc_info=task.exception())

    async def _next_batch(self) -> list[_Job]:
        """The next batch: a full one, or what the queue holds once its oldest job has waited max_wait."""
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        oldest = self._queue[0].enqueued
        while self._queued_rows < self.max_batch_size:
            remaining = oldest + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self._take()

    def _take(self) -> list[_Job]:
        batch, rows = [], 0
        while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
            job = self._queue.popleft()
            self._queued_rows -= job.rows
            if job.future.done():  # cancelled while waiting
                continue
            batch.append(job)
            rows += job.rows
        self._depth.set(self._queued_rows)
        return batch

    async def _run_batch(self, batch: list[_Job]) -> None:
        """Run one batch; every failure reaches every caller of the batch: the backend's own (503, 429, 504) as
        they are, anything else (a bug) as a 500 with its traceback in the log."""
        now = time.monotonic()
        for job in batch:
            self._wait.observe(now - job.enqueued)
        try:
            output = await self._infer_batch(batch)
        except asyncio.CancelledError:  # the batcher stops: its callers are not left waiting
            for job in batch:
                job.future.cancel()
            raise
        except ServiceError as e:
            return self._fail(batch, e)
        except Exception:
            log.exception("batch of %s/%s failed", self.model, self.graph)
            return self._fail(batch, InternalError())
        offset = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(output[offset : offset + job.rows])
            offset += job.rows

    async def _infer_batch(self, batch: list[_Job]) -> np.ndarray:
        inputs = [np.concatenate(parts) for parts in zip(*(job.inputs for job in batch), strict=True)]
        rows = len(inputs[0])
        self._batch.observe(rows)
        start = time.perf_counter()
        try:
            output = await self._run(*inputs, request_id=request_ids(job.request_id for job in batch))
        finally:
            self._infer.observe(time.perf_counter() - start)
        if len(output) != rows:
            raise RuntimeError(f"{self.graph} answered {len(output)} rows for {rows}")
        return output

    @staticmethod
    def _fail(batch: list[_Job], error: ServiceError) -> None:
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)
