"""The gateway over real HTTP (uvicorn subprocesses, httpx): endpoints, errors with real broken files, seeds under
concurrency, step-level batching, logs, startup errors, and a schemathesis fuzz of the schema. What needs no process
(backpressure, deadlines, clients that leave, worker errors, auth, CORS) is tested in-process in test_engine.py."""

import asyncio
import base64
import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAMILY, ROOT, Gateway

# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def noise(size=(40, 30), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode)


def png_declaring(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims width x height (with a correct CRC): a decompression bomb's header."""
    data = bytearray(encode(Image.new("RGB", (1, 1))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def truncated_png() -> bytes:
    data = encode(noise((64, 64)))
    return data[: len(data) // 2]


def png_with_a_broken_header_crc() -> bytes:
    """A PNG whose size is fine but whose IHDR fails its CRC (the size is read before PIL's own checks run)."""
    data = bytearray(encode(noise((8, 8))))
    data[29] ^= 0xFF
    return bytes(data)


def metric(url: str, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def post_generate(url: str, headers=None, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/generate", json=body, headers=headers, timeout=60)


async def _gather(url: str, bodies: list[dict], headers=None, timeout=120) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers) as client:
        return await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))


def generate_many(url: str, bodies: list[dict], headers=None) -> list[httpx.Response]:
    return asyncio.run(_gather(url, bodies, headers))


def wait_for_log(gateway: Gateway, wanted, bound_s: float = 30) -> list[dict]:
    """The gateway's JSON log lines for which ``wanted(doc)`` holds, once there is one (the log is written after
    the answer is sent); the bound only turns a missing line into a failure."""
    deadline = time.monotonic() + bound_s
    while True:
        lines = [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")]
        found = [doc for doc in lines if wanted(doc)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def assert_error(response: httpx.Response, status: int, type_: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_, body
    assert isinstance(body["error"]["message"], str) and "Traceback" not in body["error"]["message"]
    if param is not None:
        assert body["error"].get("param") == param, body
    return body["error"]


# ---------------------------------------------------------------------------------------------------
# Shape of the install, and the basic endpoints
# ---------------------------------------------------------------------------------------------------


def test_gateway_imports_neither_torch_nor_training_nor_export():
    code = (
        "import sys, service.app, service.__main__, service.backends.embedded\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'export'))\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_health_ready_and_models(gateway, model_repository):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok", "models": [FAMILY]}
    assert httpx.get(f"{gateway.url}/readyz").json()["models"] == [FAMILY]
    manifest = json.loads((model_repository / f"{FAMILY}.manifest.json").read_text())
    card = httpx.get(f"{gateway.url}/v1/models").json()["data"][0]
    assert card["id"] == FAMILY
    for key in ("image_size", "num_tokens", "codebook_size", "num_classes", "max_batch_size"):
        assert card[key] == manifest[key]
    assert [c["name"] for c in card["classes"]] == manifest["class_names"]
    assert card["sampling"] == manifest["sampling"]
    assert "/v1/generate" in httpx.get(f"{gateway.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{gateway.url}/docs").status_code == 200
    # invalid JSON is named as such, not as a field "[1]"
    r = httpx.post(f"{gateway.url}/v1/generate", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "param" not in r.json()["error"]
    assert r.json()["error"]["message"].startswith("the body is not valid JSON: "), r.json()


def test_request_id_is_echoed_or_made_and_logged_as_json(gateway):
    r = httpx.get(f"{gateway.url}/v1/models", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = httpx.get(f"{gateway.url}/v1/models").headers["x-request-id"]
    assert len(made) == 32 and made != "abc-123"
    assert httpx.get(f"{gateway.url}/healthz", headers={"X-Request-ID": "bad id\t!"}).headers["x-request-id"] != ""
    mine = wait_for_log(gateway, lambda doc: doc.get("request_id") == "abc-123")
    assert len(mine) == 1
    assert mine[0]["route"] == "/v1/models" and mine[0]["status"] == 200 and mine[0]["duration_ms"] >= 0


def test_cors_is_off_by_default(gateway):
    r = httpx.get(f"{gateway.url}/v1/models", headers={"Origin": "http://example.com"})
    assert "access-control-allow-origin" not in r.headers


# ---------------------------------------------------------------------------------------------------
# tokenize / detokenize
# ---------------------------------------------------------------------------------------------------


def _modes() -> list[tuple[str, bytes]]:
    rgba = noise((50, 40), "RGBA", 1)
    palette = noise((33, 33), "RGB", 2).convert("P")
    grey16 = Image.fromarray(np.random.default_rng(3).integers(0, 65535, (20, 30), dtype=np.uint16))
    return [
        ("png-rgb", encode(noise())),
        ("png-rgba", encode(rgba)),
        ("png-palette-transparent", encode(palette, transparency=0)),
        ("png-grey16", encode(grey16)),
        ("jpeg-large", encode(noise((700, 300)), "JPEG", quality=90)),
        ("webp-grey", encode(noise((32, 32), "L"), "WEBP", lossless=True)),
    ]


def test_tokenize_any_size_and_mode_json_and_multipart_agree(gateway):
    files = _modes()
    r = httpx.post(f"{gateway.url}/v1/tokenize", json={"images": [b64(d) for _, d in files]}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == FAMILY and len(body["tokens"]) == len(files)
    assert all(len(t) == body["num_tokens"] and all(0 <= i < body["codebook_size"] for i in t) for t in body["tokens"])
    upload = [("files", (name, data, "application/octet-stream")) for name, data in files]
    r2 = httpx.post(f"{gateway.url}/v1/tokenize", files=upload, data={"model": FAMILY}, timeout=30)
    assert r2.status_code == 200, r2.text
    assert r2.json()["tokens"] == body["tokens"]
    data_url = "data:image/png;base64," + b64(files[0][1])
    r3 = httpx.post(f"{gateway.url}/v1/tokenize", json={"images": [data_url]})
    assert r3.json()["tokens"][0] == body["tokens"][0]


def test_preprocessing_matches_the_training_pipeline():
    from titok_core.images import preprocess
    from training.data import resize_center_crop

    for name, data in _modes():
        img = Image.open(io.BytesIO(data))
        expected = np.asarray(resize_center_crop(img, 32))
        assert np.array_equal(preprocess(img, 32), expected), name


def test_detokenize_json_formats_and_raw_bytes(gateway):
    tokens = httpx.post(f"{gateway.url}/v1/tokenize", json={"images": [b64(encode(noise()))] * 2}).json()["tokens"]
    for fmt, pil in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        r = httpx.post(f"{gateway.url}/v1/detokenize", json={"tokens": tokens, "format": fmt})
        assert r.status_code == 200, r.text
        images = r.json()["images"]
        assert len(images) == 2
        img = Image.open(io.BytesIO(base64.b64decode(images[0]["b64_json"])))
        assert img.format == pil and img.size == (32, 32)
    raw = httpx.post(f"{gateway.url}/v1/detokenize", json={"tokens": tokens[:1]}, headers={"Accept": "image/png"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    png = httpx.post(f"{gateway.url}/v1/detokenize", json={"tokens": tokens[:1]}).json()["images"][0]["b64_json"]
    assert raw.content == base64.b64decode(png)
    webp = httpx.post(f"{gateway.url}/v1/detokenize", json={"tokens": tokens[:1]}, headers={"Accept": "image/webp"})
    assert webp.headers["content-type"] == "image/webp"
    many = httpx.post(f"{gateway.url}/v1/detokenize", json={"tokens": tokens}, headers={"Accept": "image/png"})
    assert many.headers["content-type"] == "application/json"  # raw bytes only for a single sequence


# ---------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------


def test_generate_fields_names_and_per_item_seeds(gateway):
    r = post_generate(gateway.url, class_labels=[7, "ankle boot"], n=2, seed=40, return_tokens=True, num_steps=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == FAMILY and body["format"] == "png" and abs(body["created"] - time.time()) < 60
    images = body["images"]
    assert [i["class_label"] for i in images] == [7, 7, 9, 9]
    assert [i["class_name"] for i in images] == ["Sneaker", "Sneaker", "Ankle boot", "Ankle boot"]
    assert [i["seed"] for i in images] == [40, 41, 42, 43]
    assert all(len(i["tokens"]) == 32 and 0 <= min(i["tokens"]) and max(i["tokens"]) < 1024 for i in images)
    # item i of a request is the same as a request of one image with seed + i
    alone = post_generate(gateway.url, class_labels="Ankle boot", seed=43, return_tokens=True, num_steps=4).json()
    assert alone["images"][0]["tokens"] == images[3]["tokens"]
    assert alone["images"][0]["b64_json"] == images[3]["b64_json"]
    unseeded = post_generate(gateway.url, class_labels=0).json()["images"][0]
    assert "tokens" not in unseeded and isinstance(unseeded["seed"], int)
    webp = post_generate(gateway.url, class_labels=0, format="webp", guidance_schedule="power-cosine").json()
    assert Image.open(io.BytesIO(base64.b64decode(webp["images"][0]["b64_json"]))).format == "WEBP"


def test_seeded_request_gives_identical_bytes_alone_and_among_30_others(gateway):
    mine = {"class_labels": [3], "n": 2, "seed": 1234, "return_tokens": True, "num_steps": 6, "guidance_scale": 3.0}
    alone = post_generate(gateway.url, **mine).json()
    others = [
        {"class_labels": [i % 10], "seed": 10_000 + i, "num_steps": 2 + i % 7, "guidance_schedule": s}
        for i, s in zip(range(30), ["constant", "linear", "power-cosine"] * 10, strict=True)
    ]
    before = metric(gateway.url, "titok_batch_size_count", graph="generator")
    responses = generate_many(gateway.url, others[:15] + [mine] + others[15:])
    assert all(r.status_code == 200 for r in responses)
    crowded = responses[15].json()
    assert crowded["images"] == alone["images"]  # tokens and image bytes
    assert metric(gateway.url, "titok_batch_size_count", graph="generator") > before


def test_64_concurrent_generations_are_all_answered_in_shared_batches(gateway):
    bodies = [{"class_labels": i % 10, "seed": i} for i in range(64)]
    start = time.perf_counter()
    responses = generate_many(gateway.url, bodies)
    elapsed = time.perf_counter() - start
    assert [r.status_code for r in responses] == [200] * 64
    assert all(len(r.json()["images"]) == 1 for r in responses)
    for graph in ("generator", "decoder"):
        calls = metric(gateway.url, "titok_batch_size_count", graph=graph)
        single = metric(gateway.url, "titok_batch_size_bucket", graph=graph, le="1.0")
        assert calls > single, f"no {graph} batch above 1 row"  # some call had more than one row
    assert metric(gateway.url, "titok_images_generated_total") >= 64
    assert metric(gateway.url, "titok_tokens_produced_total", route="generate") >= 64 * 32
    assert metric(gateway.url, "titok_requests_in_flight") == 1  # only the /metrics scrape itself
    assert metric(gateway.url, "titok_active_generations") == 0
    print(f"64 concurrent generate requests in {elapsed:.2f} s")


# ---------------------------------------------------------------------------------------------------
# Errors and limits
# ---------------------------------------------------------------------------------------------------

_TOKENS_OK = [[1] * 32]
ERROR_CASES = {
    # name: (path, request kwargs, status, type, param)
    "truncated png": ("/v1/tokenize", {"json": {"images": [b64(truncated_png())]}}, 400, "invalid_image", "images[0]"),
    "truncated png upload": (
        "/v1/tokenize",
        {"files": [("files", ("t.png", truncated_png(), "image/png"))]},
        400,
        "invalid_image",
        "images[0]",
    ),
    "png whose IHDR fails its CRC": (
        "/v1/tokenize",
        {"json": {"images": [b64(png_with_a_broken_header_crc())]}},
        400,
        "invalid_image",
        "images[0]",
    ),
    "50000x50000 png": (
        "/v1/tokenize",
        {"json": {"images": [b64(encode(noise())), b64(png_declaring(50_000, 50_000))]}},
        413,
        "payload_too_large",
        "images[1]",
    ),
    "5000x5000 png over the pixel limit": (
        "/v1/tokenize",
        {"files": [("files", ("b.png", png_declaring(5000, 5000), "image/png"))]},
        413,
        "payload_too_large",
        "images[0]",
    ),
    "not base64": ("/v1/tokenize", {"json": {"images": ["%%%not base64%%%"]}}, 400, "invalid_image", "images[0]"),
    "not an image": ("/v1/tokenize", {"json": {"images": [b64(b"hello world")]}}, 400, "invalid_image", "images[0]"),
    "gif": ("/v1/tokenize", {"json": {"images": [b64(encode(noise(), "GIF"))]}}, 415, "unsupported_media_type", None),
    "upload of text/plain": (
        "/v1/tokenize",
        {"files": [("files", ("a.txt", b"hello", "text/plain"))]},
        415,
        "unsupported_media_type",
        "files[0]",
    ),
    "tokenize as text/plain": ("/v1/tokenize", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, None),
    "generate as form": ("/v1/generate", {"data": {"class_labels": "1"}}, 415, "unsupported_media_type", None),
    "detokenize as xml": (
        "/v1/detokenize",
        {"content": b"<tokens/>", "headers": {"content-type": "application/xml"}},
        415,
        "unsupported_media_type",
        None,
    ),
    "too many images": ("/v1/tokenize", {"json": {"images": ["AA=="] * 65}}, 413, "payload_too_large", "images"),
    "no upload": ("/v1/tokenize", {"files": {"other": ("a.png", b"x")}}, 400, "invalid_request", "files"),
    "short sequence": ("/v1/detokenize", {"json": {"tokens": [[1] * 31]}}, 400, "invalid_request", "tokens[0]"),
    "id out of range": (
        "/v1/detokenize",
        {"json": {"tokens": _TOKENS_OK + [[0, 1, 2, 1024] + [0] * 28]}},
        400,
        "invalid_request",
        "tokens[1][3]",
    ),
    "negative id": ("/v1/detokenize", {"json": {"tokens": [[-1] + [0] * 31]}}, 400, "invalid_request", "tokens[0][0]"),
    "unknown class name": ("/v1/generate", {"json": {"class_labels": "Hat"}}, 400, "invalid_request", "class_labels"),
    "class out of range": (
        "/v1/generate",
        {"json": {"class_labels": [1, 10]}},
        400,
        "invalid_request",
        "class_labels[1]",
    ),
    "n over the limit": ("/v1/generate", {"json": {"class_labels": [1, 2], "n": 33}}, 400, "invalid_request", "n"),
    "steps over the limit": (
        "/v1/generate",
        {"json": {"class_labels": 1, "num_steps": 65}},
        400,
        "invalid_request",
        "num_steps",
    ),
    "unknown model": ("/v1/generate", {"json": {"class_labels": 1, "model": "nope"}}, 404, "model_not_found", "model"),
    "unknown model tokenize": (
        "/v1/tokenize",
        {"json": {"images": [b64(encode(noise()))], "model": "nope"}},
        404,
        "model_not_found",
        "model",
    ),
    "missing field": ("/v1/generate", {"json": {"n": 2}}, 422, "validation_error", "class_labels"),
    "unknown field": ("/v1/generate", {"json": {"class_labels": 1, "size": 3}}, 422, "validation_error", "size"),
    "n zero": ("/v1/generate", {"json": {"class_labels": 1, "n": 0}}, 422, "validation_error", "n"),
    "NaN guidance": (
        "/v1/generate",
        {"content": b'{"class_labels": 1, "guidance_scale": NaN}', "headers": {"content-type": "application/json"}},
        422,
        "validation_error",
        "guidance_scale",
    ),
    "broken json": (
        "/v1/detokenize",
        {"content": b'{"tokens": [[1, 2', "headers": {"content-type": "application/json"}},
        422,
        "validation_error",
        None,
    ),
    "tokenize schema": ("/v1/tokenize", {"json": {"images": []}}, 422, "validation_error", "images"),
    "huge body": ("/v1/detokenize", {"content": b"[" * (3 << 20)}, 413, "payload_too_large", None),
    "huge chunked body": (
        "/v1/tokenize",
        {"content": iter([b"x" * (1 << 20)] * 3), "headers": {"content-type": "application/json"}},
        413,
        "payload_too_large",
        None,
    ),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_errors_have_one_shape_and_the_right_status(gateway, name):
    path, kwargs, status, type_, *param = ERROR_CASES[name] + (None,) * (5 - len(ERROR_CASES[name]))
    r = httpx.post(f"{gateway.url}{path}", timeout=30, **kwargs)
    assert_error(r, status, type_ or "unsupported_media_type", param[0])
    assert r.headers["x-request-id"]


def test_unknown_route_and_wrong_method_use_the_error_shape(gateway):
    assert_error(httpx.get(f"{gateway.url}/v2/nothing"), 404, "not_found")
    r = httpx.get(f"{gateway.url}/v1/generate")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_errors_are_counted_by_type(gateway):
    before = metric(gateway.url, "titok_errors_total", type="model_not_found")
    post_generate(gateway.url, class_labels=1, model="nope")
    assert metric(gateway.url, "titok_errors_total", type="model_not_found") == before + 1
    assert metric(gateway.url, "titok_requests_total", route="/v1/generate", status="404") >= 1


# ---------------------------------------------------------------------------------------------------
# Settings the gateway cannot start with (backpressure, deadlines, clients that leave, auth and CORS:
# tests/test_engine.py, in-process)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"TITOK_MODEL_REPOSITORY": "/nonexistent"}, "no model family"),
        ({"TITOK_MAX_BATCH_SIZE": "0"}, "TITOK_MAX_BATCH_SIZE"),
    ],
)
def test_bad_settings_are_a_clear_startup_error(model_repository, settings, message):
    env = {"TITOK_MODEL_REPOSITORY": str(model_repository), "PATH": "/usr/bin:/bin", **settings}
    r = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_taken_port_is_a_failed_start(model_repository):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"TITOK_MODEL_REPOSITORY": str(model_repository), "TITOK_PORT": str(port), "PATH": "/usr/bin:/bin"}
        cmd = [sys.executable, "-m", "service"]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "address already in use" in r.stderr, (r.returncode, r.stderr[-500:])


# ---------------------------------------------------------------------------------------------------
# Fuzzing the OpenAPI schema
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_schemathesis_fuzz_finds_no_server_error(gateway, tmp_path):
    exe = Path(sys.executable).parent / "schemathesis"  # the dev extra installs it beside this interpreter
    assert exe.is_file(), f"schemathesis is missing from {exe.parent}: install the dev extra (make setup-dev)"
    cmd = [
        exe,
        "run",
        f"{gateway.url}/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--max-examples",
        "150",
        "--seed",
        "1",
        "--request-timeout",
        "30",
        "--phases",
        "examples,coverage,fuzzing",
        "--suppress-health-check",
        "all",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
