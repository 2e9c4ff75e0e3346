"""The front door under attack: a real gateway under a memory cap, every hostile input of issue 16 and variants.

    python -m bench.hostile --repo model_repository           # prints the table (markdown)

Each case runs alone against one gateway process (``python -m service``, ``RLIMIT_AS`` capped at 3 GiB) and
reports the status(es) it got, the gateway's peak RSS growth during the case (``VmHWM`` reset through
``/proc/<pid>/clear_refs`` before each case) and the longest ``GET /healthz`` of a poller that runs throughout.
Afterwards the gateway must be ready and give the byte-identical answer to a seeded generate made before.
"""

import argparse
import base64
import functools
import io
import json
import multiprocessing as mp
import os
import resource
import select
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CAP_BYTES = 3 << 30
SETTINGS = {  # the defaults but a short read timeout (the slow-client cases wait for it) and CORS on
    "read_timeout_s": "2",
    "cors_origins": "http://ok.example",
}
SEEDED = {"class_labels": [1, "Sneaker"], "n": 2, "seed": 1234, "num_steps": 8}


# -- the gateway under test -----------------------------------------------------------------------------


class Target:
    """``python -m service`` on a free port under an address-space cap, its log in ``log``."""

    def __init__(self, repo: Path, log: Path, cap_bytes: int = CAP_BYTES, **settings: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TITOK_")}
        env.update(OMP_NUM_THREADS="1", TITOK_PORT=str(self.port), TITOK_MODEL_REPOSITORY=str(repo))
        env.update({f"TITOK_{k.upper()}": str(v) for k, v in {**SETTINGS, **settings}.items()})

        def cap() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

        self._log = open(log, "wb")
        cmd = [sys.executable, "-m", "service"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=cap)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the gateway did not get ready:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def rss(self) -> int:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)

    def peak(self) -> int:
        return self._status("VmHWM")


def _poll(url: str, worst, failures, running) -> None:
    client = httpx.Client(base_url=url, timeout=60)
    while running.value:
        start = time.perf_counter()
        try:
            ok = client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        with worst.get_lock():
            worst.value = max(worst.value, time.perf_counter() - start)
        failures.value += not ok
        time.sleep(0.01)


class Poller:
    """``GET /healthz`` back to back over one keep-alive connection, in a process of its own (the attack's own
    work must not delay it); the longest answer since ``reset``."""

    def __init__(self, url: str):
        self.worst, self.failures = mp.Value("d", 0.0), mp.Value("i", 0)
        self._running = mp.Value("b", 1)
        self._proc = mp.Process(target=_poll, args=(url, self.worst, self.failures, self._running), daemon=True)
        self._proc.start()

    def reset(self) -> None:
        self.worst.value, self.failures.value = 0.0, 0

    def stop(self) -> None:
        self._running.value = 0
        self._proc.join(10)


# -- what is sent ---------------------------------------------------------------------------------------


@functools.cache
def png(width: int, height: int, mode: str = "RGB", **options) -> bytes:
    """A PNG of ``width`` x ``height`` (a smooth pattern, so that a large one compresses to little)."""
    y, x = np.ogrid[:height, :width]
    base = ((x * 7 + y * 3) % 256).astype(np.uint8)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = np.broadcast_to(base[..., None], (height, width, channels)) if channels > 1 else base
    out = io.BytesIO()
    Image.fromarray(
        np.ascontiguousarray(data).reshape(height, width, *([channels] if channels > 1 else [])), mode
    ).save(out, "PNG", **options)
    return out.getvalue()


