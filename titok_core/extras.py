"""One line instead of a ``ModuleNotFoundError`` traceback when an entry point's optional dependency is missing: which
``make`` target or ``pip install`` extra brings it."""

import importlib.util
import sys

# module -> what installs it (pyproject.toml's extras; the make targets of the Makefile)
INSTALL = {
    "onnxruntime": "make setup-serve, or pip install -e '.[cpu]' ('.[gpu]' with CUDA)",
    "tritonclient": "pip install -e '.[triton]'",
    "torch": "make setup-dev, or pip install -e '.[cpu,train]' (PyTorch's CPU wheel elsewhere: README, Development)",
    "onnx": "make setup-dev, or pip install -e '.[cpu,train]'",
}


def missing(*modules: str) -> list[str]:
    """The modules of ``modules`` that cannot be imported."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def hint(module: str, purpose: str) -> str:
    """The one line for a missing ``module`` that ``purpose`` needs."""
    return f"error: {purpose} needs {module}, which is not installed: {INSTALL.get(module, f'pip install {module}')}"


def require(*modules: str, purpose: str) -> None:
    """Exit with status 1 and one line on stderr per missing module (their order), when any is missing."""
    absent = missing(*modules)
    if absent:
        for module in absent:
            print(hint(module, purpose), file=sys.stderr)
        sys.exit(1)
