# `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
EXTRAS := dev,precomputed,dask,torch,lightning,view

.PHONY: demo test lint bench torture clean chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/emdata demo

# Headless browser tests (report, viewer) use Debian's chromium + chromium-driver; installed once, as root.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($$( [ "$$(id -u)" -ne 0 ] && command -v sudo) apt-get update && \
	   $$( [ "$$(id -u)" -ne 0 ] && command -v sudo) apt-get install -y chromium chromium-driver)

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
