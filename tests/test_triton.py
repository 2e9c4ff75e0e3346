"""The gateway on a real Triton (tests/triton_server.py: the tritonserver of nvidia-pytriton serving the
Python-backend twin of the repository), over real HTTP: the same answers as the embedded backend, a crash of Triton
under load (503, never a hang), its restart (recovery without a gateway restart), its full queue (429) and a gateway
that starts before Triton does."""

import asyncio
import base64
import functools
import gzip
import io
import json
import logging
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.triton_repo import CONFIG_FILE, read_config, write_config
from service.backends import create_backend
from service.backends.triton import service_error
from service.errors import BackendUnavailable, DeadlineExceeded, Overloaded
from service.settings import Settings
from tests.conftest import FAMILY, Gateway
from tests.triton_server import TritonServer, write_twin_repository
from titok_core.manifest import read_manifest

pytestmark = pytest.mark.slow  # a real tritonserver, killed and restarted

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
HANG_S = 30  # a bound, not a timing: no answer below should take more than a few seconds


def fashion_pngs(n: int) -> list[str]:
    """The first ``n`` Fashion-MNIST test images as base64 PNGs."""
    with gzip.open(FMNIST) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def status(url: str, path: str = "/readyz") -> int:
    return httpx.get(f"{url}{path}", timeout=HANG_S).status_code


