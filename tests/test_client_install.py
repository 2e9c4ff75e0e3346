"""The light client install: `pip install ./clients/python` (the titok-client distribution) into a fresh virtualenv
brings the `titok` command and `titok_client.Client` with httpx and tqdm only, none of the gateway's dependencies, and
talks to a real gateway. It builds from a copy of clients/python (links followed, as pip reads them), so the checkout
gets no build droppings."""

import shutil
import subprocess
import sys

import pytest
import tomllib

from tests.conftest import ROOT, Gateway

pytestmark = pytest.mark.slow  # a virtualenv and a pip install

SERVER_ONLY = {"fastapi", "uvicorn", "onnxruntime", "numpy", "pillow", "tritonclient", "grpcio", "torch", "pydantic"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    where = tmp_path_factory.mktemp("client")
    source = where / "src"
    shutil.copytree(ROOT / "clients" / "python", source, symlinks=False)
    subprocess.run([sys.executable, "-m", "venv", where / "venv"], check=True)
    pip = [where / "venv" / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", source]
    subprocess.run(pip, check=True, timeout=600)
    return where / "venv" / "bin"


def test_version_and_only_client_dependencies(venv):
    version = subprocess.run([venv / "titok", "--version"], capture_output=True, text=True, check=True).stdout
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version.strip() == f"titok {project['version']}"
    listed = subprocess.run([venv / "python", "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    names = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert {"titok-client", "httpx", "tqdm"} <= names and not names & SERVER_ONLY, names


def test_installed_client_talks_to_a_gateway(venv, model_repository, tmp_path):
    g = Gateway(model_repository, tmp_path / "gateway.log")
    try:
        out = subprocess.run(
            [venv / "titok", "--url", g.url, "generate", "-c", "Sneaker", "--seed", "0", "-o", tmp_path / "out"],
            capture_output=True,
            text=True,
            cwd=tmp_path,  # not the checkout: the installed package, not the repository's
        )
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "out" / "sneaker-0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        code = f"from titok_client import Client; print(Client({g.url!r}).models()[0]['id'])"
        out = subprocess.run([venv / "python", "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert out.stdout.strip() == "titok-fmnist", out.stderr
    finally:
        g.stop()
