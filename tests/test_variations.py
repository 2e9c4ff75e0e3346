"""Variations (``POST /v1/variations``): in-process on the fake backend (the scheduler with variations among
generations, the request's fields and every bad input in the one error shape), then over real HTTP on the shipped
model (image and tokens sources, JSON and multipart, strength 0 and 1, seeded bytes alone and among others)."""

import asyncio
import base64
import gzip
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAMILY
from tests.test_engine import (
    DIMS,
    FakeBackend,
    alone,
    app_on_fake,
    assert_error,
    fake_logits,
    gens,
    running,
    sample,
    scheduler,
)
from titok_core.sampler import Generation, SamplingSettings, advance, build_batch, strength_mask

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
SOURCE = [(7 * i + 3) % 1024 for i in range(32)]


def variation(source, hidden, class_id, seed, **settings) -> Generation:
    dims = dict(codebook_size=DIMS["codebook_size"], num_classes=DIMS["num_classes"])
    return Generation.resume(np.asarray(source), hidden, class_id, seed, SamplingSettings(**settings), **dims)


def vary_alone(source, hidden, class_id, seed, **settings) -> list[int]:
    gen = variation(source, hidden, class_id, seed, **settings)
    while not gen.done:
        tokens, classes, rows = build_batch([gen])
        advance([gen], fake_logits(tokens, classes, DIMS["codebook_size"]), rows)
    return gen.tokens.tolist()


# ---------------------------------------------------------------------------------------------------
# In process
# ---------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_variations_join_generations_in_flight_and_give_what_they_give_alone():
    backend = FakeBackend()
    backend.hold("generator")
    source = [3, 1, 4, 1, 5, 9, 2, 6]
    settings = dict(num_steps=6, guidance_scale=2.0)
    async with running(scheduler(backend)) as s:
        first = asyncio.create_task(s.generate(gens([0, 1], [1, 2], **settings)))
        await backend.called("generator", 1)
        mine = [variation(source, [0, 2, 5], 2, 11, **settings), variation(source, [1, 7], 3, 12, **settings)]
        late = asyncio.create_task(s.generate(mine))  # class 3 is the null class here: unconditional
        kept = asyncio.create_task(s.generate([variation(source, [], 1, 13, **settings)]))  # nothing hidden
        await asyncio.sleep(0)
        backend.release("generator")
        fresh, varied, same = await first, await late, await kept
    assert varied[0].tolist() == vary_alone(source, [0, 2, 5], 2, 11, **settings)
    assert varied[1].tolist() == vary_alone(source, [1, 7], 3, 12, **settings)
    assert [varied[0][i] for i in (1, 3, 4, 6, 7)] == [source[i] for i in (1, 3, 4, 6, 7)]
    assert same[0].tolist() == source
    assert fresh[1].tolist() == alone(1, 2, **settings)
    # the variation with nothing hidden never reaches the step graph: every call has the other four items' rows, and
    # guidance (a null-class row in the graph) for at most the three that are not unconditional
    assert max(len(t) for t in backend.inputs("generator")) == 4
    assert max(int((g != 0).sum()) for g in backend.inputs("generator", 4)) == 3


