"""Every command and example of README.md, run as written against a real gateway: its bash blocks (curl, the `titok`
client, python3 one-liners) and its Python snippets, in order, in one scratch folder, with only the address
changed to the test gateway's. A block that needs Docker, a GPU, package installs or hours of training is listed in
SKIPPED with the reason. Each block must exit 0; the gateway must have answered no error but the two the README
shows, and each answer it quotes (a ``# {...}`` comment line after a command) must be what came back."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT

README = ROOT / "README.md"
# a unique piece of each block that is not run -> why
SKIPPED = {
    "make serve            #": "make serve / make test set up virtualenvs and run every test; docker compose needs "
    "Docker",
    "pip install ./clients/python      #": "installs packages (tests/test_client_install.py installs the client alone "
    "into a fresh virtualenv; the gateway's and training's extras are what make setup-serve / setup-dev install)",
    "tok = build_model(": "a sketch with placeholder inputs (images_uint8_nchw, ids_with_mask_ids) and the released "
    ".bin files, which are not in the repository; tests/test_models.py runs these calls",
    "python -m training classifier": "hours of training on the CPU (tests/test_training.py runs every recipe on tiny "
    "configs)",
    "python -m export build --released titok-l-32": "needs the released .bin files (a hub download; no network "
    "here): tests/test_released.py runs this command on released-layout files written from random weights and "
    "serves the family it builds over HTTP next to titok-fmnist",
    "python -m bench.released --model": "a benchmark of a quarter of an hour at full size (python -m bench runs it)",
    "docker compose up -d": "needs Docker, and NVIDIA GPUs for the GPU variant (tests/test_deploy.py validates every "
    "compose file with the real Compose binary)",
}
# the errors the README shows on purpose: (route, status) -> how many
EXPECTED_ERRORS = {("/v1/generate", "400"): 1, ("/v1/images/generations", "400"): 1}


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced bash or python block."""
    return re.findall(r"^```(bash|python)\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def skip_reason(text: str) -> str | None:
    reasons = [why for key, why in SKIPPED.items() if key in text]
    assert len(reasons) <= 1, text
    return reasons[0] if reasons else None


def statuses(url: str) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == "titok_requests_total":
                key = (s.labels["route"], s.labels["status"])
                counts[key] = counts.get(key, 0) + s.value
    return counts


def quoted_answers(text: str) -> list[str]:
    """The answers a block quotes: comment lines holding JSON, up to their '...'."""
    return [line[2:].split("...")[0] for line in text.splitlines() if line.startswith("# {")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The files the examples name: shoe.png (Fashion-MNIST's first test sneaker) and shoes/*.png (three more)."""
    from training.data import load_fashion_mnist

    x, y = load_fashion_mnist("test", limit=200)
    pixels = x.permute(0, 2, 3, 1).numpy()
    sneakers = [i for i in range(len(y)) if int(y[i]) == 7]
    out = tmp_path_factory.mktemp("readme")
    Image.fromarray(pixels[sneakers[0]]).save(out / "shoe.png")
    (out / "shoes").mkdir()
    for i in sneakers[1:4]:
        Image.fromarray(pixels[i]).save(out / "shoes" / f"shoe-{i}.png")
    Image.fromarray(pixels[0]).save(out / "test-image-0.png")  # what the detokenize example's tokens came from
    return out


def test_every_block_is_run_or_skipped_with_a_reason():
    found = blocks()
    assert len(found) >= 10
    for key in SKIPPED:  # no stale entry
        assert sum(key in text for _, text in found) == 1, key


def test_readme_examples_against_a_real_gateway(gateway, workdir):
    address = gateway.url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITOK_")}
    # `titok` and `python3` are this environment's (the interpreter with openai), running this checkout's code
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PYTHONPATH=str(ROOT))
    env.update(TITOK_URL=gateway.url)
    before = statuses(gateway.url)
    ran = 0
    for i, (language, text) in enumerate(blocks()):
        if skip_reason(text):
            continue
        code = text.replace("127.0.0.1:8000", address)
        assert "8000" not in code, code  # every address is the test gateway's
        if language == "bash":
            cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
        else:
            (workdir / f"block{i}.py").write_text(code)
            cmd = [sys.executable, f"block{i}.py"]
        result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (code, result.stdout[-2000:], result.stderr[-2000:])
        for answer in quoted_answers(text):
            assert answer in result.stdout, (answer, result.stdout[-2000:])
        ran += 1
    assert ran >= 6
    after = statuses(gateway.url)
    errors = {k: after[k] - before.get(k, 0) for k in after if int(k[1]) >= 400 and after[k] > before.get(k, 0)}
    assert errors == EXPECTED_ERRORS

    # what the examples wrote is what they say
    gen = json.loads((workdir / "gen.json").read_text())
    assert [i["class_name"] for i in gen["images"]] == ["Sneaker", "Sneaker", "Ankle boot", "Ankle boot"]
    assert Image.open(workdir / "sneaker.png").size == (32, 32)
    # the detokenize example's ids are test image 0's tokens: back.png is its reconstruction
    back = np.asarray(Image.open(workdir / "back.png").convert("RGB"), dtype=np.float64)
    original = np.asarray(Image.open(workdir / "test-image-0.png").convert("RGB"), dtype=np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((back - original) ** 2))
    assert psnr > 18, psnr
    assert len(json.loads((workdir / "openai.json").read_text())["data"]) == 2
    assert sorted(p.name for p in workdir.glob("boot-*.png")) == [f"boot-{i}.png" for i in range(4)]
    assert len(json.loads((workdir / "tokens.json").read_text())["items"]) == 3
    assert len(list((workdir / "out").glob("shoe-dress-*.png"))) == 8
