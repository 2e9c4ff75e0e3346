"""The OpenAI-compatible images route, with OpenAI's own Python client against a real gateway process: images of a class
named or indexed by the prompt, the same bytes as the native /v1/generate for the same seed, and OpenAI's error object
for the handler's errors and for the gateway's own (body limit) ones."""

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import FAMILY, Gateway

KEY = "openai-key"


@pytest.fixture(scope="module")
def server(model_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("gw") / "openai.log"
    g = Gateway(model_repository, log, api_keys=KEY, max_body_bytes=4096)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def test_generate_with_openai_client(client, server):
    answer = client.images.generate(
        model=FAMILY, prompt="sneaker", n=2, response_format="b64_json", extra_body={"seed": 5, "num_steps": 8}
    )
    assert len(answer.data) == 2
    for image in answer.data:
        pil = Image.open(io.BytesIO(base64.b64decode(image.b64_json)))
        assert pil.format == "PNG" and pil.size == (32, 32)
        assert image.revised_prompt == "Sneaker"
    assert answer.created > 0 and answer.output_format == "png"
    # the same generation as the native route: same class, seeds and settings give the same bytes
    native = httpx.post(
        f"{server.url}/v1/generate",
        json={"class_labels": "Sneaker", "n": 2, "seed": 5, "num_steps": 8},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    assert [i["b64_json"] for i in native["images"]] == [i.b64_json for i in answer.data]


def test_prompt_as_index_and_output_format(client):
    answer = client.images.generate(prompt=" 9 ", output_format="webp", extra_body={"seed": 0})
    assert answer.data[0].revised_prompt == "Ankle boot"
    assert Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).format == "WEBP"
    assert answer.output_format == "webp"


def test_unknown_class_is_openai_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a cat in a hat")
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["param"] == "prompt" and "unknown class" in error["message"]


def test_wrong_key_unknown_model_bad_fields(server, client):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.images.generate(prompt="Sneaker")
    assert caught.value.body["code"] == "unauthorized"
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="dall-e-3", prompt="Sneaker")
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    with pytest.raises(openai.UnprocessableEntityError) as caught:  # no image URLs: nothing is stored
        client.images.generate(prompt="Sneaker", response_format="url")
    assert caught.value.status_code == 422 and caught.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="Sneaker", size="1024x1024")
    assert caught.value.body["param"] == "size" and "32x32" in caught.value.body["message"]


def test_gateway_errors_have_openai_shape_on_the_route(server):
    """The body limit is answered by the middleware before any handler: still OpenAI's shape on this route, and the
    native shape elsewhere."""
    headers = {"Authorization": f"Bearer {KEY}"}
    big = {"prompt": "Sneaker", "user": "x" * 5000}
    r = httpx.post(f"{server.url}/v1/images/generations", json=big, headers=headers)
    assert r.status_code == 413
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["code"] == "payload_too_large"
    r = httpx.post(f"{server.url}/v1/generate", json={"class_labels": "x" * 5000}, headers=headers)
    assert r.status_code == 413 and set(r.json()["error"]) == {"type", "message"}
    r = httpx.post(
        f"{server.url}/v1/images/generations",
        content=b"{not json",
        headers=headers | {"content-type": "application/json"},
    )
    error = r.json()["error"]
    assert r.status_code == 422 and error["code"] == "validation_error" and error["param"] is None
    assert error["message"].startswith("the body is not valid JSON")