@pytest.mark.anyio
async def test_variations_in_process_fields_and_counts(model_repository):
    async with app_on_fake(model_repository) as (app, client, backend):
        body = {"tokens": SOURCE, "mask": [5, 0, 9], "class_labels": ["Dress", None], "n": 2, "seed": 4}
        r = await client.post("/v1/variations", json={**body, "num_steps": 4, "return_tokens": True})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == FAMILY and answer["source_tokens"] == SOURCE
        images = answer["images"]
        assert [(i["class_label"], i["class_name"], i["seed"]) for i in images] == [
            (3, "Dress", 4),
            (3, "Dress", 5),
            (None, None, 6),
            (None, None, 7),
        ]
        for image in images:
            assert image["regenerated"] == [0, 5, 9]
            assert [t for j, t in enumerate(image["tokens"]) if j not in (0, 5, 9)] == [
                t for j, t in enumerate(SOURCE) if j not in (0, 5, 9)
            ]
        assert sample(app, "titok_images_generated_total", model=FAMILY) == 4
        assert sample(app, "titok_tokens_produced_total", model=FAMILY, route="variations") == 4 * 32

        r = await client.post("/v1/variations", json={"tokens": SOURCE, "strength": 0.25, "seed": 1, "n": 3})
        assert r.status_code == 200, r.text
        images = r.json()["images"]
        assert [i["regenerated"] for i in images] == [strength_mask(0.25, s, 32).tolist() for s in (1, 2, 3)]
        assert all(len(i["regenerated"]) == 8 and "tokens" not in i for i in images)

        # a multipart form: the image as a file, lists comma-separated or repeated, numbers as text
        png = io.BytesIO()
        Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)).save(png, "PNG")
        form = {"strength": "0.5", "class_labels": ["7,dress", "null"], "seed": "9"}
        r = await client.post("/v1/variations", files={"image": ("a.png", png.getvalue(), "image/png")}, data=form)
        assert r.status_code == 200, r.text
        assert [i["class_label"] for i in r.json()["images"]] == [7, 3, None]
        assert backend.count("encoder") == 1


