# The two commands a newcomer types: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint docs fuzz mutate

# pytest-xdist processes for `make test`: one per core (`auto`). Every test already has its own
# database, queue names, ports and files, so they share nothing but the servers; two processes
# on 2 cores take the tests from about 25 minutes to 16-18 (docs/internals/tests.md). A process
# that runs out of tests takes some of another's (worksteal), and the slowest start first
# (tests/conftest.py). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto

install: $(VENV)/.installed

# Reinstalls when pyproject.toml changes; the editable install keeps code changes live.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[worker,dev]'
	touch $@

run: install
	$(BIN)/python -m dev.launcher

# ruff, then mypy over every package (shared/ and the engine under strict's rules; pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The manual (docs/, mkdocs.yml) into site/; --strict: a broken link, a page left out of the nav or a
# setting without a description fails. `make test` builds it too (tests/test_docs.py).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# PostgreSQL is started when it is installed but stopped (Debian's pg_ctlcluster); without it the
# PostgreSQL-parametrized tests skip, saying so. Redis is started by the tests when none answers.
# Debian's chromium, which tests/e2e/test_web.py drives, is installed with apt where missing
# (Playwright never downloads a browser here); without it that test skips, saying so.
test: install lint
	@pg_isready -q -h 127.0.0.1 2>/dev/null || ! command -v pg_ctlcluster >/dev/null || \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n 1) main start || \
		echo "note: could not start PostgreSQL; its tests will be skipped"
	@command -v chromium >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) || \
		echo "note: could not install chromium; tests/e2e/test_web.py will be skipped"
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The OpenAPI fuzz on new random cases (make test runs one fixed draw), 500 a route by default;
# it prints its seed: `make fuzz FUZZ_SEED=n` replays that draw, FUZZ_EXAMPLES sets the count.
fuzz: install
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; echo "FUZZ_SEED=$$seed"; \
		FUZZ_SEED=$$seed FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} \
		$(BIN)/python -m pytest tests/api/test_openapi.py -k fuzz $(PYTEST_ARGS)

# Mutation testing (cosmic-ray) of the code where a silent bug costs most, each target against
# its own fast tests (mutation/targets.toml); slow, so not part of `make test`.
# `make mutate TARGETS="webhook-signing retention"` runs some of them; MUTATE_ARGS="--jobs 2"
# tests two mutants at once.
mutate: install
	$(BIN)/python mutation/run.py $(MUTATE_ARGS) $(TARGETS)
