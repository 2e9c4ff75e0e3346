"""What the tests that run real servers (gateway, tritonserver, Prometheus) as subprocesses share."""

import subprocess
import time

import httpx


def wait_until_ready(proc: subprocess.Popen, url: str, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``GET url`` until it answers 200 (True), or the process exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(interval)
    return False


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
