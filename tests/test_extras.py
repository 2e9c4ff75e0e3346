"""A missing optional dependency is one line naming the make target or pip extra, at every entry point: the gateway
without onnxruntime (the cpu extra) or tritonclient (the triton extra), training, export and bench without torch. The
module is blocked in the child interpreter (``sys.modules[name] = None`` makes it unimportable), nothing uninstalled."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from titok_core.extras import INSTALL, hint, missing

_RUN = (
    "import runpy, sys; sys.modules.update(dict.fromkeys({blocked!r})); sys.argv[1:] = {args!r}; "
    "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
)


def run_blocked(module: str, blocked: list[str], args: list[str], **env: str) -> subprocess.CompletedProcess:
    code = _RUN.format(blocked=blocked, args=args, module=module)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TITOK_")} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=environ, timeout=120
    )


@pytest.mark.parametrize(
    ("module", "blocked", "args", "env", "needle"),
    [
        ("service", ["onnxruntime"], [], {}, "make setup-serve, or pip install -e '.[cpu]'"),
        ("service", ["tritonclient"], [], {"TITOK_BACKEND": "triton"}, "pip install -e '.[triton]'"),
        ("training", ["torch"], ["train", "configs/titok-fmnist-32.yaml"], {}, "make setup-dev"),
        (
            "export",
            ["torch"],
            ["twin", "--repo", "model_repository", "--out", "/nonexistent/twin"],
            {},
            "pip install -e '.[cpu,train]'",
        ),
        ("bench", ["torch"], [], {}, "'.[cpu,train]'"),
    ],
)
def test_entry_point_names_the_extra(module, blocked, args, env, needle):
    result = run_blocked(module, blocked, args, **env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("error: ") and f"needs {blocked[0]}" in lines[0] and needle in lines[0], lines


def test_help_needs_no_extra():
    result = run_blocked("service", ["onnxruntime", "tritonclient"], ["--help"])
    assert result.returncode == 0 and "TITOK_API_KEYS" in result.stdout and "TITOK_BACKEND" in result.stdout


def test_hint_and_missing():
    assert missing("json", "no_such_module_xyz") == ["no_such_module_xyz"]
    assert hint("no_such_module_xyz", "this").endswith("pip install no_such_module_xyz")
    assert set(INSTALL) >= {"torch", "onnxruntime", "tritonclient"}
