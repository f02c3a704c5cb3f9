# `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
EXTRAS := dev,precomputed,dask,torch,lightning,eval,view,remote

.PHONY: demo test lint bench torture clean chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/emdata demo

# Headless browser tests (report, viewer) use Debian's chromium + chromium-driver; installed once (root, or sudo).
SUDO = $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo)
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update && \
	   $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/chunk_shapes.py

torture: $(STAMP)
	$(BIN)/python benchmarks/torture.py

clean:
	rm -rf $(VENV) .emdata-demo .pytest_cache