BAD = [
    ({"tokens": SOURCE, "strength": 0.5, "mask": [1]}, 400, "invalid_request", "strength"),
    ({"tokens": SOURCE}, 400, "invalid_request", "strength"),
    ({"strength": 0.5}, 400, "invalid_request", "image"),
    ({"tokens": SOURCE, "image": "aGk=", "strength": 0.5}, 400, "invalid_request", "image"),
    ({"tokens": SOURCE, "mask": [32]}, 400, "invalid_request", "mask[0]"),
    ({"tokens": SOURCE, "mask": [1, -1]}, 400, "invalid_request", "mask[1]"),
    ({"tokens": SOURCE, "mask": [3, 3]}, 400, "invalid_request", "mask"),
    ({"tokens": SOURCE, "strength": 1.5}, 422, "validation_error", "strength"),
    ({"tokens": SOURCE, "strength": -0.1}, 422, "validation_error", "strength"),
    ({"tokens": SOURCE[:31], "strength": 0.5}, 400, "invalid_request", "tokens[0]"),
    ({"tokens": [*SOURCE[:31], 1024], "strength": 0.5}, 400, "invalid_request", "tokens[0][31]"),
    ({"tokens": SOURCE, "strength": 0.5, "class_labels": "Hat"}, 400, "invalid_request", "class_labels"),
    ({"tokens": SOURCE, "strength": 0.5, "class_labels": []}, 400, "invalid_request", "class_labels"),
    ({"tokens": SOURCE, "strength": 0.5, "n": 65}, 400, "invalid_request", "n"),
    ({"tokens": SOURCE, "strength": 0.5, "num_steps": 65}, 400, "invalid_request", "num_steps"),
    ({"image": "not base64!", "strength": 0.5}, 400, "invalid_image", "image"),
    ({"image": base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode(), "strength": 0.5}, 400, "invalid_image", "image"),
    ({"tokens": SOURCE, "strength": 0.5, "colour": "red"}, 422, "validation_error", "colour"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("body, status, type_, param", BAD)
async def test_bad_variations_get_the_one_error_shape(model_repository, body, status, type_, param):
    async with app_on_fake(model_repository) as (_app, client, backend):
        error = assert_error(await client.post("/v1/variations", json=body), status, type_)
        assert error.get("param") == param, error
        assert backend.count("generator") == 0 and backend.count("encoder") == 0


@pytest.mark.anyio
async def test_bad_variation_forms_and_media_types(model_repository):
    async with app_on_fake(model_repository) as (_app, client, _backend):
        r = await client.post("/v1/variations", content=b"strength=0.5", headers={"content-type": "text/plain"})
        assert_error(r, 415, "unsupported_media_type")
        gif = ("a.gif", b"GIF89a" + b"\0" * 20, "image/gif")
        r = await client.post("/v1/variations", files={"image": gif}, data={"strength": "0.5"})
        assert_error(r, 415, "unsupported_media_type")
        two = [("image", ("a.png", b"x", "image/png")), ("file", ("b.png", b"y", "image/png"))]
        assert_error(await client.post("/v1/variations", files=two, data={"strength": "0.5"}), 400, "invalid_request")
        for mask in ("1,x", "--5", "\u00b2"):
            r = await client.post("/v1/variations", data={"tokens": ",".join(map(str, SOURCE)), "mask": mask})
            assert_error(r, 422, "validation_error")


# ---------------------------------------------------------------------------------------------------
# Over real HTTP, on the shipped model
# ---------------------------------------------------------------------------------------------------


def fashion_png(index: int) -> bytes:
    with gzip.open(FMNIST) as f:
        image = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[index]
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def a_source() -> bytes:
    """A Fashion-MNIST test image when the data set is installed, else a drawn shape (any image works)."""
    if FMNIST.exists():
        return fashion_png(0)
    image = np.zeros((40, 40), np.uint8)
    image[8:32, 12:28] = 200
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def post(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/variations", json=body, timeout=60)


def test_variations_over_http_on_the_shipped_model(gateway):
    png = a_source()
    source = httpx.post(f"{gateway.url}/v1/tokenize", files={"files": ("s.png", png, "image/png")}).json()["tokens"][0]

    # base64 JSON and a multipart upload are the same request
    body = {"strength": 0.5, "class_labels": "Dress", "n": 2, "seed": 3, "return_tokens": True}
    as_json = post(gateway.url, image=base64.b64encode(png).decode(), **body)
    assert as_json.status_code == 200, as_json.text
    form = {"strength": "0.5", "class_labels": "Dress", "n": "2", "seed": "3", "return_tokens": "true"}
    as_form = httpx.post(f"{gateway.url}/v1/variations", files={"image": ("s.png", png, "image/png")}, data=form)
    assert as_form.status_code == 200, as_form.text
    assert as_form.json()["images"] == as_json.json()["images"]
    answer = as_json.json()
    assert answer["source_tokens"] == source
    for image in answer["images"]:
        hidden = set(image["regenerated"])
        assert len(hidden) == 16
        assert [t for j, t in enumerate(image["tokens"]) if j not in hidden] == [
            t for j, t in enumerate(source) if j not in hidden
        ]
        assert Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))).size == (32, 32)

    # strength 0 gives the source back (its reconstruction); strength 1 is exactly a generation with that seed
    same = post(gateway.url, tokens=source, strength=0, return_tokens=True).json()["images"][0]
    recon = httpx.post(f"{gateway.url}/v1/detokenize", json={"tokens": [source]}).json()["images"][0]
    assert same["tokens"] == source and same["regenerated"] == [] and same["b64_json"] == recon["b64_json"]
    new = post(gateway.url, tokens=source, strength=1, class_labels=7, seed=21, return_tokens=True).json()
    generated = httpx.post(
        f"{gateway.url}/v1/generate", json={"class_labels": 7, "seed": 21, "return_tokens": True}, timeout=60
    ).json()
    assert new["images"][0]["tokens"] == generated["images"][0]["tokens"]
    assert new["images"][0]["b64_json"] == generated["images"][0]["b64_json"]


def test_seeded_variations_give_identical_bytes_alone_and_among_other_requests(gateway):
    source = post(gateway.url, image=base64.b64encode(a_source()).decode(), strength=0).json()["source_tokens"]
    mine = {"tokens": source, "strength": 0.375, "class_labels": [5, None], "n": 2, "seed": 77, "return_tokens": True}
    alone = post(gateway.url, **mine).json()
    others = [
        ("/v1/generate", {"class_labels": i % 10, "seed": 500 + i, "num_steps": 3 + i % 6}) for i in range(12)
    ] + [("/v1/variations", {"tokens": source, "mask": list(range(i, 32, 3)), "seed": i}) for i in range(8)]

    async def crowd():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
            calls = [client.post(path, json=b) for path, b in others[:10]]
            calls.append(client.post("/v1/variations", json=mine))
            calls += [client.post(path, json=b) for path, b in others[10:]]
            return await asyncio.gather(*calls)

    responses = asyncio.run(crowd())
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert responses[10].json()["images"] == alone["images"]