def bomb(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (its data would not be enough: only the header counts)."""
    small = png(8, 8, "L")
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + small[24:29]
    return small[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + small[33:]


@functools.cache
def grey16(side: int = 4096) -> bytes:
    y, x = np.ogrid[:side, :side]
    out = io.BytesIO()
    Image.fromarray(((x * 16 + y * 8) % 65536).astype(np.uint16)).save(out, "PNG")
    return out.getvalue()


@functools.cache
def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), png_pixels(width, height)).save(out, "JPEG", quality=90)
    return out.getvalue()


def png_pixels(width: int, height: int) -> bytes:
    y, x = np.ogrid[:height, :width]
    base = ((x * 7 + y * 3) % 256).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(base[..., None], (height, width, 3))).tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def readable(s: socket.socket, timeout_s: float = 0) -> bool:
    """Whether ``s`` has something to read (poll(2): any descriptor number, unlike select)."""
    poller = select.poll()
    poller.register(s, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def raw(port: int, head: bytes, parts=(), *, wait_s: float = 10.0, drip_s: float = 0.0):
    """Send ``head`` then ``parts`` on a fresh socket (reading whatever comes back meanwhile), then read until the
    server closes or ``wait_s`` passes; the status of the answer, or what happened instead."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait_s)
    got = b""
    try:
        for piece in [head, *parts]:
            if readable(s):
                break
            try:
                s.sendall(piece)
            except OSError:
                break
            if drip_s:
                time.sleep(drip_s)
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
    finally:
        s.close()
    if got.startswith(b"HTTP/1.1 "):
        return int(got[9:12])
    return "closed" if not got else "garbled"


def post(port: int, path: str, body: bytes, kind: str = "application/json", extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
    )


# -- the cases ------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    run: Callable[["Ctx"], object]
    expect: set = field(default_factory=set)  # statuses that are right; empty: any 4xx or 200


@dataclass
class Ctx:
    target: Target
    client: httpx.Client

    @property
    def port(self) -> int:
        return self.target.port


def _statuses(results) -> str:
    counts = Counter(results)
    return " ".join(f"{k}x{v}" if v > 1 else str(k) for k, v in sorted(counts.items(), key=str))


def _parallel(n: int, fn) -> list:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def _tokenize(c: Ctx, blobs: list[bytes]) -> int:
    return c.client.post("/v1/tokenize", json={"images": [b64(b) for b in blobs]}).status_code


def _connection_flood(c: Ctx, n: int = 3000) -> str:
    """``n`` connections opened and left idle; how many were answered 429 at once, and whether a new client gets
    an answer while they are held."""
    socks, refused = [], 0
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", c.port), timeout=5))
        except OSError:
            break
    time.sleep(0.5)
    for s in socks:
        if readable(s):
            try:
                refused += s.recv(64).startswith(b"HTTP/1.1 429")
            except OSError:
                pass
    fresh = raw(c.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=5)
    for s in socks:
        s.close()
    return f"{refused} of {len(socks)} got 429; a new client: {fresh}"


def _disconnected_generates(c: Ctx) -> str:
    """Generate requests whose clients leave while they wait: the queue count must fall back to 0."""
    body = json.dumps({"class_labels": 0, "n": 32, "num_steps": 64}).encode()
    socks = []
    for _ in range(16):
        s = socket.create_connection(("127.0.0.1", c.port))
        s.sendall(post(c.port, "/v1/generate", body) + body)
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.close()
    end = time.monotonic() + 5
    depth = None
    while time.monotonic() < end:
        text = c.client.get("/metrics").text
        depth = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("titok_queue_depth{") or line.startswith("titok_active_generations{")
        )
        if depth == 0:
            break
        time.sleep(0.05)
    return f"queue + active after they left: {depth:.0f}"


def _upload_left(c: Ctx):
    """A client that leaves halfway through its upload: counted as 499 (client_closed_request), not 400."""

    def errors() -> float:
        for line in c.client.get("/metrics").text.splitlines():
            if line.startswith('titok_errors_total{type="client_closed_request"}'):
                return float(line.split()[-1])
        return 0.0

    before = errors()
    s = socket.create_connection(("127.0.0.1", c.port))
    s.sendall(post(c.port, "/v1/tokenize", b"x" * 1000, "multipart/form-data; boundary=b") + b"--b\r\n")
    time.sleep(0.2)
    s.close()
    time.sleep(0.5)
    return 499 if errors() > before else "not counted"


