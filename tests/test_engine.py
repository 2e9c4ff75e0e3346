"""The engine in-process, on a fake backend whose calls wait on asyncio gates: the micro-batcher (coalescing,
max_wait, chunking, 429, cancellation, error fan-out), the generation scheduler (late joiners, chunking, errors),
and ``create_app`` over ASGI (429, 504, 500 and 503 in the one error shape, a client that leaves, auth, CORS).

No test here measures time: an order of events is forced with gates, and a deadline is only ever a bound.
"""

import asyncio
import json
import logging
from collections import Counter
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.backends import Backend
from service.batcher import MicroBatcher
from service.errors import BackendUnavailable, InternalError, Overloaded
from service.metrics import Metrics
from service.scheduler import GenerationScheduler
from service.settings import Settings
from tests.conftest import FAMILY
from titok_core.sampler import Generation, SamplingSettings, generate
from titok_core.sampler import sample as reference_step

pytestmark = pytest.mark.anyio
GRAPHS = ("encoder", "decoder", "generator")


class FakeBackend(Backend):
    """Deterministic, row-wise (so batch-invariant) answers for the graphs (the step's calls are recorded as the
    generator's, with the step inputs). Every call is recorded; a held graph's calls wait until ``let_through``
    lets one through or ``release`` lets them all; ``failures`` are raised."""

    name = "fake"

    def __init__(self, num_tokens: int = 8, codebook_size: int = 16, image_size: int = 4):
        self.n, self.k, self.size = num_tokens, codebook_size, image_size
        self.calls: list[tuple[str, tuple[np.ndarray, ...]]] = []  # (graph, inputs)
        self.failures: dict[str, Exception] = {}
        self._held: set[str] = set()
        self._permits = {g: asyncio.Semaphore(0) for g in GRAPHS}
        self._waiting = Counter()
        self._called = asyncio.Event()

    # -- what the tests do --------------------------------------------------------------------------------

    def hold(self, graph: str) -> None:
        self._held.add(graph)

    def let_through(self, graph: str, calls: int = 1) -> None:
        for _ in range(calls):
            self._permits[graph].release()

    def release(self, graph: str) -> None:
        self._held.discard(graph)
        self.let_through(graph, self._waiting[graph])

    def count(self, graph: str) -> int:
        return sum(g == graph for g, _ in self.calls)

    def inputs(self, graph: str, which: int = 0) -> list[np.ndarray]:
        """The ``which``-th input of every call of ``graph`` (the step's class ids are input 1)."""
        return [x[which] for g, x in self.calls if g == graph]

    async def called(self, graph: str, times: int) -> None:
        """Until ``graph`` has been called ``times`` times (entered: a held call is still waiting)."""
        while self.count(graph) < times:
            self._called.clear()
            await self._called.wait()

    # -- the backend ----------------------------------------------------------------------------------------

    async def _call(self, graph: str, *inputs: np.ndarray) -> None:
        self.calls.append((graph, inputs))
        self._called.set()
        if graph in self._held:
            self._waiting[graph] += 1
            try:
                await self._permits[graph].acquire()
            finally:
                self._waiting[graph] -= 1
        if graph in self.failures:
            raise self.failures[graph]

    async def encode(self, images, request_id=""):
        await self._call("encoder", images)
        return images.reshape(len(images), -1)[:, : self.n].astype(np.int64) % self.k

    async def decode(self, tokens, request_id=""):
        await self._call("decoder", tokens)
        return np.broadcast_to(
            (tokens.sum(1) % 256).astype(np.uint8)[:, None, None, None], (len(tokens), self.size, self.size, 3)
        ).copy()

    async def logits(self, tokens, class_ids, request_id=""):
        await self._call("generator", tokens, class_ids)
        return fake_logits(tokens, class_ids, self.k)

    async def step(self, inputs, request_id=""):
        """The numpy reference on the fake logits: what a step graph of this fake generator returns."""
        await self._call("generator", *inputs)
        await asyncio.sleep(0)  # a real backend's call suspends the scheduler (an executor or gRPC), as this does
        tokens, class_ids, seeds, steps, guidance, temperature, annealing, mask_len = inputs
        cond = fake_logits(tokens, class_ids, self.k)
        null = np.where(guidance != 0, DIMS["num_classes"], class_ids)  # a row without guidance needs none
        uncond = fake_logits(tokens, null, self.k)
        return reference_step(cond, uncond, tokens, seeds, steps, guidance, temperature, annealing, mask_len)

    async def ready(self):
        return True

    async def close(self):
        for graph in GRAPHS:
            self.release(graph)


