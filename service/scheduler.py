"""Step-level generation scheduling: every in-flight generation of a model advances together, one call of the step
graph per step (generator with its null-class rows, guidance, sampling and re-masking, all in the graph); new
requests join at the next step, finished ones leave.

The host only stacks each generation's per-row inputs (``titok_core.sampler.step_inputs``) and takes the tokens
back. The sampling's randomness is counter-based (seed, step, position), so an item's tokens do not depend on which
other generations share its steps.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from titok_core.sampler import Generation, apply, step_inputs

from .batcher import request_ids
from .errors import InternalError, Overloaded, ServiceError
from .metrics import Metrics

log = logging.getLogger("titok.scheduler")
StepFn = Callable[..., Awaitable[np.ndarray]]  # (step inputs, request_id=) -> next tokens (B, N)


@dataclass(eq=False)
class _Request:
    """The generations of one request and the future its caller awaits."""

    gens: list[Generation]
    future: asyncio.Future
    enqueued: float
    request_id: str


class GenerationScheduler:
    """Runs the step loop of one model; at most ``max_active`` generations advance at once, the rest wait."""

    def __init__(
        self,
        model: str,
        step: StepFn,
        *,
        max_batch_size: int,
        max_queue: int,
        metrics: Metrics,
        backend: str,
        regroup_wait_s: float = 0.0,
    ):
        self.model, self._step_fn = model, step
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.regroup_wait_s = regroup_wait_s
        self._last_batch = 0  # generations in the last step: how many an idle loop may wait for
        self._waiting: deque[_Request] = deque()
        self._waiting_items = 0
        self._active: list[_Request] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._depth = metrics.queue_depth.labels(model, "generator")
        self._wait = metrics.queue_wait.labels(model, "generator")
        self._batch = metrics.batch_size.labels(model, "generator")
        self._infer = metrics.inference_seconds.labels(model, "generator", backend)
        self._active_gauge = metrics.active_generations.labels(model)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"scheduler-{self.model}")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for req in [*self._waiting, *self._active]:
            req.future.cancel()

    async def generate(self, gens: list[Generation], request_id: str = "") -> np.ndarray:
        """The final tokens (len(gens), N) of ``gens`` (fresh or resumed), advanced alongside every other in
        flight."""
        if self._waiting_items + len(gens) > self.max_queue:
            raise Overloaded(f"the generation queue of {self.model} is full; retry shortly")
        req = _Request(gens, asyncio.get_running_loop().create_future(), time.monotonic(), request_id)
        self._waiting.append(req)
        self._waiting_items += len(gens)
        self._depth.set(self._waiting_items)
        self._wake.set()
        try:
            return await req.future
        finally:
            req.future.cancel()  # a no-op when done; an active request is dropped before its next step
            if req in self._waiting:  # a waiting one leaves the queue (and its count) at once
                self._waiting.remove(req)
                self._waiting_items -= len(req.gens)
                self._depth.set(self._waiting_items)

    def _admit(self) -> None:
        """Move waiting requests into the step batch while there is room (a lone request always fits)."""
        active_items = sum(len(r.gens) for r in self._active)
        while self._waiting:
            req = self._waiting[0]
            if not req.future.done() and self._active and active_items + len(req.gens) > self.max_batch_size:
                break
            self._waiting.popleft()
            self._waiting_items -= len(req.gens)
            if req.future.done():
                continue
            self._wait.observe(time.monotonic() - req.enqueued)
            self._active.append(req)
            active_items += len(req.gens)
        self._depth.set(self._waiting_items)
        self._active_gauge.set(active_items)

    async def _loop(self) -> None:
        while True:
            self._active = [r for r in self._active if not r.future.done()]  # callers that left are dropped
            if not self._active and self._waiting and self._waiting_items < self._last_batch:
                await self._regroup()
            self._admit()
            if not self._active:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                ids = request_ids(r.request_id for r in self._active)
                # a variation with nothing hidden starts done, and those of one request may start at other steps
                pending = [g for r in self._active for g in r.gens if not g.done]
                if pending:
                    await self._step(pending, ids)
            except Exception as e:  # the backend's own failures as they are; anything else is a bug: 500
                if not isinstance(e, ServiceError):
                    log.exception("generation step of %s failed", self.model)
                    e = InternalError()
                for req in self._active:
                    if not req.future.done():
                        req.future.set_exception(e)
                self._active = []
                continue
            still = []
            for req in self._active:
                if all(g.done for g in req.gens):
                    if not req.future.done():
                        req.future.set_result(np.stack([g.tokens for g in req.gens]))
                else:
                    still.append(req)
            self._active = still
            self._active_gauge.set(sum(len(r.gens) for r in still))

    async def _regroup(self) -> None:
        """Wait at most ``regroup_wait_s`` for the generations of the last batch to come back before starting the
        first step of a new one. Clients whose images came out of one batch send their next requests within
        milliseconds of each other; the first one alone would otherwise start a step of its own, and run one
        step ahead of the rest from then on: batches of one, at their cost per image, for as long as the load
        lasts. A lone client never waits (its last batch held only itself)."""
        deadline = time.monotonic() + self.regroup_wait_s
        while self._waiting_items < self._last_batch and (left := deadline - time.monotonic()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                break

    async def _step(self, gens: list[Generation], request_id: str = "") -> None:
        """One sampler step of ``gens``: one step-graph call (chunked only beyond the max batch size)."""
        self._last_batch = len(gens)
        inputs = step_inputs(gens)  # stacking B rows: microseconds, done on the loop rather than a thread hop
        parts = []
        for begin in range(0, len(gens), self.max_batch_size):
            chunk = tuple(x[begin : begin + self.max_batch_size] for x in inputs)
            self._batch.observe(len(chunk[0]))
            start = time.perf_counter()
            try:
                parts.append(await self._step_fn(chunk, request_id=request_id))
            finally:
                self._infer.observe(time.perf_counter() - start)
        apply(gens, parts[0] if len(parts) == 1 else np.concatenate(parts))
