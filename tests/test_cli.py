"""The `titok` command-line client against a real gateway over HTTP: Fashion-MNIST test images as PNG and JPEG files,
batching under the gateway's limits, seeds across split requests, and every error path's exit code and one line."""

import argparse
import base64
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAMILY, ROOT, Gateway, free_port

KEY = "cli-key"


@pytest.fixture(scope="module")
def server(model_repository, tmp_path_factory):
    """A gateway with an API key and small limits (2 images or 4 generated per request, 100x100 pixels per image)."""
    log = tmp_path_factory.mktemp("gw") / "cli.log"
    g = Gateway(model_repository, log, api_keys=KEY, max_images=2, max_n=4, max_image_pixels=100 * 100)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Five Fashion-MNIST test images as 32x32 PNGs and one as a 64x96 JPEG (resized by the gateway)."""
    from training.data import load_fashion_mnist

    x, _ = load_fashion_mnist("test", limit=6)
    out = tmp_path_factory.mktemp("images")
    paths = []
    for i, image in enumerate(x.permute(0, 2, 3, 1).numpy()):
        pil = Image.fromarray(image)
        if i < 5:
            paths.append(out / f"fm{i}.png")
            pil.save(paths[-1])
        else:
            paths.append(out / "big.jpg")
            pil.resize((64, 96), Image.Resampling.BICUBIC).save(paths[-1], quality=95)
    return paths


def titok(*args: str, url: str | None = None, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITOK_")}
    env.update({"TITOK_URL": url} if url else {})
    env.update({"TITOK_API_KEY": key} if key else {})
    cmd = [sys.executable, "-m", "titok_client", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def requests_to(url: str, route: str, status: int = 200) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "titok_requests_total" and s.labels["route"] == route and s.labels["status"] == str(status)
    )


def failed(result: subprocess.CompletedProcess, code: int, prefix: str) -> str:
    """Assert the exit code and that stderr is one line starting with ``prefix``; that line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    return lines[0]


def test_installed_script_and_no_torch():
    script = Path(sys.executable).parent / "titok"
    assert "generate" in subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    code = (
        "import sys, titok_client.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'training', 'service'))\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_models(server):
    result = titok("models", url=server.url)
    assert result.returncode == 0, result.stderr
    assert FAMILY in result.stdout and "7 Sneaker" in result.stdout
    assert "32x32 images (content in the centred 28x28: other sizes are fitted to it)" in result.stdout
    # options before the command work too, and --json is the API's answer
    result = titok("--url", server.url, "--api-key", KEY, "models", "--json", key=None)
    cards = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert json.loads(result.stdout) == cards


def test_tokenize_then_detokenize(server, images, tmp_path):
    ok, refused = requests_to(server.url, "/v1/tokenize"), requests_to(server.url, "/v1/tokenize", 413)
    tokens_file = tmp_path / "tokens.json"
    result = titok("tokenize", *map(str, images), "--progress", "-o", str(tokens_file), url=server.url)
    assert result.returncode == 0, result.stderr
    assert "6/6" in result.stderr  # the progress bar
    # 6 files at once are refused (over the gateway's 2 per request); the client learns 2 and sends 3 requests
    assert requests_to(server.url, "/v1/tokenize", 413) - refused == 1
    assert requests_to(server.url, "/v1/tokenize") - ok == 3

    doc = json.loads(tokens_file.read_text())
    assert (doc["model"], doc["num_tokens"], doc["codebook_size"]) == (FAMILY, 32, 1024)
    assert [item["name"] for item in doc["items"]] == [str(p) for p in images]
    auth = {"Authorization": f"Bearer {KEY}"}
    for path, item in zip(images, doc["items"], strict=True):  # the same ids as one image per request
        body = {"images": [base64.b64encode(path.read_bytes()).decode()]}
        assert httpx.post(f"{server.url}/v1/tokenize", json=body, headers=auth).json()["tokens"] == [item["tokens"]]

    out = tmp_path / "out"
    result = titok("detokenize", str(tokens_file), "-o", str(out), url=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / f"{p.stem}.png") for p in images]
    for path in images[:5]:  # the 32x32 originals against their reconstructions
        original = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        back = np.asarray(Image.open(out / path.name), dtype=np.float64)
        assert back.shape == (32, 32, 3)
        assert 10 * np.log10(255**2 / np.mean((original - back) ** 2)) > 14


