# bpfnet: every target does its own set-up (Debian packages, kernel headers
# for bcc, bpffs, .venv); a second run skips what is done.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench bench-quick clean

setup:
	@bash scripts/setup

demo: setup
	$(VENV)/bin/bpfnet demo

test: setup
	$(VENV)/bin/ruff check controller tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q tests

lint: setup
	$(VENV)/bin/ruff check controller tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m bench

bench-quick: setup
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
