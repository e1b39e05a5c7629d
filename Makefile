# Two commands on a fresh Debian machine, as root:
#   make demo   builds the venv, installs system tools, runs the built-in lab (`meshd lab`)
#   make test   the whole test suite (unit, kernel integration, end-to-end, ipip in user-mode-linux)
# `make test-fast` runs only what needs neither root nor namespaces nor slow end-to-end runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BACKEND ?= vxlan
HOSTS ?= 3

.PHONY: demo test test-fast lint format docs deps venv clean deb deb-lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

deps:
	bash .ci/install-system-deps.sh

demo: venv deps
	$(BIN)/meshd lab --hosts $(HOSTS) --backend $(BACKEND)

# Coverage of the in-process code is measured and printed (daemons started as subprocesses by the
# end-to-end tests are not traced); there is no threshold to game.
test: venv deps
	$(BIN)/pytest -ra --cov=meshd --cov-report=term

test-fast: venv
	$(BIN)/pytest -ra -m 'not slow and not root'

# lint-imports: the layer contract in pyproject.toml ([tool.importlinter]; docs/architecture.md).
lint: venv
	$(BIN)/ruff format --check meshd tests benchmarks
	$(BIN)/ruff check meshd tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff format meshd tests benchmarks
	$(BIN)/ruff check --fix meshd tests benchmarks

# The documentation site, warnings are errors (a broken link fails CI).
docs: venv
	$(BIN)/mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

deb:
	bash packaging/build-deb.sh

deb-lint:
	LINTIAN=1 bash packaging/build-deb.sh

# Every benchmark (daemons beside memberlist at N = 10, 30 and 100, netlink beside ip -batch, the
# simulator beside Serf's model), then docs/performance.md with its plots. BENCH_ARGS e.g.
# "--runs 1 --skip sim".
bench: venv
	$(BIN)/python benchmarks/report.py --run $(BENCH_ARGS)
