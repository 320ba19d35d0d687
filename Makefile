# One command surface for developers and CI (.ci/run calls these same targets).
PYTHON ?= python3

.PHONY: build dev test rust-test lint bench bench-quick conformance clean

build:            ## install rmp (release build) with the test extras
	$(PYTHON) -m pip install '.[test]'

dev:              ## editable install for development (rebuild after Rust changes)
	$(PYTHON) -m pip install -e '.[dev]'

test:             ## the README's test command (after build)
	$(PYTHON) -m pytest

rust-test:        ## unit tests of the pure Rust core
	cargo test

lint:             ## ruff, rustfmt, clippy, stubtest
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(PYTHON) -m mypy.stubtest rmp._core

bench:            ## the side-by-side benchmark, full repetitions
	$(PYTHON) benches/run.py

bench-quick:      ## the whole matrix in a few minutes
	$(PYTHON) benches/run.py --quick

conformance:      ## CPython's own multiprocessing tests, stdlib vs rmp, per start method
	for m in fork spawn forkserver; do $(PYTHON) tests/cpython/run.py --compare --method $$m --jobs 2 || exit 1; done

clean:
	cargo clean
	rm -rf dist build .pytest_cache .ruff_cache .mypy_cache
