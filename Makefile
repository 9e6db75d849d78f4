# Two commands work on a fresh machine: `make demo` and `make test` (the
# current python3).  `make test-all` runs the suite on every supported Python,
# each in its own .venv-3.X, as CI does (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHONS ?= 3.11 3.12 3.13

.PHONY: demo test test-all suite lint bench clean services redis-server

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/basedpyright --pythonpath $(PY)

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

# The suite alone, in $(VENV) built with $(PYTHON).
suite: $(STAMP)
	$(PY) -m pytest

# Lint once (with the first of PYTHONS), then the suite on each of PYTHONS;
# every Python runs even when one fails, and the summary says which failed
# and how long each took.  A missing interpreter fails, naming it.
test-all: services redis-server
	@set -u; failed=""; summary=""; first=1; \
	for v in $(PYTHONS); do \
		py=$$(.ci/find-python $$v) || exit 1; \
		if [ $$first = 1 ]; then \
			$(MAKE) --no-print-directory VENV=.venv-$$v PYTHON=$$py lint || exit 1; first=0; \
		fi; \
		echo "== suite on Python $$v ($$py)"; start=$$(date +%s); \
		if $(MAKE) --no-print-directory VENV=.venv-$$v PYTHON=$$py suite; then r=passed; \
		else r=FAILED; failed="$$failed $$v"; fi; \
		summary="$$summary\n  Python $$v: $$r in $$(( $$(date +%s) - start )) s"; \
	done; \
	printf "== suite per Python:$$summary\n"; \
	if [ -n "$$failed" ]; then echo "== failed on Python$$failed"; exit 1; fi

bench: $(STAMP) redis-server
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) benchmarks/run.py
	$(PY) benchmarks/pool.py
	$(PY) benchmarks/transport.py
	$(PY) benchmarks/work.py
	$(PY) benchmarks/redis.py
	$(PY) benchmarks/bigdata.py

# Built C extensions too, wherever they are under src/accord: one left from
# before a module moved makes `import accord` fail after a merge.
clean:
	rm -rf $(VENV) .venv-3.* build src/*.egg-info
	find src/accord -name '*.so' -delete
	find . -path ./.git -prune -o -type d -name build -prune -exec rm -rf {} +
