"""The gateway image, built from the repository's Dockerfile and run: it serves the bytes the host gateway serves.

No container registry is reachable here (nor in CI), so the base is a local Debian bookworm with Python 3.11 made by
debootstrap (deploy/image/local-base.sh, its root filesystem cached under /var/cache/titok-serve), handed to the real
Dockerfile through its PYTHON_IMAGE argument. buildah builds it with chroot isolation (no daemon, no user namespaces)
and `buildah run` runs the image's own command on the host's network (`podman run` needs cgroups that this machine's
containers lack). Both need root, and buildah and debootstrap (make tools).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name

from tests.conftest import ROOT, SHIPPED, free_port
from tests.processes import wait_until_ready
from tests.test_deploy import dockerfile_env, lock_pins

pytestmark = pytest.mark.slow

IMAGE = "localhost/titok-serve/gateway:test"
USER = "10001:10001"
HOST_CA = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
MAX_IMAGE_MB = 700  # torch alone (CPU) would take the image past this
# run inside the image: who it runs as, what it can write, what is installed
PROBE = """
import importlib.metadata as md, importlib.util, json, os, platform
try:
    open(os.path.join(os.environ["TITOK_MODEL_REPOSITORY"], "written-by-the-gateway"), "w").close()
    writable = True
except OSError:
    writable = False
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "home": os.path.isdir(os.environ["HOME"]), "models_writable": writable,
    "torch": importlib.util.find_spec("torch") is not None,
    "python_full_version": platform.python_version(),
    "dists": {d.metadata["Name"]: d.version for d in md.distributions()},
}))
"""


def buildah(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"buildah {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    """./Dockerfile built on the local debootstrap base (with --layers: a rerun reuses the unchanged steps)."""
    if os.geteuid() != 0:
        pytest.skip("building and running the image needs root (debootstrap, buildah's chroot isolation)")
    for tool in ("buildah", "debootstrap"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: make tools (Debian's {tool} package)")
    started = time.monotonic()
    base = subprocess.run([str(ROOT / "deploy/image/local-base.sh")], capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, base.stderr
    print(f"\nlocal base {base.stdout.strip()} ready in {time.monotonic() - started:.0f} s")
    cmd = ["bud", "--isolation", "chroot", "--layers", "--format", "docker", "-t", IMAGE]
    cmd += ["--build-arg", f"PYTHON_IMAGE={base.stdout.strip()}"]
    if HOST_CA.is_file():
        # TLS may pass a proxy whose CA only the host trusts: pip in the RUN steps gets the host's bundle through a
        # site-wide pip.conf mounted for the build only (no layer keeps it)
        conf = tmp_path_factory.mktemp("pip")
        shutil.copyfile(HOST_CA, conf / "ca.crt")
        (conf / "pip.conf").write_text("[global]\ncert = /etc/xdg/pip/ca.crt\n")
        cmd += ["--volume", f"{conf}:/etc/xdg/pip:ro"]
    started = time.monotonic()
    buildah(*cmd, str(ROOT), timeout=900)
    print(f"{IMAGE} built in {time.monotonic() - started:.0f} s")
    return IMAGE


def inspect(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image))


class Container:
    """A working container of ``image`` running the image's command on the host's network, its output in a file."""

    def __init__(self, image: str, log: Path, **env: str):
        self.name = buildah("from", image).strip()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = inspect(image)["Docker"]["config"]["Cmd"]
        env = {"TITOK_HOST": "127.0.0.1", "TITOK_PORT": str(self.port), **env}
        run = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        run += [arg for k, v in env.items() for arg in ("--env", f"{k}={v}")]
        with open(log, "wb") as out:
            # its own process group: stopping it stops buildah's runtime and the server under it
            self.proc = subprocess.Popen(
                [*run, self.name, "--", *command], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if not wait_until_ready(self.proc, f"{self.url}/readyz", timeout=120, interval=0.2):
            self.stop()
            raise RuntimeError(f"the container did not get ready:\n{log.read_text()}")

    def exec(self, *command: str) -> str:
        """Run a command in the same container (its filesystem, user and environment)."""
        return buildah("run", "--isolation", "chroot", "--network", "host", self.name, "--", *command, timeout=120)

    def server_uids(self) -> set[int]:
        """The real user ids of the processes of the container's process group other than buildah itself."""
        uids = set()
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                pid = int(status.parent.name)
                if os.getpgid(pid) != self.proc.pid or pid == self.proc.pid:
                    continue
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            except (OSError, ValueError):
                continue  # gone meanwhile
            if "buildah" not in fields["Name"]:
                uids.add(int(fields["Uid"].split()[0]))
        return uids

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def container(image, tmp_path_factory):
    c = Container(image, tmp_path_factory.mktemp("container") / "gateway.log")
    yield c
    c.stop()


