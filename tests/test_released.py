"""The released TiTok models end to end: files in the released layout -> ``python -m export build --released`` ->
one gateway serving the 256x256 family beside ``titok-fmnist`` -> real HTTP, checked against the PyTorch models
built from the same files. The files are written from random weights at reduced width and depth (the released
key layout, the released image size, codebook and 1000 classes), so that a CPU runs them in seconds."""

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from export.released import RELEASES, imagenet_class_names
from export.verify import TIE_GAP, tie_gaps
from service.limits import FamilyLimits
from service.settings import Settings
from tests.conftest import FAMILY, ROOT, Gateway
from titok_core.images import preprocess
from titok_core.manifest import ServingLimits, read_manifest
from titok_core.sampler import generate
from training.checkpoint import import_released
from training.models import build_model, config_to_dict, get_config

RELEASE = "titok-l-32"
TIMEOUT = 120  # a bound, not a timing
# TiTok-L-32 and its generator at a fraction of their width and depth: the same keys, 256x256, 4096 codes, 1000 classes
TOKENIZER = replace(
    get_config("titok-l-32"),
    width=64,
    depth=1,
    heads=2,
    pixel_vqgan=replace(get_config("maskgit-vqgan"), hidden=32, num_res_blocks=1, z_channels=32),
)
GENERATOR = replace(get_config("titok-l-32-generator"), hidden=32, depth=1, heads=2, intermediate=64)


def write_released_files(folder: Path) -> None:
    """Random models saved as the release saves them: a pickled state_dict per file, under the released names."""
    torch.manual_seed(0)
    release = RELEASES[RELEASE]
    generator_state = dict(build_model(GENERATOR).state_dict())
    # older transformers saved this buffer in the released generators; the importer drops it
    generator_state["model.embeddings.position_ids"] = torch.arange(GENERATOR.seq_len + 1)[None]
    torch.save(build_model(TOKENIZER).state_dict(), folder / release.tokenizer_file)
    torch.save(generator_state, folder / release.generator_file)