def fake_logits(tokens: np.ndarray, class_ids: np.ndarray, k: int) -> np.ndarray:
    """float32 (B, N, K) that depend on each row's tokens and class alone."""
    phase = np.arange(k)[None, None, :] * (class_ids.reshape(-1, 1, 1) + 1) * 0.37 + tokens[:, :, None] * 0.11
    return (3 * np.cos(phase + np.arange(tokens.shape[1])[None, :, None])).astype(np.float32)


async def until(condition, bound_s: float = 30.0) -> None:
    """Until ``condition()`` holds; the bound only turns a hang into a failure."""
    loop = asyncio.get_running_loop()
    end = loop.time() + bound_s
    while not condition():
        assert loop.time() < end, "the condition never held"
        await asyncio.sleep(0.001)


def batcher(backend: FakeBackend, metrics: Metrics | None = None, **options) -> MicroBatcher:
    options = {"max_batch_size": 8, "max_wait_s": 0.0, "max_queue": 64, **options}
    return MicroBatcher("m", "decoder", backend.decode, metrics=metrics or Metrics(), backend="fake", **options)


def rows(start: int, count: int, n: int = 8) -> np.ndarray:
    """``count`` token rows, row i filled with start + i."""
    return np.repeat(np.arange(start, start + count, dtype=np.int64)[:, None], n, axis=1)


@asynccontextmanager
async def running(worker):
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


# ---------------------------------------------------------------------------------------------------
# The micro-batcher
# ---------------------------------------------------------------------------------------------------


async def test_requests_that_wait_while_a_batch_runs_are_coalesced_into_the_next():
    backend = FakeBackend()
    backend.hold("decoder")
    async with running(batcher(backend)) as b:
        first = asyncio.create_task(b.submit(rows(0, 1)))
        await backend.called("decoder", 1)  # runs alone (max_wait 0) and is held
        second, third = asyncio.create_task(b.submit(rows(10, 2))), asyncio.create_task(b.submit(rows(20, 3)))
        await asyncio.sleep(0)  # both enqueue
        assert b._queued_rows == 5
        backend.release("decoder")
        answers = await asyncio.gather(first, second, third)
    assert [len(x) for x in backend.inputs("decoder")] == [1, 5]  # the two waiting requests share one call
    assert np.array_equal(backend.inputs("decoder")[1], np.concatenate([rows(10, 2), rows(20, 3)]))
    for answer, sent in zip(answers, (rows(0, 1), rows(10, 2), rows(20, 3)), strict=True):
        assert np.array_equal(answer[:, 0, 0, 0], sent.sum(1) % 256)  # each caller gets its own rows back


