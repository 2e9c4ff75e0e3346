# The two commands of the README: `make serve` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: serve test test-fast lint setup-serve setup-dev setup-triton tools data clean ship lock image

PIP := $(PY) -m pip install -q --disable-pip-version-check

# one line per stage (make serve on a fresh clone: README, Serving), the commands themselves quiet
$(VENV)/bin/python:
	@echo "make: creating the virtualenv $(VENV)"
	@$(PYTHON) -m venv $(VENV)

# stamp files: re-install only when pyproject.toml changes
$(VENV)/.serve-installed: pyproject.toml | $(VENV)/bin/python
	@echo "make: installing the gateway into $(VENV) (pip install '.[cpu]': FastAPI, ONNX Runtime; no PyTorch)"
	@# a plain install: an editable one makes setuptools print a warning box a newcomer takes for a failure;
	@# python -m service runs from the checkout either way (the working directory comes first on sys.path)
	@$(PIP) '.[cpu]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	@echo "make: installing everything into $(VENV) (pip install -e '.[cpu,triton,train,dev]': PyTorch CPU, tests)"
	@$(PIP) -e '.[cpu,triton,train,dev]'
	@touch $@ $(VENV)/.serve-installed

setup-serve: $(VENV)/.serve-installed
setup-dev: $(VENV)/.dev-installed

# A real Triton server for the integration tests: nvidia-pytriton bundles tritonserver with only the Python
# backend. Its own environment, because it pins numpy<2 (see tests/triton_server.py).
TRITON_VENV ?= .venv-triton
$(TRITON_VENV)/.installed: Makefile
	rm -rf $(TRITON_VENV) && $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q 'nvidia-pytriton==0.7.0' 'onnxruntime>=1.18' 'numpy<2'
	touch $@
setup-triton: $(TRITON_VENV)/.installed

# System tools the tests run for real: Prometheus and promtool (Debian's prometheus package) in the deployment
# tests, Chromium (headless, driven by Playwright) in the playground test, buildah and debootstrap to build and run
# the gateway image (tests/test_image.py, which needs root and skips without it: they are optional for others)
tools: /usr/bin/promtool /usr/bin/chromium /usr/bin/buildah /usr/sbin/debootstrap
apt_install = DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
/usr/bin/promtool:
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && $(apt_install) prometheus; \
	else \
		echo "Prometheus is missing: run 'sudo apt-get install prometheus'" >&2; exit 1; \
	fi
/usr/bin/chromium:
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && $(apt_install) chromium; \
	else \
		echo "Chromium is missing: run 'sudo apt-get install chromium'" >&2; exit 1; \
	fi
/usr/bin/buildah /usr/sbin/debootstrap:
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && $(apt_install) buildah debootstrap; \
	else \
		echo "$@ is missing (sudo apt-get install buildah debootstrap): tests/test_image.py runs as root only" >&2; \
	fi

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package
data: $(FMNIST)
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; \
	fi

serve: setup-serve
	@echo "make: starting the gateway on http://127.0.0.1:8000 (TITOK_* settings: python -m service --help)"
	@$(PY) -m service

lint: setup-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy  # titok_core/ and service/ (pyproject.toml [tool.mypy])

test: setup-dev setup-triton tools data lint
	$(PY) -m pytest

# the fast lane: every test not marked slow (no tritonserver, Chromium, Prometheus or schema fuzz; README: Development)
test-fast: setup-dev data lint
	$(PY) -m pytest -m "not slow"

# The gateway image's Python dependencies pinned with hashes, for Python 3.11 on any platform: the Dockerfile
# installs exactly these. Run after changing the dependencies or the cpu extra in pyproject.toml.
lock: setup-dev
	$(PY) -m uv pip compile pyproject.toml --extra cpu --extra triton --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command 'make lock' --quiet -o deploy/image/requirements.lock

# The gateway image on the official python base (IMAGE_BUILDER=podman or buildah work too)
IMAGE_BUILDER ?= docker
image:
	$(IMAGE_BUILDER) build -t titok-serve/gateway:0.1.0 .

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .ruff_cache *.egg-info

# The shipped titok-fmnist family from scratch (about 5 h on 2 CPU cores; minutes on a GPU): classifier,
# tokenizer, generator, sampling sweep, evaluation (docs/), export into model_repository/.
FAMILY := checkpoints/titok-fmnist
ship: setup-dev data
	$(PY) -m training classifier --steps 2000 --out checkpoints/fmnist-classifier
	$(PY) -m training train configs/titok-fmnist-32.yaml
	$(PY) -m training train configs/generator-fmnist.yaml
	$(PY) -m training train configs/titok-fmnist-32-decoder-ft.yaml init=runs/titok-fmnist-32/checkpoint
	$(PY) -m training train configs/titok-fmnist-32-ft-perceptual.yaml init=runs/titok-fmnist-32-decoder-ft/checkpoint
	$(PY) -m training train configs/titok-fmnist-32-ft-class.yaml
	$(PY) -m training train configs/titok-fmnist-32-ft-label.yaml
	$(PY) -m training train configs/generator-fmnist-ft.yaml init=runs/generator-fmnist/checkpoint
	$(PY) -m training train configs/generator-fmnist-ft.yaml init=runs/generator-fmnist-ft/checkpoint \
		tokenizer=runs/titok-fmnist-32-ft-label/checkpoint out=runs/generator-fmnist-ft-label
	$(PY) -m training train configs/titok-fmnist-32-decoder-deep.yaml
	rm -rf $(FAMILY) && mkdir -p $(FAMILY)
	cp -r runs/titok-fmnist-32-decoder-deep/checkpoint $(FAMILY)/tokenizer
	cp -r runs/generator-fmnist-ft-label/checkpoint $(FAMILY)/generator
	$(PY) -m training sweep --tokenizer $(FAMILY)/tokenizer --generator $(FAMILY)/generator \
		--classifier checkpoints/fmnist-classifier --steps 8 --guidance 3,4,5 --temperature 1.5,2,3 \
		--num-per-class 50 --out docs/sampling-sweep-ft.json --write-defaults
	$(PY) -m training evaluate --tokenizer $(FAMILY)/tokenizer --generator $(FAMILY)/generator \
		--classifier checkpoints/fmnist-classifier --num-per-class 100 --out docs/results.json --grid-dir docs
	$(PY) -m export build --tokenizer $(FAMILY)/tokenizer --generator $(FAMILY)/generator --family titok-fmnist \
		--out model_repository