def export_cmd(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "export", "build", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def released(tmp_path_factory, model_repository):
    """The weights folder and a repository with the shipped family and the released one, built by the one command."""
    root = tmp_path_factory.mktemp("released")
    weights, repo = root / "weights", root / "repository"
    weights.mkdir()
    write_released_files(weights)
    shutil.copytree(model_repository, repo)
    configs = root / "configs.json"
    configs.write_text(json.dumps({"tokenizer": config_to_dict(TOKENIZER), "generator": config_to_dict(GENERATOR)}))
    r = export_cmd("--released", RELEASE, "--weights", str(weights), "--out", str(repo), "--configs", str(configs))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Verification passed" in r.stdout, r.stdout
    return weights, repo


@pytest.fixture(scope="module")
def torch_models(released):
    weights, _ = released
    release = RELEASES[RELEASE]
    return (
        import_released(weights / release.tokenizer_file, TOKENIZER),
        import_released(weights / release.generator_file, GENERATOR),
    )


@pytest.fixture(scope="module")
def both(released, tmp_path_factory):
    """One embedded gateway serving both families."""
    g = Gateway(released[1], tmp_path_factory.mktemp("gw") / "gateway.log")
    yield g
    g.stop()


def photo(width: int = 400, height: int = 300) -> bytes:
    """A JPEG of another size and aspect than the model's: smooth colour ramps and a disc."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, ((x - width / 2) ** 2 + (y - height / 2) ** 2 < 80**2) * 200])
    out = io.BytesIO()
    Image.fromarray(rgb.transpose(1, 2, 0).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def png_pixels(b64: str) -> np.ndarray:
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def torch_decode(tokenizer, tokens) -> np.ndarray:
    with torch.inference_mode():
        images = tokenizer.decode_tokens(torch.as_tensor(tokens, dtype=torch.int64))
    return (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------------


def test_the_manifest_carries_what_the_release_implies(released):
    manifest = read_manifest(released[1], RELEASE)
    assert manifest.image_size == 256 and manifest.num_tokens == 32 and manifest.codebook_size == 4096
    assert manifest.class_names == tuple(imagenet_class_names())
    assert manifest.class_names[0] == "tench" and manifest.class_names[207] == "golden retriever"
    assert manifest.sampling == RELEASES[RELEASE].sampling and manifest.sampling.softmax_annealing
    assert manifest.serving.deadlines_s == {"tokenize": 120.0, "detokenize": 300.0, "generate": 330.0}
    assert manifest.sources["tokenizer"]["format"] == "released"


def test_class_names_file_has_1000_distinct_names():
    names = imagenet_class_names()
    assert len(names) == 1000 and len({n.lower() for n in names}) == 1000


def test_missing_files_and_an_offline_fetch_fail_in_one_line(tmp_path):
    r = export_cmd("--released", RELEASE, "--weights", str(tmp_path), "--out", str(tmp_path / "repo"))
    assert r.returncode != 0 and "tokenizer_titok_l32.bin" in r.stderr and "Traceback" not in r.stderr
    r = export_cmd("--released", RELEASE, "--weights", str(tmp_path), "--out", str(tmp_path / "repo"), "--fetch")
    assert r.returncode != 0 and "cannot fetch tokenizer_titok_l32.bin" in r.stderr and "Traceback" not in r.stderr
    r = export_cmd("--released", RELEASE, "--out", str(tmp_path / "repo"))
    assert r.returncode == 2 and "--weights" in r.stderr


# ---------------------------------------------------------------------------------------------------
# The limits: an explicit TITOK_* variable, else the manifest's, else the default
# ---------------------------------------------------------------------------------------------------


def test_limits_take_the_environment_then_the_manifest_then_the_default(released, monkeypatch):
    manifest = read_manifest(released[1], RELEASE)
    for key in [k for k in os.environ if k.startswith("TITOK_")]:
        monkeypatch.delenv(key)
    limits = FamilyLimits.of(manifest, Settings())
    assert limits.deadline_s("generate") == 330.0 and limits.deadline_s("variations") == 330.0
    assert limits.max_batch_size == 8 and limits.max_queue == 32 and limits.max_n == 16
    monkeypatch.setenv("TITOK_REQUEST_TIMEOUT_S", "7")
    monkeypatch.setenv("TITOK_MAX_BATCH_SIZE", "64")
    limits = FamilyLimits.of(manifest, Settings())
    assert set(limits.deadlines_s.values()) == {7.0}
    assert limits.max_batch_size == 8, "never above the graphs' own max_batch_size"
    assert limits.max_queue == 32
    bare = replace(manifest, serving=ServingLimits())
    monkeypatch.delenv("TITOK_REQUEST_TIMEOUT_S")
    assert FamilyLimits.of(bare, Settings()).deadlines_s["tokenize"] == Settings().request_timeout_s


# ---------------------------------------------------------------------------------------------------
# Served beside titok-fmnist, over real HTTP
# ---------------------------------------------------------------------------------------------------


def test_models_lists_both_families_with_their_limits(both):
    cards = {c["id"]: c for c in httpx.get(f"{both.url}/v1/models", timeout=TIMEOUT).json()["data"]}
    assert set(cards) == {FAMILY, RELEASE}
    big, small = cards[RELEASE], cards[FAMILY]
    assert big["image_size"] == 256 and big["num_classes"] == 1000 and big["classes"][1]["name"] == "goldfish"
    assert big["sampling"] == {
        "num_steps": 8,
        "guidance_scale": 4.5,
        "guidance_schedule": "linear",
        "temperature": 9.5,
        "softmax_annealing": True,
    }
    assert big["limits"]["deadlines_s"]["generate"] == 330.0 and big["limits"]["max_batch_size"] == 8
    assert small["image_size"] == 32 and small["limits"]["deadlines_s"]["generate"] == Settings().request_timeout_s


def test_a_photo_of_any_size_is_tokenized_as_pytorch_does(both, torch_models):
    tokenizer, _ = torch_models
    data = photo()
    r = httpx.post(f"{both.url}/v1/tokenize", files={"files": ("a.jpg", data, "image/jpeg")}, data={"model": RELEASE})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["tokens"])
    pixels = preprocess(Image.open(io.BytesIO(data)), 256)[None]  # resize + centre crop, as the gateway does
    with torch.inference_mode():
        want = tokenizer.encode(torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2)).numpy()
    assert got.shape == (1, 32)
    assert (tie_gaps(tokenizer, pixels, want, got) <= TIE_GAP).all(), (got, want)


def test_tokens_are_detokenized_as_pytorch_does(both, torch_models):
    tokenizer, _ = torch_models
    tokens = np.random.default_rng(1).integers(0, 4096, (2, 32))
    body = {"model": RELEASE, "tokens": tokens.tolist()}
    r = httpx.post(f"{both.url}/v1/detokenize", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    got = np.stack([png_pixels(im["b64_json"]) for im in r.json()["images"]])
    want = torch_decode(tokenizer, tokens)
    assert got.shape == (2, 256, 256, 3)
    assert np.abs(got.astype(int) - want).max() <= 1  # float differences round apart at most by one level


def test_generate_by_class_name_and_imagenet_id_as_pytorch_does(both, torch_models):
    tokenizer, generator = torch_models
    body = {"model": RELEASE, "class_labels": ["Golden Retriever", 980], "seed": 5, "return_tokens": True}
    r = httpx.post(f"{both.url}/v1/generate", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert [(im["class_label"], im["class_name"], im["seed"]) for im in images] == [
        (207, "golden retriever", 5),
        (980, "volcano", 6),
    ]

    def logits(tokens, classes):
        with torch.inference_mode():
            return generator(torch.from_numpy(tokens), torch.from_numpy(classes)).numpy()

    dims = dict(seq_len=32, codebook_size=4096, num_classes=1000)
    want = generate(logits, [207, 980], [5, 6], settings=RELEASES[RELEASE].sampling, **dims)
    got = np.asarray([im["tokens"] for im in images])
    assert (got == want).mean() >= 0.9, (got, want)  # float32 logits of two runtimes may tip a rare near-tie
    pixels = np.stack([png_pixels(im["b64_json"]) for im in images])
    assert np.abs(pixels.astype(int) - torch_decode(tokenizer, got)).max() <= 1


def test_unknown_class_names_get_close_suggestions(both):
    body = {"model": RELEASE, "class_labels": "golden retreiver"}
    r = httpx.post(f"{both.url}/v1/generate", json=body, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "class_labels" and "did you mean: golden retriever" in error["message"]
    assert "tench" not in error["message"], "not all 1000 names"
    r = httpx.post(f"{both.url}/v1/generate", json={"model": RELEASE, "class_labels": 1000}, timeout=TIMEOUT)
    assert r.status_code == 400 and "[0, 1000)" in r.json()["error"]["message"]


def test_the_shipped_family_is_served_alongside(both):
    body = {"model": FAMILY, "class_labels": ["Sneaker"], "seed": 0}
    r = httpx.post(f"{both.url}/v1/generate", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert png_pixels(r.json()["images"][0]["b64_json"]).shape == (32, 32, 3)


def test_the_family_limits_bound_a_request(both):
    body = {"model": RELEASE, "class_labels": [1, 2], "n": 9}  # 18 images over the family's max_n of 16
    r = httpx.post(f"{both.url}/v1/generate", json=body, timeout=TIMEOUT)
    assert r.status_code == 400 and "at most 16 images" in r.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------------
# Triton
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_triton_serves_the_released_family_as_the_embedded_backend_does(released, both, tmp_path_factory):
    from tests.triton_server import TritonServer, write_twin_repository

    workdir = tmp_path_factory.mktemp("released-triton")
    twin = write_twin_repository(workdir / "repository", released[1])
    server = TritonServer(twin, workdir, workdir / "tritonserver.log")
    server.start()
    try:
        g = Gateway(twin, workdir / "gateway.log", backend="triton", triton_url=server.grpc_url)
        try:
            answers = {}
            for name, url in (("embedded", both.url), ("triton", g.url)):
                files = {"files": ("a.jpg", photo(), "image/jpeg")}
                tokens = httpx.post(f"{url}/v1/tokenize", files=files, data={"model": RELEASE}, timeout=TIMEOUT)
                body = {"model": RELEASE, "class_labels": ["volcano"], "seed": 3, "return_tokens": True}
                generated = httpx.post(f"{url}/v1/generate", json=body, timeout=TIMEOUT)
                assert tokens.status_code == 200 and generated.status_code == 200, (tokens.text, generated.text)
                answers[name] = (tokens.json()["tokens"], generated.json()["images"])
            assert answers["triton"] == answers["embedded"]  # tokens and the PNG bytes
            models = httpx.get(f"{g.url}/v1/models", timeout=TIMEOUT).json()["data"]
            assert {m["id"] for m in models} == {FAMILY, RELEASE}
        finally:
            g.stop()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------
# The client and the playground with 1000 classes
# ---------------------------------------------------------------------------------------------------


def test_the_client_finds_classes_among_1000(both):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITOK_")}
    cmd = [sys.executable, "-m", "titok_client", "--url", both.url, "models", "--search", "retriever"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert "207 golden retriever" in r.stdout and "208 Labrador retriever" in r.stdout and "tench" not in r.stdout
    assert "softmax annealing" in r.stdout and "generate 330 s" in r.stdout
    r = subprocess.run(cmd[:-2], capture_output=True, text=True, env=env, cwd=ROOT, timeout=TIMEOUT)
    assert "classes: 1000 (0 tench" in r.stdout and "7 Sneaker" in r.stdout  # the small family lists them all


@pytest.mark.slow
def test_the_playground_searches_1000_classes(both):
    from tests.test_playground import CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Chromium is missing: `make tools` (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(both.url)
        page.select_option("#model", RELEASE)
        expect(page.locator("#class option")).to_have_count(1000)
        page.fill("#class-search", "retriever")
        expect(page.locator("#class option")).to_have_count(5)
        expect(page.locator("#class-count")).to_have_text("5 of 1000 classes")
        expect(page.locator("#class")).to_have_value("205")  # the first match is chosen
        page.fill("#class-search", "980")
        expect(page.locator("#class option")).to_have_text(["980 volcano"])
        browser.close()