async def test_the_next_batch_is_handed_to_the_backend_while_one_runs_and_no_third():
    # the backend (the embedded one's worker thread) starts the next batch the moment one ends, without waiting for
    # the event loop; two batches at most are handed over, the rest wait in the queue and batch together
    backend = FakeBackend()
    backend.hold("decoder")
    async with running(batcher(backend)) as b:
        first = asyncio.create_task(b.submit(rows(0, 1)))
        await backend.called("decoder", 1)  # held
        second = asyncio.create_task(b.submit(rows(10, 2)))
        await backend.called("decoder", 2)  # handed over while the first still runs
        third, fourth = asyncio.create_task(b.submit(rows(20, 3))), asyncio.create_task(b.submit(rows(30, 1)))
        for _ in range(20):
            await asyncio.sleep(0)
        assert backend.count("decoder") == 2 and b._queued_rows == 4  # no third batch while two are in flight
        backend.release("decoder")
        answers = await asyncio.gather(first, second, third, fourth)
    assert [len(x) for x in backend.inputs("decoder")] == [1, 2, 4]
    for answer, sent in zip(answers, (rows(0, 1), rows(10, 2), rows(20, 3), rows(30, 1)), strict=True):
        assert np.array_equal(answer[:, 0, 0, 0], sent.sum(1) % 256)


async def test_a_partial_batch_waits_for_max_wait_and_a_full_one_does_not():
    backend = FakeBackend()
    async with running(batcher(backend, max_batch_size=4, max_wait_s=3600)) as b:
        early = asyncio.create_task(b.submit(rows(0, 2)))
        for _ in range(20):
            await asyncio.sleep(0)
        assert backend.count("decoder") == 0  # two rows of four: waiting for more (max_wait is an hour)
        late = asyncio.create_task(b.submit(rows(2, 2)))
        await asyncio.gather(early, late)  # the batch is full: it runs at once
    assert [len(x) for x in backend.inputs("decoder")] == [4]
    backend = FakeBackend()
    async with running(batcher(backend, max_batch_size=4, max_wait_s=0.001)) as b:
        assert len(await b.submit(rows(0, 1))) == 1  # alone, it runs once max_wait has passed
    assert [len(x) for x in backend.inputs("decoder")] == [1]


async def test_a_request_larger_than_a_batch_runs_as_several_calls():
    backend = FakeBackend()
    async with running(batcher(backend, max_batch_size=4)) as b:
        answer = await b.submit(rows(0, 10))
    assert [len(x) for x in backend.inputs("decoder")] == [4, 4, 2]
    assert np.array_equal(answer[:, 0, 0, 0], rows(0, 10).sum(1) % 256)