def test_the_container_serves_the_host_gateways_bytes(container, gateway, model_repository):
    assert model_repository == SHIPPED  # the repository the image holds
    assert httpx.get(f"{container.url}/readyz", timeout=5).status_code == 200
    body = {"class_labels": ["Sneaker", 9], "n": 2, "seed": 7, "num_steps": 4, "return_tokens": True}
    answers = [httpx.post(f"{url}/v1/generate", json=body, timeout=120) for url in (container.url, gateway.url)]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    inside, host = (a.json()["images"] for a in answers)
    assert len(inside) == 4 and inside == host  # tokens and PNG bytes, image for image


def test_the_container_runs_as_its_user_and_cannot_write_the_models(container):
    assert container.server_uids() == {10001}  # the serving process itself, seen from the host
    probe = json.loads(container.exec("python", "-c", PROBE))
    assert (probe["uid"], probe["gid"]) == (10001, 10001) and probe["home"]
    assert probe["models_writable"] is False
    assert probe["torch"] is False and not [d for d in probe["dists"] if d.lower().startswith(("torch", "nvidia"))]
    # exactly the locked versions: every installed distribution but the gateway and what `python -m venv` brings
    env = {"python_full_version": probe["python_full_version"], "sys_platform": "linux", "platform_system": "Linux"}
    pins = lock_pins(env)
    installed = {canonicalize_name(name): v for name, v in probe["dists"].items()}
    installed = {name: v for name, v in installed.items() if name not in ("titok-serve", "pip", "setuptools")}
    assert installed == {name: pins[name] for name in installed} and set(installed) == set(pins)


def test_the_first_log_line_is_json(container):
    first = container.log.read_text().splitlines()[0]
    record = json.loads(first)  # not ONNX Runtime's coloured warning (the image's HOME exists)
    assert {"ts", "level", "logger", "msg"} <= set(record)


def test_the_image_is_labelled_non_root_and_small(image):
    config = inspect(image)["Docker"]["config"]
    assert config["User"] == USER and config["Cmd"] == ["python", "-m", "service"]
    assert "/readyz" in " ".join(config["Healthcheck"]["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    expected = {k: v for k, v in dockerfile_env().items() if k.startswith(("TITOK_", "PYTHON", "HOME"))}
    assert {k: env.get(k) for k in expected} == expected and env["PATH"].startswith("/opt/venv/bin:")
    labels = config["Labels"]
    tomllib = pytest.importorskip("tomllib")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.base.name"].startswith("localhost/titok-serve/python:")
    assert {"title", "description", "licenses"} <= {k.rsplit(".", 1)[1] for k in labels}
    size = buildah("images", "--format", "{{.Size}}", image).strip()
    print(f"\n{image}: {size} (its base: {labels['org.opencontainers.image.base.name']})")
    number, unit = re.fullmatch(r"([\d.]+)\s*([kMG]B)", size).groups()
    assert float(number) * {"kB": 1e-3, "MB": 1, "GB": 1e3}[unit] < MAX_IMAGE_MB, size
