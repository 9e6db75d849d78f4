# Two commands work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean services redis-server

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

# The redis backend's tests start their own redis-server (Debian package;
# openssl makes the certificate of the TLS test).
redis-server:
	@command -v redis-server >/dev/null && command -v openssl >/dev/null || { \
		echo "installing redis-server and openssl (the redis backend's tests run a real server)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends redis-server openssl >/dev/null; }

test: lint services redis-server
	$(PY) -m pytest

bench: $(STAMP) redis-server
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) benchmarks/run.py
	$(PY) benchmarks/pool.py
	$(PY) benchmarks/transport.py
	$(PY) benchmarks/work.py
	$(PY) benchmarks/redis.py
	$(PY) benchmarks/bigdata.py

clean:
	rm -rf $(VENV) build src/*.egg-info src/accord/backends/shm/*.so
