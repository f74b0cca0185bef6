# cripy: `make demo` runs a pod end to end with the default configuration; `make test` runs the test suite.
# Both install what they need (Debian packages with apt-get, Python packages into .venv).

PYTEST_ARGS ?=
# make conformance CONFORMANCE_ARGS="--focus 'Image Volume'"; the kit: CRI_CONFORMANCE_KIT (CRITEST, CRICTL)
CONFORMANCE_ARGS ?=

.PHONY: deps test typecheck unit integration conformance demo bench clean

deps:
	./scripts/install-deps.sh

# The type check, the suite, then the CRI validation suite (critest) compared with tests/conformance/expected.tsv.
test: deps
	.venv/bin/python -m mypy
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests
	.venv/bin/python -m tests.conformance.run $(CONFORMANCE_ARGS)

typecheck: deps
	.venv/bin/python -m mypy

unit: deps
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests/unit

integration: deps
	.venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests/integration

conformance: deps
	.venv/bin/python -m tests.conformance.run $(CONFORMANCE_ARGS)

demo: deps
	.venv/bin/python scripts/demo.py

# The benchmark suite against containerd (Debian's package, which `deps` installs).
BENCH_ARGS ?= --output docs/benchmarks.md

bench: deps
	.venv/bin/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf .venv *.egg-info
