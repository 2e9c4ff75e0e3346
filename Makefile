# The two commands of the README: `make serve` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: serve test lint setup-serve setup-dev data clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# stamp files: re-install only when pyproject.toml changes
$(VENV)/.serve-installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[cpu]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[cpu,train,dev]'
	touch $@ $(VENV)/.serve-installed

setup-serve: $(VENV)/.serve-installed
setup-dev: $(VENV)/.dev-installed

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package
data: $(FMNIST)
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; \
	fi

serve: setup-serve
	@test -f service/__main__.py || { echo "make serve: the gateway is not built yet (the gateway issue adds it)" >&2; exit 1; }
	$(PY) -m service

lint: setup-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup-dev data lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
