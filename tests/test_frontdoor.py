"""The front door (issue 16), fast: the connection limits and the contract over real HTTP against a real gateway
process with small limits, admission before work in-process on the fake backend, and the image handling itself.

The full hostile suite (a capped gateway, RSS and /healthz stalls) is tests/test_hostile.py (slow).
"""

import asyncio
import base64
import io
import json
import re
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.hostile import png, raw
from service.errors import Overloaded
from service.images import decode_base64
from service.protocol import _OneSend
from tests.conftest import FAMILY, Gateway
from tests.test_engine import app_on_fake, assert_error, until
from titok_core.images import _on_black, preprocess, to_rgb

KEY = "front-door-key"
ORIGIN = "http://ok.example"


@pytest.fixture(scope="module")
def door(model_repository, tmp_path_factory):
    """A gateway with small limits, CORS on, an API key and /metrics behind it."""
    g = Gateway(
        model_repository,
        tmp_path_factory.mktemp("door") / "gateway.log",
        max_body_bytes=1 << 20,
        max_image_pixels=1 << 20,
        max_connections=16,
        max_header_bytes=4096,
        read_timeout_s=1,
        cors_origins=ORIGIN,
        api_keys=KEY,
        metrics_require_key="true",
    )
    yield g
    g.stop()


@pytest.fixture
def client(door):
    with httpx.Client(base_url=door.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def error_of(r: httpx.Response, status: int, type_: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"error"} and r.json()["error"]["type"] == type_, r.text
    return r.json()["error"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the served port ------------------------------------------------------------------------------------


def test_headers_over_the_limit_are_431_json(door):
    assert raw(door.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n") == 431
    assert raw(door.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", [b"X-A: b\r\n"] * 1000) == 431


def answers(port: int, pieces: list[bytes], expected: int, gap_s: float = 0.05) -> list[bytes]:
    """Send ``pieces`` on one connection, ``gap_s`` apart (so that the gateway reads them apart), then read until
    ``expected`` answers' status lines came or the gateway closed; those status lines."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    got = b""
    try:
        for piece in pieces:
            try:
                s.sendall(piece)
            except OSError:  # refused and closed before the rest
                break
            time.sleep(gap_s)
        while got.count(b"HTTP/1.1 ") < expected and (chunk := s.recv(65536)):
            got += chunk
    finally:
        s.close()
    return re.findall(rb"HTTP/1\.1 \d\d\d[^\r]*", got)


def test_the_header_limit_is_exact_in_one_piece_split_and_after_a_first_request(door):
    def head(size: int) -> bytes:
        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
        return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"

    assert len(head(4096)) == 4096
    assert answers(door.port, [head(4096)], 1) == [b"HTTP/1.1 200 OK"]
    assert answers(door.port, [head(4097)], 1) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    # the blank line split between two reads, and a request line that begins byte by byte
    assert answers(door.port, [head(4096)[:-3], head(4096)[-3:]], 1) == [b"HTTP/1.1 200 OK"]
    assert answers(door.port, [head(4097)[:-3], head(4097)[-3:]], 1)[-1].startswith(b"HTTP/1.1 431")
    assert answers(door.port, [b"G", b"E", head(4097)[2:]], 1)[-1].startswith(b"HTTP/1.1 431")
    # on a kept-alive connection, the second request is counted from its own first byte
    statuses = answers(door.port, [head(4000), head(4000), head(4097)], 3, gap_s=0.2)
    assert statuses[:2] == [b"HTTP/1.1 200 OK"] * 2 and statuses[2].startswith(b"HTTP/1.1 431"), statuses


def test_pipelined_requests_are_answered_in_order(door):
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    assert answers(door.port, [get * 3], 3) == [b"HTTP/1.1 200 OK"] * 3


def test_chunked_bodies_with_trailers_and_split_chunks_are_read_and_long_trailers_are_431(door):
    body = json.dumps({"tokens": [[0] * 32]}).encode()
    head = (
        b"POST /v1/detokenize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    size = b"%x\r\n" % len(body)
    # a chunk's size line and its data in two reads (the data is not taken for trailers), then a short trailer
    pieces = [head, size, body + b"\r\n", b"0\r\n", b"X-Checksum: 1\r\n", b"\r\n"]
    assert answers(door.port, pieces, 1) == [b"HTTP/1.1 200 OK"]
    # trailers that never end: refused at the header limit, long before the body's read timeout
    pieces = [head, size + body + b"\r\n", b"0\r\n", *[b"X-A: " + b"b" * 500 + b"\r\n"] * 12]
    assert answers(door.port, pieces, 1)[-1].startswith(b"HTTP/1.1 431")
    pieces = [head, size + body + b"\r\n", b"0\r\nX-Long: ", *[b"c" * 1000] * 6]
    assert answers(door.port, pieces, 1)[-1].startswith(b"HTTP/1.1 431")


def test_late_headers_an_idle_socket_and_a_slow_body_are_408(door):
    assert raw(door.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", wait_s=10) == 408
    assert raw(door.port, b"", wait_s=10) == 408
    head = b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n"
    assert raw(door.port, head + b"{", wait_s=10) == 408


def test_a_malformed_request_is_400_in_the_one_shape(door):
    s = socket.create_connection(("127.0.0.1", door.port), timeout=10)
    s.sendall(b"GARBAGE\r\n\r\n")
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["type"] == "invalid_request"


def test_connections_over_the_cap_are_429_and_closed_at_once(door, client):
    held = [socket.create_connection(("127.0.0.1", door.port)) for _ in range(24)]
    try:
        refused = 0
        for s in held:
            s.settimeout(5)
            try:
                refused += s.recv(64).startswith(b"HTTP/1.1 429")
            except TimeoutError:
                pass  # one of the 16 held: it gets a 408 only after the read timeout
        assert refused >= 8
    finally:
        for s in held:
            s.close()
    # the held ones are gone: the gateway answers again
    assert until_ok(lambda: client.get("/healthz").status_code == 200)


def until_ok(condition, bound_s: float = 10) -> bool:
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        try:
            if condition():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def test_a_body_over_the_limit_is_413_on_every_route_chunked_or_not(door, client):
    for path in ("/v1/generate", "/v1/detokenize", "/v1/tokenize", "/v1/variations"):
        chunked = client.post(path, content=iter([b" " * (1 << 19)] * 4), headers={"content-type": "application/json"})
        error_of(chunked, 413, "payload_too_large")
        declared = client.post(path, content=b" " * (2 << 20), headers={"content-type": "application/json"})
        error_of(declared, 413, "payload_too_large")


def test_a_json_body_with_too_many_values_is_413_before_it_is_parsed(client):
    body = b'{"class_labels": [' + b"0," * 100_000 + b"0]}"
    error_of(
        client.post("/v1/generate", content=body, headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
    )


def test_413_carries_cors_headers_and_a_refused_preflight_is_json(client):
    r = client.post(
        "/v1/generate", content=b" " * (2 << 20), headers={"Origin": ORIGIN, "content-type": "application/json"}
    )
    error_of(r, 413, "payload_too_large")
    assert r.headers["access-control-allow-origin"] == ORIGIN
    pre = client.options(
        "/v1/generate", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    error_of(pre, 400, "invalid_request")


def test_tokenize_and_detokenize_check_the_key_then_the_media_type_then_the_body(door, client):
    # the two routes call their checks themselves (service/routes.py): the order FastAPI's declared ones had
    for path in ("/v1/tokenize", "/v1/detokenize"):
        error_of(
            httpx.post(door.url + path, content=b"<x/>", headers={"content-type": "text/plain"}), 401, "unauthorized"
        )
        error_of(
            client.post(path, content=b"<x/>", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"
        )
        error_of(
            client.post(path, content=b'{"x": [', headers={"content-type": "application/json"}), 422, "validation_error"
        )
    raw_png = client.post("/v1/detokenize", json={"tokens": [[0] * 32]}, headers={"accept": "image/png"})
    assert raw_png.status_code == 200 and raw_png.content.startswith(b"\x89PNG")


def test_metrics_need_the_key_when_the_setting_says_so(door, client):
    error_of(httpx.get(door.url + "/metrics"), 401, "unauthorized")
    assert client.get("/metrics").status_code == 200


def test_head_where_get_is_allowed(client):
    r = client.head("/healthz")
    assert r.status_code == 200 and r.content == b""
    assert client.head("/v1/models").status_code == 200


# -- the contract ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"class_labels": True},
        {"class_labels": 0, "n": "2"},
        {"class_labels": 0, "seed": True},
        {"class_labels": 0, "return_tokens": 1},
        {"class_labels": [0] * 2000},
    ],
)
def test_no_coercion_and_bounded_lists(client, body):
    error_of(client.post("/v1/generate", json=body), 422, "validation_error")


def test_token_ids_are_integers_only(client):
    for token in (True, "5", 1.0):
        error_of(client.post("/v1/detokenize", json={"tokens": [[token] * 32]}), 422, "validation_error")


def test_every_reported_seed_can_be_sent_back(client):
    top = 2**63 - 1
    assert (
        error_of(client.post("/v1/generate", json={"class_labels": 0, "n": 3, "seed": top}), 400, "invalid_request")[
            "param"
        ]
        == "seed"
    )
    r = client.post("/v1/generate", json={"class_labels": 0, "n": 3, "seed": top - 2, "num_steps": 2})
    assert [im["seed"] for im in r.json()["images"]] == [top - 2, top - 1, top]


def test_malformed_json_is_422_on_every_route_without_a_byte_offset(client):
    for path in ("/v1/tokenize", "/v1/generate", "/v1/detokenize", "/v1/variations"):
        for body in (b"[" * 3000 + b"]" * 3000, b'{"model": "\xff"}', b'{"tokens": [[1, 2'):
            err = error_of(
                client.post(path, content=body, headers={"content-type": "application/json"}), 422, "validation_error"
            )
            assert err.get("param") in (None, "model", "tokens"), err


def test_too_many_multipart_files_is_413(client):
    files = [("files", ("a.png", png(8, 8), "image/png"))] * 66
    error_of(client.post("/v1/tokenize", files=files), 413, "payload_too_large")


def test_echoes_are_short_and_hold_no_object_reprs(client):
    err = error_of(client.post("/v1/generate", json={"class_labels": "x" * 100_000}), 400, "invalid_request")
    assert len(err["message"]) < 500
    err = error_of(
        client.post("/v1/tokenize", json={"images": [b64(b"\x89PNG\r\n\x1a\nbroken")]}), 400, "invalid_image"
    )
    assert " at 0x" not in err["message"]


def test_accept_q_zero_is_not_wanted(client):
    tokens = {"tokens": [[0] * 32]}
    r = client.post("/v1/detokenize", json=tokens, headers={"accept": "image/webp;q=0, image/png"})
    assert r.headers["content-type"] == "image/png"
    r = client.post("/v1/detokenize", json=tokens, headers={"accept": "image/png;q=0.5, image/webp"})
    assert r.headers["content-type"] == "image/webp"


def test_base64_with_line_breaks_any_case_prefix_and_part_parameters(client):
    image = png(32, 32)
    wrapped = "  DATA:image/png;base64,\n" + base64.encodebytes(image).decode() + "\n"
    plain = client.post("/v1/tokenize", json={"images": [b64(image)]}).json()["tokens"]
    assert client.post("/v1/tokenize", json={"images": [wrapped]}).json()["tokens"] == plain
    files = [("files", ("a.png", image, "image/png; x=y"))]
    assert client.post("/v1/tokenize", files=files).json()["tokens"] == plain
    assert decode_base64("data:image/png;base64,AAEC\r\nAw==", "i") == b"\x00\x01\x02\x03"


def test_pixel_budgets_are_checked_from_the_headers(client):
    tall = png(1, 200_000, "L")  # 200,000 pixels, but rows cost too: over the limit of 1 Mi (a 1 KB PNG)
    error_of(client.post("/v1/tokenize", json={"images": [b64(tall)]}), 413, "payload_too_large")
    assert client.post("/v1/tokenize", json={"images": [b64(png(1, 100_000, "L"))]}).status_code == 200


# -- admission before work (in-process, on the fake backend) -------------------------------------------


@pytest.mark.anyio
async def test_a_generate_holds_its_decoder_rows_from_admission(model_repository):
    async with app_on_fake(model_repository, max_batch_size=8, max_queue=2) as (app, client, backend):
        backend.hold("generator")
        first = asyncio.create_task(client.post("/v1/generate", json={"class_labels": 0, "n": 2, "num_steps": 2}))
        await backend.called("generator", 1)
        model = app.state.registry.models[FAMILY]
        with pytest.raises(Overloaded):  # the decoder is idle, but its 2 rows are the sampling request's
            with model.decoder.reserve(1):
                pass
        tokens = [[0] * model.info.num_tokens]
        assert_error(await client.post("/v1/detokenize", json={"tokens": tokens}), 429, "overloaded")
        backend.release("generator")
        assert (await first).status_code == 200
        assert (await client.post("/v1/detokenize", json={"tokens": tokens})).status_code == 200


@pytest.mark.anyio
async def test_tokenize_is_refused_for_capacity_before_its_images_are_decoded(model_repository):
    async with app_on_fake(model_repository, max_queue=1) as (app, client, backend):
        broken = b64(b"\x89PNG\r\n\x1a\nbroken")
        # 2 images for 1 encoder row: 429, not the 400 that decoding the broken image would give
        assert_error(await client.post("/v1/tokenize", json={"images": [broken, broken]}), 429, "overloaded")


@pytest.mark.anyio
async def test_a_cancelled_waiting_generate_leaves_the_queue_count_at_once(model_repository):
    async with app_on_fake(model_repository, max_batch_size=1) as (app, client, backend):
        backend.hold("generator")
        scheduler = app.state.registry.models[FAMILY].scheduler
        body = {"class_labels": 0, "num_steps": 2}
        first = asyncio.create_task(client.post("/v1/generate", json=body))
        await backend.called("generator", 1)
        waiting = asyncio.create_task(client.post("/v1/generate", json={**body, "n": 4}))
        await until(lambda: scheduler._waiting_items == 4)
        waiting.cancel()
        await until(lambda: scheduler._waiting_items == 0)
        backend.release("generator")
        assert (await first).status_code == 200


# -- the image handling ---------------------------------------------------------------------------------


def test_an_elongated_image_is_cropped_before_it_is_resized():
    out = preprocess(Image.new("L", (1, 1_000_000), 200), 32)
    assert out.shape == (32, 32, 3) and (out == 200).all()


def test_trns_colour_key_is_composited_on_black():
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(buf, "PNG", transparency=(10, 200, 30))
    assert (preprocess(Image.open(io.BytesIO(buf.getvalue())), 32) == 0).all()


def test_the_strip_wise_conversion_equals_one_alpha_composite():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (1100, 700, 4), dtype=np.uint8), "RGBA")
    black = Image.new("RGBA", img.size, (0, 0, 0, 255))
    whole = np.asarray(Image.alpha_composite(black, img).convert("RGB"))
    assert np.array_equal(np.asarray(to_rgb(img)), whole)
    assert np.array_equal(_on_black(img), whole)


# -- one send per turn of the event loop (service/protocol.py) ------------------------------------------


def test_writes_in_one_turn_leave_in_one_send_in_order_and_before_a_close():
    async def scenario() -> tuple[bytes, list[int]]:
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        sends: list[int] = []
        write = transport.write
        transport.write = lambda data: (sends.append(len(data)), write(data))  # type: ignore[method-assign]
        out = _OneSend(transport, loop)
        out.write(b"head;")
        out.write(b"body;")  # same turn: one send with the head
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        out.write(b"small;")
        out.write(b"L" * 70_000)  # large: what is held leaves first, then it, uncopied
        out.write(b"last")
        out.close()  # what is held leaves before the close
        theirs.settimeout(5)
        got = b""
        while chunk := await loop.run_in_executor(None, theirs.recv, 1 << 20):
            got += chunk
        theirs.close()
        return got, sends

    got, sends = asyncio.run(scenario())
    assert got == b"head;body;small;" + b"L" * 70_000 + b"last"
    assert sends == [10, 6, 70_000, 4]