def wait_until(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def assert_error(r: httpx.Response, code: int, type_: str) -> None:
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_ and body["error"]["message"], body


def post_all(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    """The bodies posted at once (so that they share batches)."""

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=HANG_S) as client:
            return await asyncio.gather(*(client.post(path, json=body) for body in bodies))

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------------
# The same answers as the embedded backend
# ---------------------------------------------------------------------------------------------------


def test_triton_gives_the_same_tokens_and_image_bytes_as_the_embedded_backend(gateway, triton_gateway):
    images = fashion_pngs(6)
    tokens = {}
    for name, g in (("embedded", gateway), ("triton", triton_gateway)):
        r = httpx.post(f"{g.url}/v1/tokenize", json={"images": images}, timeout=HANG_S)
        assert r.status_code == 200, r.text
        tokens[name] = r.json()["tokens"]
    assert tokens["triton"] == tokens["embedded"]

    detokenized = [
        httpx.post(f"{g.url}/v1/detokenize", json={"tokens": tokens["embedded"]}, timeout=HANG_S)
        for g in (gateway, triton_gateway)
    ]
    assert [r.status_code for r in detokenized] == [200, 200]
    assert detokenized[1].json()["images"] == detokenized[0].json()["images"]  # PNG bytes, base64

    # seeded generations sent together share Triton's batches, and still give the embedded bytes
    bodies = [{"class_labels": i, "seed": 70 + i, "num_steps": 8, "return_tokens": True} for i in range(6)]
    bodies.append({"class_labels": [0, "Sneaker"], "n": 2, "seed": 7, "num_steps": 8, "return_tokens": True})
    embedded = post_all(gateway.url, "/v1/generate", bodies)
    served = post_all(triton_gateway.url, "/v1/generate", bodies)
    assert [r.status_code for r in served] == [200] * len(bodies)
    assert [r.json()["images"] for r in served] == [r.json()["images"] for r in embedded]


def test_variations_on_triton_give_the_embedded_bytes_among_generations(gateway, triton_gateway):
    image = fashion_pngs(1)[0]
    source = httpx.post(f"{gateway.url}/v1/tokenize", json={"images": [image]}, timeout=HANG_S).json()["tokens"][0]
    variations = [
        {"image": image, "strength": 0.5, "class_labels": ["Dress", None], "n": 2, "seed": 5, "return_tokens": True},
        {"tokens": source, "mask": [0, 3, 9, 30], "class_labels": 7, "seed": 8, "return_tokens": True},
        {"tokens": source, "strength": 1.0, "class_labels": 2, "seed": 9, "return_tokens": True},
    ]
    generations = [{"class_labels": i, "seed": 90 + i, "return_tokens": True} for i in range(4)]
    paths = ["/v1/variations"] * len(variations) + ["/v1/generate"] * len(generations)
    bodies = variations + generations

    def post_mixed(url: str) -> list[httpx.Response]:
        async def run():
            async with httpx.AsyncClient(base_url=url, timeout=HANG_S) as client:
                return await asyncio.gather(*(client.post(p, json=b) for p, b in zip(paths, bodies, strict=True)))

        return asyncio.run(run())

    embedded, served = post_mixed(gateway.url), post_mixed(triton_gateway.url)
    assert [r.status_code for r in served] == [200] * len(bodies), [r.text for r in served]
    assert [r.json()["images"] for r in served] == [r.json()["images"] for r in embedded]
    assert served[0].json()["source_tokens"] == source
    r = httpx.post(f"{triton_gateway.url}/v1/variations", json={"tokens": source, "mask": [32]}, timeout=HANG_S)
    assert_error(r, 400, "invalid_request")


@pytest.mark.parametrize(
    "status, message, error",
    [
        ("StatusCode.UNAVAILABLE", "[request id: a] Exceeds maximum queue size", Overloaded),
        ("StatusCode.RESOURCE_EXHAUSTED", "too many requests", Overloaded),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", DeadlineExceeded),  # its queue policy's timeout
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", BackendUnavailable),
        ("StatusCode.INTERNAL", "onnxruntime: bad input", BackendUnavailable),
        (None, "no status", BackendUnavailable),
    ],
)
def test_triton_errors_map_to_429_503_504(status, message, error):
    mapped = service_error(InferenceServerException(message, status), "titok-fmnist_decoder")
    assert type(mapped) is error and "titok-fmnist_decoder" in mapped.message
    assert "addresses" not in mapped.message  # details stay in the log


def test_a_batch_hands_its_request_ids_to_triton(twin_repository, triton, caplog):
    """Triton's own error for a bad request quotes the ids the gateway passed (as its logs do)."""
    manifest = read_manifest(twin_repository, FAMILY)
    backend = create_backend(Settings(backend="triton", triton_url=triton.grpc_url), twin_repository, manifest)

    async def run():
        try:
            assert await backend.ready()
            with pytest.raises(BackendUnavailable):  # 31 tokens instead of 32: Triton refuses it
                await backend.decode(np.zeros((1, 31), np.int64), request_id="req-1,req-2")
        finally:
            await backend.close()

    with caplog.at_level(logging.WARNING, "titok.triton"):
        asyncio.run(run())
    assert any("[request id: req-1,req-2]" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------
# A crash of Triton, and its restart
# ---------------------------------------------------------------------------------------------------

DETOKENIZE = ("/v1/detokenize", {"tokens": [list(range(32))] * 4})


@functools.cache
def load() -> list[tuple[str, dict]]:
    """One request of each kind."""
    return [
        ("/v1/generate", {"class_labels": 3, "seed": 1, "num_steps": 8}),
        ("/v1/tokenize", {"images": fashion_pngs(4)}),
        DETOKENIZE,
    ]


async def _load_while(url: str, scenario, workers: int = 6) -> list[httpx.Response]:
    """Requests sent back to back by ``workers`` clients while ``scenario(answered)`` runs; ``answered(code)`` waits
    until an answer with that status has come back since it was called."""
    stop, seen = asyncio.Event(), asyncio.Event()
    answers: list[httpx.Response] = []

    async def client_loop(i: int, client: httpx.AsyncClient) -> None:
        path, body = load()[i % len(load())]
        while not stop.is_set():
            answers.append(await client.post(path, json=body))  # httpx raises beyond HANG_S: a hang fails the test
            seen.set()

    async def answered(code: int) -> None:
        start = len(answers)
        while not any(r.status_code == code for r in answers[start:]):
            seen.clear()
            await asyncio.wait_for(seen.wait(), HANG_S)

    async with httpx.AsyncClient(base_url=url, timeout=HANG_S) as client:
        tasks = [asyncio.create_task(client_loop(i, client)) for i in range(workers)]
        try:
            await scenario(answered)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return answers


def test_triton_killed_under_load_is_503_then_the_gateway_recovers_by_itself(triton_gateway, triton):
    url, pid = triton_gateway.url, triton_gateway.proc.pid

    async def crash(answered):
        await answered(200)  # under load
        triton.kill()
        await answered(503)  # and still sending while it is gone

    try:
        answers = asyncio.run(_load_while(url, crash))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        for r in answers:
            if r.status_code == 503:
                assert_error(r, 503, "backend_unavailable")
        assert wait_until(lambda: status(url) == 503, timeout=10)
        assert_error(
            httpx.post(f"{url}{DETOKENIZE[0]}", json=DETOKENIZE[1], timeout=HANG_S), 503, "backend_unavailable"
        )

        # Triton comes back on the same ports: the same gateway process becomes ready and serves again
        triton.start()
        assert wait_until(lambda: status(url) == 200, timeout=30), "the gateway did not recover"
        for path, body in load():
            assert httpx.post(f"{url}{path}", json=body, timeout=HANG_S).status_code == 200
        assert triton_gateway.proc.poll() is None and triton_gateway.proc.pid == pid
    finally:
        triton.start()  # later tests share this server


# ---------------------------------------------------------------------------------------------------
# A Triton with a bounded queue on a slow decoder; a gateway that starts before it
# ---------------------------------------------------------------------------------------------------

_SLOW = '''

_Twin = TritonPythonModel


class TritonPythonModel(_Twin):
    """The twin, slowed down (written by tests/test_triton.py): one busy instance, so that a small queue fills."""

    def execute(self, requests):
        import time

        time.sleep(0.3)
        return super().execute(requests)
'''


@pytest.fixture(scope="module")
def bounded(model_repository, tmp_path_factory):
    """A second Triton (not started): its decoder sleeps 0.3 s per batch and queues one request at most."""
    workdir = tmp_path_factory.mktemp("bounded")
    repo = write_twin_repository(workdir / "repository", model_repository)
    decoder = json.loads((repo / f"{FAMILY}.manifest.json").read_text())["graphs"]["decoder"]
    config = read_config(repo / decoder["model_name"] / CONFIG_FILE)
    config.dynamic_batching.default_queue_policy.max_queue_size = 1
    write_config(repo / decoder["model_name"] / CONFIG_FILE, config, "a bounded queue (tests/test_triton.py)")
    model_py = repo / Path(decoder["path"]).parent / "model.py"
    model_py.write_text(model_py.read_text() + _SLOW)
    server = TritonServer(repo, workdir, workdir / "tritonserver.log")
    yield server, repo, decoder
    server.stop()


def test_the_gateway_starts_before_triton_and_gets_ready_when_it_comes_up(bounded, tmp_path):
    server, repo, _ = bounded
    assert not server.running
    # Gateway() returns once /readyz answers 200: run it in a thread and look at the gateway meanwhile
    g = Gateway.__new__(Gateway)
    settings = dict(backend="triton", triton_url=server.grpc_url)
    starting = threading.Thread(target=g.__init__, args=(repo, tmp_path / "gateway.log"), kwargs=settings)
    starting.start()
    try:
        assert wait_until(lambda: hasattr(g, "proc"))
        assert wait_until(lambda: g.proc.poll() is not None or _answers(g.url)), "the gateway did not start"
        assert g.proc.poll() is None, g.log.read_text()
        assert status(g.url, "/healthz") == 200  # alive, not ready
        assert_error(httpx.get(f"{g.url}/readyz", timeout=HANG_S), 503, "backend_unavailable")
        assert_error(
            httpx.post(f"{g.url}{DETOKENIZE[0]}", json=DETOKENIZE[1], timeout=HANG_S), 503, "backend_unavailable"
        )

        server.start()
        starting.join(timeout=90)
        assert not starting.is_alive() and status(g.url) == 200, g.log.read_text()[-3000:]
        assert httpx.post(f"{g.url}{DETOKENIZE[0]}", json=DETOKENIZE[1], timeout=HANG_S).status_code == 200
    finally:
        starting.join(timeout=90)
        if hasattr(g, "proc") and g.proc.poll() is None:
            g.stop()


def _answers(url: str) -> bool:
    try:
        return status(url, "/healthz") == 200
    except httpx.TransportError:
        return False


def _flood(url: str, decoder: dict, stop: threading.Event, full: threading.Event) -> None:
    """Another client of Triton, keeping the slow decoder busy and its one-place queue full (``full`` is set once
    Triton has refused it for that)."""
    client = grpcclient.InferenceServerClient(url)
    tokens = grpcclient.InferInput(decoder["inputs"][0]["name"], [1, 32], "INT64")
    tokens.set_data_from_numpy(np.zeros((1, 32), np.int64))
    while not stop.is_set():
        try:
            client.infer(decoder["model_name"], [tokens])
        except InferenceServerException:  # the queue is full for it too: try again
            full.set()
            time.sleep(0.01)
    client.close()


def test_a_full_triton_queue_is_429_with_retry_after(bounded, tmp_path):
    server, repo, decoder = bounded
    server.start()
    g = Gateway(repo, tmp_path / "gateway.log", backend="triton", triton_url=server.grpc_url)
    stop, full = threading.Event(), threading.Event()
    flooders = [threading.Thread(target=_flood, args=(server.grpc_url, decoder, stop, full)) for _ in range(3)]
    try:
        for t in flooders:
            t.start()
        assert full.wait(HANG_S), "the flooders never filled Triton's queue"  # the decoder is busy, its queue full
        path, body = DETOKENIZE
        answers = [httpx.post(f"{g.url}{path}", json=body, timeout=HANG_S) for _ in range(6)]
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 429} and 429 in codes, codes
        refused = next(r for r in answers if r.status_code == 429)
        assert_error(refused, 429, "overloaded")
        assert refused.headers["retry-after"] == "1"
        stop.set()
        for t in flooders:
            t.join(timeout=HANG_S)
        # a full queue is not an outage: the gateway stayed ready and serves once the others are gone
        assert status(g.url) == 200
        assert httpx.post(f"{g.url}{path}", json=body, timeout=HANG_S).status_code == 200
    finally:
        stop.set()
        g.stop()
