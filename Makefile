# Two commands set everything up: `make run` serves the app (runtime dependencies only), `make test`
# runs the everyday tests (adding the dev group)
# (`make test-slow` the slow tier: load, fuzz, browser, kill/restart faults; `make test-all` both).
# The environment lives in .venv/, built by uv from uv.lock; uv itself is installed from the
# package index into .tools/ (nothing global).
PYTHON ?= python3.11
UV_VERSION := 0.13.8
UV := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never

.PHONY: run demo test test-slow test-all lint coverage schema bench bench-all clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Serving needs the runtime dependencies only (`make run`: about 45 packages); the tests, linters
# and benchmarks add the dev group (`make test`). --inexact: `make run` after `make test` keeps it.
.venv/.runtime: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --no-dev --inexact --python $(PYTHON)
	touch $@

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@ .venv/.runtime

run: .venv/.runtime
	.venv/bin/datagraph serve $(ARGS)

# The live example (examples/ratings/): a server on its plugins folder with a data directory of its own
# (examples/ratings/var/), a rating appended every second, a 10 s schedule, checks and a saved frame set
# through the API; it prints the page's address. Ctrl-C stops it all.
demo: .venv/.runtime
	.venv/bin/python examples/ratings/demo.py

# The everyday tier on two pytest-xdist workers, a test module each at a time (module-scoped apps stay
# shared; each module has its own Redis database, ports and data directories). XDIST=0: in one process.
XDIST ?= 2
# -p no:schemathesis: its pytest plugin (unused: tests/test_schemathesis.py drives it with hypothesis) imports
# schemathesis and hypothesis into every pytest process at start, some seconds of CPU each.
test: lint
	.venv/bin/python -m pytest -p no:schemathesis -m "not slow" -n $(XDIST) --dist loadfile $(PYTEST_ARGS)

# pytest exits 5 when it selects no test (say, PYTEST_ARGS naming a file with no slow test): not a failure.
test-slow: .venv/.synced
	.venv/bin/python -m pytest -p no:schemathesis -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-all: test test-slow

lint: .venv/.synced
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache

# Line coverage of the source packages over every test (both tiers), for notes that restructure the suite.
coverage: .venv/.synced
	.venv/bin/python -m pytest -p no:cacheprovider -q $(foreach p,server gql resolvers connectors engine storage datagraph,--cov=$(p)) \
		--cov-report=term --cov-report=json:coverage.json $(PYTEST_ARGS)

schema: .venv/.synced
	.venv/bin/datagraph schema > schema.graphql

# `make bench`: the user journey beside the seed design's Flask + pandas server and the floor
# (bench/journey.py; under 10 minutes on 2 cores), then listing 100 of 100,000 datasets against 100 of 100
# (bench/listing.py, about a minute) and a cached answer against a bare Starlette app under wrk
# (bench/wire.py, about a minute). `make bench-all` adds the focused benchmarks
# (bench/sources.py needs the PostgreSQL on 127.0.0.1:5432; bench/history.py diffs two versions of 1M rows and
# times `at(version:)`; bench/timeseries.py times a 7-day rolling mean per user, a daily resample and an
# as-of join against 100,000 events beside Polars by hand and pandas).
bench: .venv/.synced
	.venv/bin/python bench/journey.py
	.venv/bin/python bench/wire.py
	.venv/bin/python bench/listing.py

bench-all: bench
	.venv/bin/python bench/describe.py
	.venv/bin/python bench/engine.py
	.venv/bin/python bench/sources.py
	.venv/bin/python bench/events.py
	.venv/bin/python bench/history.py
	.venv/bin/python bench/timeseries.py

clean:
	rm -rf .venv .tools
