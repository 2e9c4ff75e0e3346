"""The small-request path of tokenize and detokenize: no thread hop per request where the work is small, and the
same answers and errors whichever path a request takes (inline or in a worker thread)."""

import asyncio
import base64
import inspect
import io

import httpx
import numpy as np
import pytest
from fastapi.routing import APIRoute
from PIL import Image

from service.app import create_app
from service.dependencies import _INLINE_BASE64_CHARS
from service.images import encode_image
from service.openai_images import router as openai_router
from service.routes import router
from service.serving import _INLINE_ENCODE_PIXELS
from service.settings import Settings


def _calls(dependant):
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


def test_every_api_dependency_runs_on_the_event_loop():
    # FastAPI runs a plain ``def`` dependency in a worker thread: a hop per dependency per request
    routes = [r for r in (*router.routes, *openai_router.routes) if isinstance(r, APIRoute)]
    assert {"/v1/tokenize", "/v1/detokenize", "/v1/generate"} <= {r.path for r in routes}
    plain = {(r.path, c.__name__) for r in routes for c in _calls(r.dependant) if not inspect.iscoroutinefunction(c)}
    assert plain == set()


def _idat_level(png: bytes) -> int:
    """The FLEVEL field of a PNG's zlib stream (0: fastest ... 2: default, 3: best)."""
    at = png.index(b"IDAT") + 4
    return png[at + 1] >> 6


def test_png_is_encoded_fast_lossless_and_deterministic():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = encode_image(image, "png")
    assert _idat_level(data) == 0  # zlib's fastest level
    assert data == encode_image(image.copy(), "png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), image)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (32, 32, 3), (256, 256, 3)])
def test_the_png_writer_round_trips_through_pil(shape):
    # the writer is our own (PIL's costs more per small image than the rest of a request): PIL must read back the
    # exact pixels, a non-square and a one-pixel image included, and refuse nothing (its CRC checks pass)
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image[shape[0] // 2 :] //= 4  # smooth and noisy rows alike
    with Image.open(io.BytesIO(encode_image(image, "png"))) as decoded:
        assert (decoded.format, decoded.mode, decoded.size) == ("PNG", "RGB", (shape[1], shape[0]))
        assert np.array_equal(np.asarray(decoded), image)


def test_encoding_refuses_an_array_that_is_not_an_rgb_image():
    with pytest.raises(ValueError, match="H, W, 3"):
        encode_image(np.zeros((4, 4), dtype=np.uint8), "png")


def _png(size: int, seed: int) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_small_and_large_uploads_agree_whichever_thread_decodes_them(gateway):
    small, large = _png(32, 1), _png(160, 2)  # base64 under and over the inline bound
    assert len(base64.b64encode(small)) <= _INLINE_BASE64_CHARS < len(base64.b64encode(large))
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        alone = [client.post("/v1/tokenize", json={"images": [base64.b64encode(d).decode()]}) for d in (small, large)]
        both = client.post("/v1/tokenize", json={"images": [base64.b64encode(d).decode() for d in (small, large)]})
        assert [r.status_code for r in (*alone, both)] == [200, 200, 200], both.text
        assert both.json()["tokens"] == alone[0].json()["tokens"] + alone[1].json()["tokens"]
        bad = client.post("/v1/tokenize", json={"images": ["not base64!"]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "images[0]"


def test_detokenize_gives_the_same_bytes_inline_and_in_a_worker_thread(gateway):
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 1024, (8, 32)).tolist()
    assert 32 * 32 <= _INLINE_ENCODE_PIXELS < 8 * 32 * 32  # one image inline, eight in a worker thread
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        many = client.post("/v1/detokenize", json={"tokens": tokens})
        one = client.post("/v1/detokenize", json={"tokens": tokens[5:6]})
    assert many.status_code == one.status_code == 200, many.text
    assert many.json()["images"][5]["b64_json"] == one.json()["images"][0]["b64_json"]


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_the_embedded_backend_counts_the_seconds_inside_each_graph(model_repository, graph):
    app = create_app(Settings(model_repository=model_repository))
    model = next(iter(app.state.registry.models.values()))
    backend, info = model.backend, model.info
    rng = np.random.default_rng(0)
    inputs = {
        "encoder": rng.integers(0, 256, (2, info.image_size, info.image_size, 3), dtype=np.uint8),
        "decoder": rng.integers(0, info.codebook_size, (2, info.num_tokens), dtype=np.int64),
    }[graph]
    assert backend.graph_seconds[graph] == 0
    direct = backend.run_graph(graph, inputs)
    through = asyncio.run((backend.encode if graph == "encoder" else backend.decode)(inputs))
    assert np.array_equal(direct, through)
    assert backend.graph_seconds[graph] > 0
    asyncio.run(backend.close())


def test_the_hot_routes_skip_fastapis_plumbing_but_not_its_answers(gateway):
    # tokenize, detokenize and generate are called by service/middleware.py's HotRoutes: their answers, errors,
    # metric labels and request ids must be what FastAPI's router gave; other methods on their paths still reach it
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        ok = client.post("/v1/generate", json={"class_labels": 1, "seed": 5}, headers={"X-Request-ID": "hot-1"})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "hot-1"
        assert ok.json()["images"][0]["seed"] == 5 and "tokens" not in ok.json()["images"][0]  # exclude_none
        invalid = client.post("/v1/detokenize", json={"tokens": [[1] * 31]})  # 31 ids: the model's own check
        assert invalid.status_code == 400 and set(invalid.json()) == {"error"}
        schema = client.post("/v1/tokenize", json={"images": "not a list"})
        assert schema.status_code == 422 and schema.json()["error"]["type"] == "validation_error"
        wrong_type = client.post("/v1/generate", content=b"{}", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415 and wrong_type.json()["error"]["type"] == "unsupported_media_type"
        not_post = client.get("/v1/tokenize")
        assert not_post.status_code == 405 and not_post.json()["error"]["type"] == "method_not_allowed"
        metrics = client.get("/metrics").text
    for status in ("200", "400", "415"):
        route = "/v1/generate" if status != "400" else "/v1/detokenize"
        assert f'route="{route}",status="{status}"' in metrics.replace('method="POST",', "")
