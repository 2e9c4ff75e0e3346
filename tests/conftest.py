"""Fixtures of the gateway tests: a model repository (the shipped one, or a stand-in) and gateway processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import stop_process, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "model_repository"
FAMILY = "titok-fmnist"

_STANDIN = """
import sys, torch
from training.checkpoint import save_checkpoint
from training.models import build_model
torch.manual_seed(0)
save_checkpoint(build_model("titok-fmnist-32"), sys.argv[1] + "/tokenizer")
save_checkpoint(build_model("generator-fmnist"), sys.argv[1] + "/generator")
"""


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """The shipped ``model_repository/`` when it holds a family, else a stand-in of random models of its shapes."""
    if any(SHIPPED.glob("*.manifest.json")):
        return SHIPPED
    out = tmp_path_factory.mktemp("standin")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", _STANDIN, str(out)], check=True, cwd=ROOT, env=env)
    build = ["--tokenizer", out / "tokenizer", "--generator", out / "generator", "--family", FAMILY]
    cmd = [sys.executable, "-m", "export", "build", *map(str, build), "--out", str(out / "repo"), "--skip-verify"]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return out / "repo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """``python -m service`` in a subprocess on a free loopback port, its log in a file."""

    def __init__(self, repo: Path, log: Path, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("TITOK_")}
        env.update(OMP_NUM_THREADS="1", TITOK_PORT=str(self.port), TITOK_MODEL_REPOSITORY=str(repo))
        env.update({f"TITOK_{k.upper()}": str(v) for k, v in settings.items()})
        self._log_file = open(log, "wb")
        cmd = [sys.executable, "-m", "service"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        if wait_until_ready(self.proc, f"{self.url}/readyz", timeout=60):
            return
        if self.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {self.proc.returncode}:\n{log.read_text()}")
        self.stop()
        raise RuntimeError(f"the gateway did not get ready:\n{log.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log_file.close()


@pytest.fixture(scope="session")
def gateway(model_repository, tmp_path_factory):
    """The gateway with default settings (a 2 MiB body limit, so that the 413 tests stay cheap)."""
    g = Gateway(model_repository, tmp_path_factory.mktemp("gw") / "gateway.log", max_body_bytes=2 << 20)
    yield g
    g.stop()


# ---------------------------------------------------------------------------------------------------
# A real Triton (tests/triton_server.py) and a gateway on it
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def twin_repository(model_repository, tmp_path_factory) -> Path:
    """The Python-backend twin of the served repository (the same model.onnx files and manifests)."""
    from tests.triton_server import write_twin_repository

    return write_twin_repository(tmp_path_factory.mktemp("twin") / "repository", model_repository)


@pytest.fixture(scope="session")
def triton(twin_repository, tmp_path_factory):
    """A running tritonserver on the twin; a test that stops or kills it starts it again before it ends."""
    from tests.triton_server import TritonServer

    workdir = tmp_path_factory.mktemp("triton")
    server = TritonServer(twin_repository, workdir, workdir / "tritonserver.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def triton_gateway(twin_repository, triton, tmp_path_factory):
    """The gateway on the Triton backend, talking to ``triton`` over gRPC."""
    log = tmp_path_factory.mktemp("gw") / "triton-gateway.log"
    g = Gateway(twin_repository, log, backend="triton", triton_url=triton.grpc_url)
    yield g
    g.stop()