def test_generate_split_requests_give_the_seeded_images(server, tmp_path):
    # 5 images of a class are over the gateway's 4 per request: the client splits them, image k keeps seed 5 + k
    out = tmp_path / "gen"
    args = ("generate", "--class", "sneaker", "-c", "9", "-n", "5", "--seed", "5", "--tokens", "-o", str(out))
    result = titok(*args, url=server.url)
    assert result.returncode == 0, result.stderr
    names = [f"sneaker-{s}.png" for s in range(5, 10)] + [f"ankle-boot-{s}.png" for s in range(10, 15)]
    assert result.stdout.split() == [str(out / n) for n in names] + [str(out / "tokens.json")]
    auth = {"Authorization": f"Bearer {KEY}"}
    for name, label, seed in zip(names, [7] * 5 + [9] * 5, range(5, 15), strict=True):
        body = {"class_labels": label, "seed": seed}
        one = httpx.post(f"{server.url}/v1/generate", json=body, headers=auth, timeout=60).json()["images"][0]
        assert (out / name).read_bytes() == base64.b64decode(one["b64_json"]), name
    assert Image.open(io.BytesIO((out / names[0]).read_bytes())).size == (32, 32)

    # the tokens file reads back: the same tokens decode to the same bytes
    doc = json.loads((out / "tokens.json").read_text())
    assert [(i["name"], i["class_name"], i["seed"]) for i in doc["items"]][-1] == (names[-1], "Ankle boot", 14)
    result = titok("detokenize", str(out / "tokens.json"), "-o", str(tmp_path / "again"), url=server.url)
    assert result.returncode == 0, result.stderr
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()


def test_api_errors_exit_1_with_one_line(server, images, tmp_path):
    url = server.url
    broken = tmp_path / "broken.png"
    broken.write_bytes(images[0].read_bytes()[:60])  # a real PNG cut short
    line = failed(titok("tokenize", str(images[0]), str(broken), url=url), 1, "error: invalid_image: ")
    assert line.endswith(f"({broken})")
    large = tmp_path / "large.png"
    Image.open(images[1]).resize((200, 200)).save(large)
    line = failed(titok("tokenize", str(large), url=url), 1, "error: payload_too_large: image of 200x200 pixels")
    assert line.endswith(f"({large})")
    line = failed(titok("models", url=url, key=None), 1, "error: unauthorized: a valid API key is required")
    assert line.endswith("(give the key with --api-key or TITOK_API_KEY)")
    failed(titok("models", "--api-key", "wrong", url=url), 1, "error: unauthorized: ")
    line = failed(titok("generate", "-c", "Hat", "-o", str(tmp_path), url=url), 1, "error: invalid_request: ")
    assert "unknown class 'Hat'" in line and "Sneaker" in line
    failed(titok("generate", "-c", "12", "-o", str(tmp_path), url=url), 1, "error: invalid_request: class labels")
    failed(titok("generate", "-c", "0", "--steps", "1000", url=url), 1, "error: invalid_request: at most 64 steps")
    for tokens, message in (([[5000] * 32], "token ids must lie in [0, 1024)"), ([[1, 2]], "must have 32 ids")):
        (tmp_path / "t.json").write_text(json.dumps(tokens))
        line = failed(titok("detokenize", str(tmp_path / "t.json"), "-o", str(tmp_path), url=url), 1, "error: ")
        assert line.startswith("error: invalid_request: ") and message in line
    unreachable = f"http://127.0.0.1:{free_port()}"
    line = failed(titok("models", url=unreachable), 1, f"error: connection_error: cannot reach {unreachable}")
    assert line.endswith("`make serve` starts one; --url or TITOK_URL names another)")


def test_usage_errors_exit_2(server, tmp_path):
    assert titok().returncode == 2
    assert titok("generate", "-n", "2").returncode == 2  # no --class
    assert titok("generate", "-c", "0", "-n", "0").returncode == 2
    assert titok("detokenize", "t.json", "--format", "gif").returncode == 2
    failed(titok("tokenize", str(tmp_path / "nope.png"), url=server.url), 2, "error: no such file: ")
    (tmp_path / "bad.json").write_text("{not json")
    failed(titok("detokenize", str(tmp_path / "bad.json"), url=server.url), 2, "error: ")
    (tmp_path / "bad.json").write_text('{"items": [{"tokens": ["a"]}]}')
    failed(titok("detokenize", str(tmp_path / "bad.json"), url=server.url), 2, "error: ")


