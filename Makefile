# Two commands for a newcomer: `make demo` and `make test`. Both build .venv when it is missing, with the exact
# versions in constraints.txt (pyproject.toml holds the ranges).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-state-mysql lint constraints bench bench-latency dist dist-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mcnotify demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Without MariaDB, sshd or whole pipelines over SFTP (the `services` marker, set in tests/conftest.py).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not services"

# The end-to-end suite once more with the state on the private MariaDB ([state] url) instead of the file: every
# test module that runs mcnotify against the services (the `env` fixture); tests of the SQLite file itself skip.
# (test_mysql_*.py run on MariaDB whatever the setting: not twice.)
STATE_E2E := $(filter-out tests/test_mysql_%,$(shell grep -l 'env: Env' tests/test_*.py)) tests/test_flow.py \
	tests/test_imports.py
test-state-mysql: $(STAMP)
	MCNOTIFY_TEST_STATE=mysql $(BIN)/python -m pytest -q $(STATE_E2E)

lint: $(STAMP)
	$(BIN)/ruff check mcnotify tests scripts $(wildcard bench)
	$(BIN)/ruff format --check mcnotify tests scripts $(wildcard bench)
	$(BIN)/mypy mcnotify tests scripts/build_dist.py scripts/freeze_constraints.py scripts/container_liveness.py

# After upgrading a dependency in .venv (and `make test` passing): pin what the venv now holds.
constraints: $(STAMP)
	$(BIN)/python scripts/freeze_constraints.py > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

bench: $(STAMP)
	test -f bench/run.py && $(BIN)/python bench/run.py

# Event -> accepted with run-all --follow: 10 events/s for 60 s against a 15 s MC import, both email APIs.
bench-latency: $(STAMP)
	$(BIN)/python bench/latency.py --burst 100000 --quiet-seconds 60

# One executable file: the package and its dependencies in a zipapp (shiv), pinned to the Python that built it
# (its compiled dependencies load nowhere else): the shebang names pythonX.Y, and any other Python is refused
# with one line (exit 78). It unpacks itself once into $$SHIV_ROOT (the systemd units set it to the unit's
# CacheDirectory); unset, into ~/.shiv, else $$XDG_CACHE_HOME/mcnotify, $$CACHE_DIRECTORY, $$RUNTIME_DIRECTORY
# or a private /tmp/mcnotify-shiv-UID. DIST_SHEBANG='/usr/bin/python3.11' pins an absolute path instead.
DIST_SHEBANG ?=
dist: $(STAMP)
	rm -rf dist build
	mkdir -p dist
	$(BIN)/python scripts/build_dist.py dist/mcnotify $(if $(DIST_SHEBANG),--shebang '$(DIST_SHEBANG)')
	@ls -l dist/mcnotify

# CI: the built file runs, refuses another Python, unpacks without a writable home, previews a real pipeline.
dist-check: dist
	sh scripts/dist_check.sh dist/mcnotify $(BIN)/python

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
