# bpfnet: every target does its own set-up (Debian packages, kernel headers
# for bcc, bpffs, .venv); a second run skips what is done.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-cluster test lint bench bench-quick vm-test vm-bench clean

setup:
	@bash scripts/setup

demo: setup
	$(VENV)/bin/bpfnet demo

demo-cluster: setup
	$(VENV)/bin/bpfnet demo --cluster

# The daemon datapath tests run twice: as the kernel allows (tcx here) and with the
# programs forced onto clsact + cls_bpf (the fallback of kernels before 6.6).
test: setup
	$(VENV)/bin/ruff check controller tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q tests
	BPFNET_TEST_ATTACH=tc $(VENV)/bin/pytest -q tests/test_daemon_datapath.py

lint: setup
	$(VENV)/bin/ruff check controller tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m bench

bench-quick: setup
	$(PY) -m bench --quick

# The suite on another kernel (a Debian kernel package) in a qemu VM; opt-in,
# not part of `make test`. See vagrant/run-kernel --help.
#   make vm-test KERNEL=6.1 [ACCEL=tcg] [PYTEST_ARGS="-q tests/bpf"]
KERNEL ?= 6.1
ACCEL ?= kvm
PYTEST_ARGS ?= -q tests

vm-test: setup
	ACCEL=$(ACCEL) bash vagrant/run-kernel $(KERNEL) -- $(PYTEST_ARGS)

# netkit vs veth endpoints vs a direct veth pair (bench/netkit.py) on a netkit
# kernel in the VM; the JSON lands in bench/netkit_vm.json.
#   make vm-bench KERNEL=6.12 ACCEL=tcg
vm-bench: setup
	ACCEL=$(ACCEL) BENCH_OUT=bench/netkit_vm.json bash vagrant/run-kernel $(KERNEL) -- --bench 5 4 3 4

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
