"""A real ``tritonserver`` for the integration tests: the binary bundled in ``nvidia-pytriton`` (``.venv-triton``,
``make setup-triton``), which has only the Python backend, serving the Python-backend twin of the model repository.

How it is started without NVIDIA's container: the backends and caches copied into a
scratch folder with the stub of the running Python beside the Python backend, ``nvidia_pytriton.libs`` and the
Python's own LIBDIR on ``LD_LIBRARY_PATH``, the environment's ``bin`` first on ``PATH``.
"""

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from tests.conftest import ROOT, SHIPPED, free_port
from tests.processes import wait_until_ready

VENV = ROOT / ".venv-triton"
# where the environment's packages are, its Python's LIBDIR and version (the stub must match the version)
_FIND = (
    "import sys, sysconfig; "
    "print(sysconfig.get_paths()['purelib'], sysconfig.get_config_var('LIBDIR'), '%d.%d' % sys.version_info[:2])"
)


def write_twin_repository(out: Path, repo: Path = SHIPPED, intra_op_threads: int = 1) -> Path:
    """``export twin`` of the (shipped) model repository into ``out``, one onnxruntime thread per model instance."""
    from export.twin import write_twin

    write_twin(repo, out, intra_op_threads=intra_op_threads)
    return Path(out)


class TritonServer:
    """One tritonserver process on loopback ports; ``start`` after ``stop``/``kill`` comes back on the same ports."""

    def __init__(self, repository: Path, workdir: Path, log: Path | None = None):
        python = VENV / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"{VENV} is missing: run `make setup-triton` (a real tritonserver from nvidia-pytriton)")
        self.repository, self.workdir = Path(repository), Path(workdir)
        self.log = Path(log) if log else self.workdir / "tritonserver.log"
        found = subprocess.run([str(python), "-c", _FIND], check=True, capture_output=True, text=True)
        site, libdir, version = found.stdout.split()
        bundle = Path(site) / "pytriton" / "tritonserver"
        self._binary = bundle / "bin" / "tritonserver"
        # the bundle's folders are copied, never written into: the stub must sit beside the Python backend
        scratch = self.workdir / "triton"
        if not scratch.exists():
            shutil.copytree(bundle / "backends", scratch / "backends")
            shutil.copytree(bundle / "caches", scratch / "caches")
            stub = bundle / "python_backend_stubs" / version / "triton_python_backend_stub"
            shutil.copy2(stub, scratch / "backends" / "python" / stub.name)
        self._scratch = scratch
        # without the LIBDIR the stub may load the system's libpython and crash
        libs = [str(Path(site) / "nvidia_pytriton.libs"), libdir]
        self._env = {
            **os.environ,
            "LD_LIBRARY_PATH": ":".join(libs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p]),
            "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(VENV),
            # two cores on the test machine: one thread per model call (the twin's intra_op_thread_count too)
            "OMP_NUM_THREADS": "1",
        }
        self._ports: tuple[int, int, int] | None = None
        self.proc: subprocess.Popen | None = None
        # the Python backend's shared-memory regions, named so that a crash's leftovers can be found and removed
        self._shm_prefix = f"titok_test_{uuid.uuid4().hex[:12]}_"

    @property
    def ports(self) -> tuple[int, int, int]:
        """HTTP, gRPC and metrics ports: picked at the first start (or first look at a URL), then kept."""
        if self._ports is None:
            ports = set()
            while len(ports) < 3:
                ports.add(free_port())
            self._ports = tuple(ports)
        return self._ports

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[2]}/metrics"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120) -> None:
        """Start the server on its ports and wait until it and its models are ready (a no-op when it runs)."""
        if self.running:
            return
        http, grpc, metrics = self.ports
        cmd = [
            str(self._binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._scratch / 'backends'}",
            f"--cache-directory={self._scratch / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics}",
            "--allow-gpu-metrics=false",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        with open(self.log, "ab") as log:
            # its own process group: a crash takes the model stubs with it, as a dying container would
            self.proc = subprocess.Popen(
                cmd, env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait_until_ready(self.proc, f"{self.http_url}/v2/health/ready", timeout, interval=0.2):
            return
        if self.proc.poll() is not None:
            self._reap()
            raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self._tail()}")
        self._reap()
        raise RuntimeError(f"tritonserver did not get ready within {timeout} s:\n{self._tail()}")

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _reap(self) -> None:
        """SIGKILL whatever is left of the process group (stubs do not always exit when their server dies)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            region.unlink(missing_ok=True)

    def stop(self) -> None:
        """SIGTERM (Triton finishes its requests and unloads its models), then wait."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            self._reap()

    def kill(self) -> None:
        """SIGKILL to the server and its model stubs: a crash."""
        if self.running:
            self._reap()