def _cors(c: Ctx):
    pre = c.client.options(
        "/v1/generate", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    big = c.client.post(
        "/v1/generate",
        content=b" " * (17 << 20),
        headers={"Origin": "http://ok.example", "content-type": "application/json"},
    )
    shape = pre.headers.get("content-type") == "application/json" and "error" in pre.json()
    cors = big.headers.get("access-control-allow-origin") == "http://ok.example"
    return f"{pre.status_code}{' json' if shape else ' NOT json'}, {big.status_code}{' +cors' if cors else ' no cors'}"


def _message_of(c: Ctx, body: dict) -> int:
    r = c.client.post("/v1/generate", json=body)
    return r.status_code if len(r.text) < 1000 and "0x" not in r.text else 500


def cases() -> list[Case]:
    g = "/v1/generate"
    chunked = b"Transfer-Encoding: chunked\r\n"
    mib = b"100000\r\n" + b" " * 0x100000 + b"\r\n"

    def chunked_over(path: str):
        return lambda c: raw(
            c.port, post(c.port, path, b"")[:-2].replace(b"Content-Length: 0\r\n", chunked) + b"\r\n", [mib] * 20
        )

    trns = png(64, 64, "RGB", transparency=(0, 0, 0))
    strips = ((1, 100_000), (1, 1_000_000), (1, 1_500_000), (1, 1 << 24), (1 << 24, 1), (1, (1 << 24) + 1), (1, 16384))
    for size in strips:
        png(*size, "L")  # made now, not while a case is measured
    png(4096, 4096, "RGBA")
    grey16()
    jpeg(4096, 4096)
    zeros = b'{"class_labels": [' + b"0," * 8_000_000 + b"0]}"  # within the 16 MiB body limit
    escapes = b'{"class_labels": "' + b"\\u00e9" * 2_700_000 + b'"}'
    spaces = b'{"class_labels": 1, "num_steps": 2' + b" " * 16_000_000 + b"}"
    empties = b'{"images": [' + b'"",' * 5_500_000 + b'""]}'
    return [
        Case("tokenize a 1x100,000 PNG", lambda c: _tokenize(c, [png(1, 100_000, "L")]), {200}),
        Case("tokenize a 1x1,000,000 PNG", lambda c: _tokenize(c, [png(1, 1_000_000, "L")]), {200}),
        Case("tokenize a 1x16,777,216 PNG (its rows cost too)", lambda c: _tokenize(c, [png(1, 1 << 24, "L")]), {413}),
        Case("tokenize a 1x1,500,000 PNG", lambda c: _tokenize(c, [png(1, 1_500_000, "L")]), {200}),
        Case("tokenize a 16,777,216x1 PNG", lambda c: _tokenize(c, [png(1 << 24, 1, "L")]), {200}),
        Case(
            "tokenize a 1x16,777,217 PNG (over the pixel limit)",
            lambda c: _tokenize(c, [png(1, (1 << 24) + 1, "L")]),
            {413},
        ),
        Case("64 RGBA PNGs of 4096x4096 in one request", lambda c: _tokenize(c, [png(4096, 4096, "RGBA")] * 64), {413}),
        Case(
            "3 RGBA PNGs of 4096x4096 (within the request budget)",
            lambda c: _tokenize(c, [png(4096, 4096, "RGBA")] * 3),
            {200},
        ),
        Case(
            "the same, 4 clients at once",
            lambda c: _statuses(_parallel(4, lambda: _tokenize(c, [png(4096, 4096, "RGBA")] * 3))),
            {"200x4"},
        ),
        Case("a PNG header of 20,000x20,000 (a bomb)", lambda c: _tokenize(c, [bomb(20_000, 20_000)]), {413}),
        Case("a 4096x4096 16-bit grey PNG", lambda c: _tokenize(c, [grey16()]), {200}),
        Case("a 4096x4096 JPEG", lambda c: _tokenize(c, [jpeg(4096, 4096)]), {200}),
        Case("64 PNGs of 1x100,000 in one request", lambda c: _tokenize(c, [png(1, 100_000, "L")] * 64), {200}),
        Case(
            "headers dripped a byte at a time",
            lambda c: raw(c.port, b"G", [bytes([b]) for b in b"ET /healthz HTTP/1.1\r\nHost: x\r\n"], drip_s=0.25),
            {408},
        ),
        # the parser refuses a method that cannot be one at its first wrong byte, before the read timeout
        Case("a bad method dripped a byte at a time", lambda c: raw(c.port, b"G", [b"E"] * 20, drip_s=0.25), {400}),
        Case(
            "a 32 MB header",
            lambda c: raw(c.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", [b"a" * (1 << 20)] * 32),
            {431},
        ),
        Case(
            "100,000 headers",
            lambda c: raw(c.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", [b"X-A: b\r\n" * 1000] * 100),
            {431},
        ),
        Case(
            "a 32 MB trailer after a chunked body",
            lambda c: raw(
                c.port,
                post(c.port, g, b"")[:-2].replace(b"Content-Length: 0\r\n", chunked) + b"\r\n",
                [b"1\r\n{\r\n0\r\nX-Big: ", *[b"a" * (1 << 20)] * 32],
            ),
            {431},
        ),
        Case("3,000 idle connections", _connection_flood),
        Case("an idle socket", lambda c: raw(c.port, b"", wait_s=10), {408}),
        Case(
            "half-sent headers", lambda c: raw(c.port, b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n", wait_s=10), {408}
        ),
        Case(
            "a body dripped slowly",
            lambda c: raw(c.port, post(c.port, g, b"x" * 100), [b"{"] * 4, drip_s=0.7, wait_s=10),
            {408},
        ),
        Case("16 MB JSON: class_labels of 8M zeros", lambda c: raw(c.port, post(c.port, g, zeros), [zeros]), {413}),
        Case(
            "16 MB JSON: 5.5M empty images",
            lambda c: raw(c.port, post(c.port, "/v1/tokenize", empties), [empties]),
            {413},
        ),
        Case("16 MB JSON: a class name of escapes", lambda c: raw(c.port, post(c.port, g, escapes), [escapes]), {400}),
        Case("16 MB JSON: whitespace in one request", lambda c: raw(c.port, post(c.port, g, spaces), [spaces]), {200}),
        Case(
            "10 clients with a 113-byte 1x16384 PNG",
            lambda c: _statuses(_parallel(10, lambda: _tokenize(c, [png(1, 16384, "L")]))),
            {"200x10"},
        ),
        Case("chunked body over the limit: generate", chunked_over(g), {413}),
        Case("chunked body over the limit: detokenize", chunked_over("/v1/detokenize"), {413}),
        Case("chunked body over the limit: tokenize", chunked_over("/v1/tokenize"), {413}),
        Case(
            "declared body over the limit",
            lambda c: raw(
                c.port, post(c.port, g, b"")[:-2].replace(b"Content-Length: 0", b"Content-Length: 99999999") + b"\r\n"
            ),
            {413},
        ),
        Case(
            "40 clients generating n=64 at once",
            lambda c: _statuses(
                _parallel(40, lambda: c.client.post(g, json={"class_labels": 0, "n": 64, "num_steps": 8}).status_code)
            ),
        ),
        Case(
            "16 waiting generates whose clients leave", _disconnected_generates, {"queue + active after they left: 0"}
        ),
        Case('{"class_labels": true}', lambda c: c.client.post(g, json={"class_labels": True}).status_code, {422}),
        Case(
            'token id true / "5"',
            lambda c: _statuses(
                c.client.post("/v1/detokenize", json={"tokens": [[t] * 32]}).status_code for t in (True, "5")
            ),
            {"422x2"},
        ),
        Case(
            '"n": "2", "seed": true',
            lambda c: _statuses(
                c.client.post(g, json={"class_labels": 0, **b}).status_code for b in ({"n": "2"}, {"seed": True})
            ),
            {"422x2"},
        ),
        Case(
            "seed 2^63-1 with n=3",
            lambda c: c.client.post(g, json={"class_labels": 0, "n": 3, "seed": 2**63 - 1}).status_code,
            {400},
        ),
        Case(
            "nested JSON on tokenize / generate / detokenize",
            lambda c: _statuses(
                c.client.post(
                    p, content=b"[" * 5000 + b"]" * 5000, headers={"content-type": "application/json"}
                ).status_code
                for p in ("/v1/tokenize", g, "/v1/detokenize")
            ),
            {"422x3"},
        ),
        Case(
            "non-UTF-8 JSON on tokenize / generate",
            lambda c: _statuses(
                c.client.post(p, content=b'{"model": "\xff"}', headers={"content-type": "application/json"}).status_code
                for p in ("/v1/tokenize", g)
            ),
            {"422x2"},
        ),
        Case(
            "66 multipart files",
            lambda c: (
                c.client.post("/v1/tokenize", files=[("files", ("a.png", png(8, 8), "image/png"))] * 66).status_code
            ),
            {413},
        ),
        Case("a malformed request line", lambda c: raw(c.port, b"GARBAGE\r\n\r\n"), {400}),
        Case("CORS: refused preflight, 413 with an allowed origin", _cors, {"400 json, 413 +cors"}),
        Case("a client leaving during its upload", _upload_left, {499}),
        Case("HEAD /healthz", lambda c: c.client.head("/healthz").status_code, {200}),
        Case(
            "Accept: image/webp;q=0, image/png",
            lambda c: c.client.post(
                "/v1/detokenize", json={"tokens": [[0] * 32]}, headers={"accept": "image/webp;q=0, image/png"}
            ).headers["content-type"],
            {"image/png"},
        ),
        Case("a 100 KB class name (short echo)", lambda c: _message_of(c, {"class_labels": "x" * 100_000}), {400}),
        Case(
            "not an image (no object repr)",
            lambda c: c.client.post("/v1/tokenize", json={"images": [b64(b"\x89PNG\r\n\x1a\nbroken")]}).status_code,
            {400},
        ),
        Case(
            "tRNS colour key composited",
            lambda c: c.client.post("/v1/tokenize", json={"images": [b64(trns)]}).status_code,
            {200},
        ),
        Case(
            "base64 with line breaks and DATA: prefix",
            lambda c: (
                c.client.post(
                    "/v1/tokenize",
                    json={"images": ["  DATA:image/png;base64,\n" + base64.encodebytes(png(32, 32)).decode() + "\n"]},
                ).status_code
            ),
            {200},
        ),
        Case(
            "multipart part type image/png; x=y",
            lambda c: (
                c.client.post("/v1/tokenize", files=[("files", ("a.png", png(32, 32), "image/png; x=y"))]).status_code
            ),
            {200},
        ),
        Case("metrics without a key (not required by default)", lambda c: c.client.get("/metrics").status_code, {200}),
    ]


# -- the run --------------------------------------------------------------------------------------------


def run(repo: Path, log: Path, only: str = "") -> tuple[list[dict], dict]:
    """Every case (whose name contains ``only``) against one capped gateway; its rows and the checks afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the flood's sockets are ours too
    target = Target(repo, log)
    rows = []
    poller = Poller(target.url)
    try:
        client = httpx.Client(base_url=target.url, timeout=60)
        before = client.post("/v1/generate", json=SEEDED).json()
        ctx = Ctx(target, client)
        for case in [c for c in cases() if only.lower() in c.name.lower()]:
            time.sleep(0.3)
            base = target.rss()
            target.reset_peak()
            poller.reset()
            try:
                result = case.run(ctx)
            except Exception as e:  # a case that breaks is a finding, not the end of the run
                result = f"{type(e).__name__}: {e}"[:80]
            time.sleep(0.2)
            ok = (result in case.expect) if case.expect else _fine(result)
            rows.append(
                {
                    "case": case.name,
                    "result": result,
                    "ok": ok,
                    "rss_growth_mib": max(0, target.peak() - base) / (1 << 20),
                    "worst_healthz_ms": poller.worst.value * 1000,
                    "healthz_failures": poller.failures.value,
                }
            )
            print(f"{case.name}: {result} ({'ok' if ok else 'WRONG'})", file=sys.stderr)
        poller.stop()
        after = client.post("/v1/generate", json=SEEDED).json()
        same = [a["b64_json"] for a in after["images"]] == [b["b64_json"] for b in before["images"]]
        checks = {
            "ready_after": client.get("/readyz").status_code == 200,
            "seeded_identical_after": same,
            "alive": target.proc.poll() is None,
            "no_5xx_logged": b'"status": 5' not in log.read_bytes(),
        }
    finally:
        poller.stop()
        target.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return rows, checks


def _fine(result) -> bool:
    """Any status under 500 (or a summary of statuses with none of 5xx)."""
    if isinstance(result, int):
        return result < 500
    return isinstance(result, str) and not any(f"{s}x" in result or result == str(s) for s in range(500, 600))


def table(rows: list[dict], checks: dict) -> str:
    lines = [
        "| case | answer | as required | peak RSS growth (MiB) | worst /healthz (ms) |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['result']} | {'yes' if r['ok'] else '**no**'} | {r['rss_growth_mib']:.0f} | "
            f"{r['worst_healthz_ms']:.0f} |"
        )
    ok = sum(r["ok"] for r in rows)
    worst = max(rows, key=lambda r: r["worst_healthz_ms"])
    lines += [
        "",
        f"{ok}/{len(rows)} cases as required; max RSS growth {max(r['rss_growth_mib'] for r in rows):.0f} MiB; "
        f"worst /healthz {worst['worst_healthz_ms']:.0f} ms ({worst['case']}). Afterwards: "
        + ", ".join(f"{k} {'yes' if v else '**no**'}" for k, v in checks.items())
        + ".",
    ]
    return "\n".join(lines)


def report(repo: str = "model_repository") -> str:
    log = Path("/tmp") / f"titok-hostile-{os.getpid()}.log"
    rows, checks = run(Path(repo), log)
    return table(rows, checks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--json", help="also write the rows and checks here")
    p.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = p.parse_args(argv)
    log = Path("/tmp") / f"titok-hostile-{os.getpid()}.log"
    rows, checks = run(Path(args.repo), log, args.only)
    print(table(rows, checks))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "checks": checks}, indent=1))
    return 0 if all(r["ok"] for r in rows) and all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
