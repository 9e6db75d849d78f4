# Two commands work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean services

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

# Servers the suite starts for itself (on free loopback ports): PostgreSQL
# for accord.work.  Installed from Debian only when missing; the cluster the
# package may create and start is not used.
services:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		 apt-get install -y -q --no-install-recommends postgresql)

test: lint services
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) benchmarks/run.py
	$(PY) benchmarks/pool.py
	$(PY) benchmarks/transport.py
	$(PY) benchmarks/work.py

clean:
	rm -rf $(VENV) build src/*.egg-info src/accord/backends/shm/*.so