def test_vary_an_image_split_requests_and_a_tokens_file(server, images, tmp_path):
    # 5 variations are over the gateway's 4 per request: split, variation k keeps seed 3 + k
    out = tmp_path / "vary"
    args = ("vary", str(images[0]), "--strength", "0.5", "--class", "Dress", "-n", "5", "--seed", "3", "--tokens")
    result = titok(*args, "-o", str(out), url=server.url)
    assert result.returncode == 0, result.stderr
    names = [f"fm0-dress-{s}.png" for s in range(3, 8)]
    assert result.stdout.split() == [str(out / n) for n in names] + [str(out / "tokens.json")]
    auth = {"Authorization": f"Bearer {KEY}"}
    image = base64.b64encode(images[0].read_bytes()).decode()
    for name, seed in zip(names, range(3, 8), strict=True):
        body = {"image": image, "strength": 0.5, "class_labels": "Dress", "seed": seed}
        one = httpx.post(f"{server.url}/v1/variations", json=body, headers=auth, timeout=60).json()["images"][0]
        assert (out / name).read_bytes() == base64.b64decode(one["b64_json"]), name
    doc = json.loads((out / "tokens.json").read_text())
    assert all(len(item["regenerated"]) == 16 for item in doc["items"])

    # the tokens file as the source, an explicit mask, unconditional (no --class)
    result = titok("vary", str(out / "tokens.json"), "--mask", "0,1,2", "--seed", "1", "-o", str(out), url=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / "tokens-unconditional-1.png")]
    failed(titok("vary", str(images[0]), "--strength", "0.5", "--mask", "1", url=server.url), 2, "error: ")
    assert titok("vary", str(images[0]), "--strength", "1.5").returncode == 2
    line = failed(titok("vary", str(images[0]), "--mask", "40", "-o", str(tmp_path), url=server.url), 1, "error: ")
    assert line.startswith("error: invalid_request: mask positions must lie in [0, 32)")


def test_version_and_help_on_every_flag():
    from titok_client import __version__
    from titok_client.cli import SCHEDULES, build_parser
    from titok_core.sampler import SCHEDULES as GATEWAY_SCHEDULES

    assert titok("--version").stdout.strip() == f"titok {__version__}"
    assert SCHEDULES == GATEWAY_SCHEDULES
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in [("titok", parser), *commands.items()]:
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


def test_guidance_schedule_reaches_the_gateway(server, tmp_path):
    """--guidance-schedule is the request's guidance_schedule: linear and constant give other images at guidance 3."""
    files = {}
    for schedule in ("constant", "linear"):
        out = tmp_path / schedule
        args = (
            "generate",
            "-c",
            "0",
            "--seed",
            "1",
            "--guidance",
            "3",
            "--guidance-schedule",
            schedule,
            "-o",
            str(out),
        )
        assert titok(*args, url=server.url).returncode == 0
        files[schedule] = next(out.iterdir()).read_bytes()
    assert files["constant"] != files["linear"]
    assert titok("generate", "-c", "0", "--guidance-schedule", "cosine", url=server.url).returncode == 2


class _Busy(http.server.BaseHTTPRequestHandler):
    """A server that answers 429 (with Retry-After: 0) to the first ``busy`` requests, then the gateway's models."""

    busy, seen, models = 0, 0, b""

    def do_GET(self):
        type(self).seen += 1
        if type(self).seen <= self.busy:
            body = b'{"error": {"type": "overloaded", "message": "the queue is full"}}'
            self.send_response(429)
            self.send_header("Retry-After", "0")
        else:
            body = self.models
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_retries_on_429_honour_retry_after(server):
    _Busy.models = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).content
    busy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{busy.server_port}"
    try:
        _Busy.busy, _Busy.seen = 2, 0
        result = titok("models", "--retries", "2", url=url)
        assert result.returncode == 0 and FAMILY in result.stdout and _Busy.seen == 3
        _Busy.busy, _Busy.seen = 5, 0
        failed(titok("models", "--retries", "1", url=url), 1, "error: overloaded: the queue is full")
        assert _Busy.seen == 2
        _Busy.seen = 0
        failed(titok("models", "--retries", "0", url=url), 1, "error: overloaded: ")
        assert _Busy.seen == 1
    finally:
        busy.shutdown()


def test_retry_wait_is_bounded():
    from titok_client.api import MAX_RETRY_WAIT_S, retry_wait

    assert retry_wait("2", 0) == 2 and retry_wait("100000", 0) == MAX_RETRY_WAIT_S
    assert [retry_wait(None, a) for a in range(3)] == [0.5, 1, 2] and retry_wait(None, 40) == MAX_RETRY_WAIT_S
    assert retry_wait("Wed, 21 Oct 2015 07:28:00 GMT", 1) == 1 and retry_wait("-5", 0) == 0
