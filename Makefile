# Set-up is one command per job; each creates/refreshes .venv and installs jaxar first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2
# torch (CPU build) is only needed by the converters' .pt paths and the golden-parity tests that
# read .pth files; the CPU wheel is pinned so no multi-GB CUDA build is pulled in.
TORCH ?= torch==2.13.0

.PHONY: venv test demo bench lint clean mutants

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The suite runs on 8 fake CPU devices so every sharding path is exercised.
test: $(STAMP)
	$(PY) -m ruff check jaxar experiments tests bench
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -n $(JOBS) --dist loadfile -q tests

demo: $(STAMP)
	$(PY) experiments/demo.py --workdir runs/demo

bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(PY) -m ruff check jaxar experiments tests bench
	$(PY) -m ruff format --check jaxar experiments tests bench

clean:
	rm -rf runs .pytest_cache

# Plants single-line bugs in core modules and reports the share the tests catch (slow; not CI).
mutants: $(STAMP)
	$(PY) bench/mutants.py