async def test_a_full_queue_is_refused_at_once_and_the_rest_is_served():
    backend = FakeBackend()
    backend.hold("decoder")
    async with running(batcher(backend, max_batch_size=1, max_queue=3)) as b:
        running_one = asyncio.create_task(b.submit(rows(0, 1)))
        await backend.called("decoder", 1)  # out of the queue, held
        waiting = [asyncio.create_task(b.submit(rows(i, 1))) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await b.submit(rows(4, 1))  # while the backend is still held: refused without waiting
        assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
        backend.release("decoder")
        assert len(await asyncio.gather(running_one, *waiting)) == 4
    assert backend.count("decoder") == 4


async def test_a_cancelled_waiting_request_leaves_the_queue_and_never_runs():
    backend, metrics = FakeBackend(), Metrics()
    backend.hold("decoder")
    b = batcher(backend, max_queue=4, metrics=metrics)
    async with running(b):
        first = asyncio.create_task(b.submit(rows(0, 1)))
        await backend.called("decoder", 1)
        leaving = asyncio.create_task(b.submit(rows(50, 3)))
        await asyncio.sleep(0)
        assert b._queued_rows == 3
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        assert b._queued_rows == 0  # at once, not when the worker next looks
        assert metrics.registry.get_sample_value("titok_queue_depth", {"model": "m", "graph": "decoder"}) == 0
        staying = asyncio.create_task(b.submit(rows(60, 4)))  # 4 rows fit the queue of 4 again
        backend.release("decoder")
        await asyncio.gather(first, staying)
    assert [x[:, 0].tolist() for x in backend.inputs("decoder")] == [[0], [60, 61, 62, 63]]  # never 50..52


@pytest.mark.parametrize(
    "failure, error, status",
    [(BackendUnavailable("decoder down"), BackendUnavailable, 503), (ValueError("a bug"), InternalError, 500)],
)
async def test_a_failed_batch_fails_each_of_its_callers_with_the_right_error(failure, error, status, caplog):
    backend = FakeBackend()
    backend.hold("decoder")
    async with running(batcher(backend)) as b:
        first = asyncio.create_task(b.submit(rows(0, 1)))
        await backend.called("decoder", 1)
        batch = [asyncio.create_task(b.submit(rows(i, 1))) for i in (1, 2)]  # the next batch, together
        await asyncio.sleep(0)
        backend.failures["decoder"] = failure
        with caplog.at_level(logging.ERROR, "titok.batcher"):
            backend.release("decoder")
            answers = await asyncio.gather(first, *batch, return_exceptions=True)
        assert all(type(a) is error and a.status == status for a in answers), answers
        del backend.failures["decoder"]
        assert len(await b.submit(rows(9, 1))) == 1 and b.alive  # the worker lives on
    bugs = [r for r in caplog.records if r.exc_info]
    assert len(bugs) == (2 if status == 500 else 0)  # a bug's traceback is logged (once per batch); an outage's not
    if status == 500:
        assert str(answers[0]) == "internal error"  # the client sees no details


async def test_inputs_that_cannot_be_batched_fail_their_callers_at_once():
    backend = FakeBackend()
    backend.hold("decoder")
    async with running(batcher(backend)) as b:
        first = asyncio.create_task(b.submit(rows(0, 1)))
        await backend.called("decoder", 1)
        odd = [asyncio.create_task(b.submit(rows(1, 1, n=8))), asyncio.create_task(b.submit(rows(2, 1, n=5)))]
        await asyncio.sleep(0)
        backend.release("decoder")
        await first
        answers = await asyncio.gather(*odd, return_exceptions=True)  # np.concatenate fails: 500, no hang
        assert all(isinstance(a, InternalError) for a in answers), answers
        assert b.alive and len(await b.submit(rows(3, 1))) == 1


# ---------------------------------------------------------------------------------------------------
# The generation scheduler
# ---------------------------------------------------------------------------------------------------

DIMS = dict(seq_len=8, codebook_size=16, num_classes=3)


def gens(class_ids, seeds, **settings) -> list[Generation]:
    s = SamplingSettings(**settings)
    return [Generation.start(c, seed, s, **DIMS) for c, seed in zip(class_ids, seeds, strict=True)]


def alone(class_id: int, seed: int, **settings) -> list[int]:
    """The tokens of one generation run by itself with the lock-step sampler."""
    fn = lambda t, c: fake_logits(t, c, DIMS["codebook_size"])  # noqa: E731
    return generate(fn, [class_id], [seed], settings=SamplingSettings(**settings), **DIMS)[0].tolist()


def scheduler(backend: FakeBackend, metrics: Metrics | None = None, **options) -> GenerationScheduler:
    options = {"max_batch_size": 8, "max_queue": 64, **options}
    return GenerationScheduler("m", backend.step, metrics=metrics or Metrics(), backend="fake", **options)


async def test_a_late_request_joins_the_generations_in_flight_at_the_next_step():
    backend = FakeBackend()
    backend.hold("generator")
    plain = dict(guidance_scale=0.0, guidance_schedule="constant")  # one generator row per item
    async with running(scheduler(backend)) as s:
        first = asyncio.create_task(s.generate(gens([0], [1], num_steps=4, **plain)))
        await backend.called("generator", 1)
        late = asyncio.create_task(s.generate(gens([2], [7], num_steps=2, **plain)))
        await asyncio.sleep(0)
        backend.let_through("generator", 3)
        tokens_late = await late  # two steps, taken beside the first's second and third
        await backend.called("generator", 4)  # the first's last step, held
        assert not first.done()
        backend.release("generator")
        tokens_first = await first
    assert [len(x) for x in backend.inputs("generator")] == [1, 2, 2, 1]
    assert tokens_late[0].tolist() == alone(2, 7, num_steps=2, **plain)  # as if alone
    assert tokens_first[0].tolist() == alone(0, 1, num_steps=4, **plain)


async def test_the_clients_of_a_batch_that_come_back_together_start_their_next_batch_together():
    # a closed loop: three generations finish in one step, then their clients come back a few ms apart; without the
    # regroup wait the first would start a batch of one and run a step ahead of the others from then on
    backend = FakeBackend()
    plain = dict(num_steps=2, guidance_scale=0.0, guidance_schedule="constant")
    async with running(scheduler(backend, regroup_wait_s=0.5)) as s:
        await asyncio.gather(*(s.generate(gens([c], [c], **plain)) for c in range(3)))
        first = asyncio.create_task(s.generate(gens([0], [10], **plain)))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(s.generate(gens([1], [11], **plain)))
        await asyncio.sleep(0.02)
        third = asyncio.create_task(s.generate(gens([2], [12], **plain)))
        tokens = await asyncio.gather(first, second, third)
    assert [len(x) for x in backend.inputs("generator")] == [3, 3, 3, 3]
    assert [t[0].tolist() for t in tokens] == [alone(c, 10 + c, **plain) for c in range(3)]


async def test_a_lone_client_never_waits_for_others():
    # its last batch held only itself: with a regroup wait of a minute, its requests still run at once (the
    # wait_for only turns a wait into a failure instead of a minute-long test)
    backend = FakeBackend()
    plain = dict(num_steps=2, guidance_scale=0.0, guidance_schedule="constant")
    async with running(scheduler(backend, regroup_wait_s=60)) as s:
        for seed in range(3):
            await asyncio.wait_for(s.generate(gens([0], [seed], **plain)), 10)
    assert [len(x) for x in backend.inputs("generator")] == [1] * 6


async def test_a_step_beyond_the_max_batch_size_is_chunked_with_the_same_result():
    backend = FakeBackend()
    settings = dict(num_steps=3, guidance_scale=2.0, guidance_schedule="constant")
    items = ((0, 5), (1, 6), (2, 7), (1, 8), (0, 9))  # one request of 5 items is admitted alone, beyond 4
    async with running(scheduler(backend, max_batch_size=4)) as s:
        tokens = await s.generate(gens(*zip(*items, strict=True), **settings))
    assert [len(x) for x in backend.inputs("generator")] == [4, 1] * 3
    assert tokens.tolist() == [alone(c, seed, **settings) for c, seed in items]


@pytest.mark.parametrize(
    "failure, error", [(BackendUnavailable("generator down"), BackendUnavailable), (ValueError("a bug"), InternalError)]
)
async def test_a_failed_step_fails_every_active_generation(failure, error, caplog):
    backend = FakeBackend()
    backend.hold("generator")
    async with running(scheduler(backend)) as s:
        first = asyncio.create_task(s.generate(gens([0], [1], num_steps=4)))
        await backend.called("generator", 1)
        second = asyncio.create_task(s.generate(gens([1], [2], num_steps=4)))
        backend.let_through("generator")
        await backend.called("generator", 2)  # both in one step now
        backend.failures["generator"] = failure
        with caplog.at_level(logging.ERROR, "titok.scheduler"):
            backend.release("generator")
            answers = await asyncio.gather(first, second, return_exceptions=True)
        assert [type(a) for a in answers] == [error, error]
        del backend.failures["generator"]
        assert len(await s.generate(gens([2], [3], num_steps=2))) == 1 and s.alive
    assert any(r.exc_info for r in caplog.records) == (error is InternalError)


async def test_a_cancelled_waiting_generation_leaves_the_queue_count_at_once():
    backend, metrics = FakeBackend(), Metrics()
    backend.hold("generator")
    async with running(scheduler(backend, metrics, max_batch_size=1, max_queue=2)) as s:
        first = asyncio.create_task(s.generate(gens([0], [1], num_steps=2)))
        await backend.called("generator", 1)
        waiting = asyncio.create_task(s.generate(gens([1, 1], [2, 3], num_steps=2)))  # no room beside the first
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await s.generate(gens([2], [4], num_steps=2))
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert metrics.registry.get_sample_value("titok_queue_depth", {"model": "m", "graph": "generator"}) == 0
        again = asyncio.create_task(s.generate(gens([2, 2], [4, 5], num_steps=2)))  # the room is free again
        backend.release("generator")
        await asyncio.gather(first, again)
    assert all(1 not in classes for classes in backend.inputs("generator", 1))  # the cancelled one never ran
    assert metrics.registry.get_sample_value("titok_active_generations", {"model": "m"}) == 0


# ---------------------------------------------------------------------------------------------------
# The app, in-process (httpx's ASGI transport, the lifespan run by hand)
# ---------------------------------------------------------------------------------------------------


@asynccontextmanager
async def app_on_fake(model_repository, **settings):
    """``create_app`` on the repository's manifest, its family on a FakeBackend of the manifest's sizes."""

    def fake(_settings, _repo, manifest) -> FakeBackend:
        return FakeBackend(manifest.num_tokens, manifest.codebook_size, manifest.image_size)

    app = create_app(Settings(model_repository=model_repository, **settings), fake)
    async with app.router.lifespan_context(app):
        backend = app.state.registry.models[FAMILY].backend
        backend.calls.clear()  # the warm-up's
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield app, client, backend


def http_scope(method: str, path: str, body: bytes) -> dict:
    """The ASGI scope of a JSON request, as a server would make it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
    }


def sample(app, name: str, **labels) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


def assert_error(r: httpx.Response, status: int, type_: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_ and "Traceback" not in r.text, body
    return body["error"]


async def test_api_keys_and_cors_when_configured(model_repository):
    settings = dict(api_keys="key-one,key-two", cors_origins="http://example.com")
    async with app_on_fake(model_repository, **settings) as (app, client, backend):
        assert_error(await client.get("/v1/models"), 401, "unauthorized")
        r = await client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer key-one"})).status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # probes need no key
        key = {"Authorization": "Bearer key-two"}
        r = await client.get("/v1/models", headers={**key, "Origin": "http://example.com"})
        assert r.headers["access-control-allow-origin"] == "http://example.com"
        r = await client.get("/v1/models", headers={**key, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = await client.get("/readyz", headers={"Origin": "http://example.com"})
        assert r.headers["access-control-allow-origin"] == "http://example.com"


async def test_generate_in_process_counts_what_it_made(model_repository):
    async with app_on_fake(model_repository) as (app, client, backend):
        r = await client.post("/v1/generate", json={"class_labels": [1, "Sneaker"], "n": 2, "seed": 9, "num_steps": 3})
        assert r.status_code == 200, r.text
        assert [(i["class_label"], i["seed"]) for i in r.json()["images"]] == [(1, 9), (1, 10), (7, 11), (7, 12)]
        assert sample(app, "titok_images_generated_total", model=FAMILY) == 4
        assert sample(app, "titok_tokens_produced_total", model=FAMILY, route="generate") == 4 * 32
        assert backend.count("decoder") == 1 and len(backend.inputs("decoder")[0]) == 4


async def test_a_bug_in_a_worker_is_500_internal_error_with_its_traceback_logged(model_repository, caplog):
    async with app_on_fake(model_repository) as (app, client, backend):
        backend.failures["decoder"] = ZeroDivisionError("a bug")
        with caplog.at_level(logging.ERROR, "titok"):
            r = await client.post("/v1/detokenize", json={"tokens": [[1] * 32]})
        assert assert_error(r, 500, "internal_error")["message"] == "internal error"
        assert any(rec.exc_info and rec.exc_info[0] is ZeroDivisionError for rec in caplog.records)
        assert (await client.get("/readyz")).status_code == 200  # a bug is not an outage


async def test_a_backend_that_is_down_is_503_backend_unavailable(model_repository):
    async with app_on_fake(model_repository) as (app, client, backend):
        backend.failures["generator"] = BackendUnavailable("the generator is down")
        r = await client.post("/v1/generate", json={"class_labels": 0, "seed": 1})
        assert assert_error(r, 503, "backend_unavailable")["message"] == "the generator is down"
        assert sample(app, "titok_errors_total", type="backend_unavailable") == 1


async def test_a_full_generation_queue_is_429_with_retry_after_while_the_backend_is_busy(model_repository):
    # 3 decoder rows: each admitted generation holds its row from admission (1 + 2 taken, the third is refused)
    async with app_on_fake(model_repository, max_batch_size=1, max_queue=3) as (app, client, backend):
        backend.hold("generator")
        body = {"class_labels": 0, "num_steps": 2, "seed": 0}
        first = asyncio.create_task(client.post("/v1/generate", json=body))
        await backend.called("generator", 1)  # active, held
        waiting = asyncio.create_task(client.post("/v1/generate", json={**body, "n": 2}))  # 2 waiting: full
        scheduler = app.state.registry.models[FAMILY].scheduler
        await until(lambda: scheduler._waiting_items == 2)
        refused = await client.post("/v1/generate", json=body)
        assert_error(refused, 429, "overloaded")
        assert refused.headers["retry-after"] == "1"
        assert not first.done()  # refused while the first still waits on the backend
        backend.release("generator")
        assert [(await t).status_code for t in (first, waiting)] == [200, 200]
        assert (await client.get("/readyz")).status_code == 200
        assert sample(app, "titok_queue_depth", model=FAMILY, graph="generator") == 0


async def test_the_deadline_answers_504_and_the_gateway_stays_ready(model_repository):
    async with app_on_fake(model_repository, request_timeout_s=0.05) as (app, client, backend):
        backend.hold("generator")  # never released: only the deadline can end the request
        r = await client.post("/v1/generate", json={"class_labels": [1, 2], "n": 2})
        assert_error(r, 504, "deadline_exceeded")
        assert (await client.get("/readyz")).status_code == 200


async def test_a_client_that_leaves_stops_its_generation_before_the_next_step(model_repository):
    """A raw ASGI call whose client disconnects while its first generator step is held."""
    async with app_on_fake(model_repository) as (app, client, backend):
        backend.hold("generator")
        body = json.dumps({"class_labels": 1, "n": 2, "num_steps": 64, "guidance_schedule": "constant"}).encode()
        left, sent = asyncio.Event(), []

        async def receive():
            if not sent:
                sent.append(True)
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            pass

        call = asyncio.create_task(app(http_scope("POST", "/v1/generate", body), receive, send))
        await backend.called("generator", 1)
        left.set()  # the client goes away while its first step runs
        await call
        backend.release("generator")
        # another request, served after: by then the scheduler has dropped the first one
        r = await client.post("/v1/generate", json={"class_labels": 2, "seed": 3, "num_steps": 2})
        assert r.status_code == 200
        classes = [c.ravel().tolist() for c in backend.inputs("generator", 1)]
        assert classes[0] == [1, 1]  # the first's only step: 2 items (their null-class rows are the step graph's)
        assert all(1 not in c for c in classes[1:])  # then only the second request's rows
        assert len(backend.inputs("decoder")) == 1 and len(backend.inputs("decoder")[0]) == 1  # the first never decoded
        assert sample(app, "titok_requests_total", route="/v1/generate", method="POST", status="499") == 1
        assert sample(app, "titok_active_generations", model=FAMILY) == 0
