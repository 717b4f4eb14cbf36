# snapkit: the two commands a newcomer needs are `make demo` and `make test`.
# Everything they depend on (apt packages, the venv, the guest image) is installed on the way,
# idempotently, so both work on a fresh machine and cost nothing when already done.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The venv's interpreter: Debian's own (3.11.2, the oldest Python the project claims and the one
# the guest runs), not whichever python3 comes first on PATH (pyenv's, say). PYTHON=... overrides.
PYTHON ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,python3)
# uidmap: a normal user's image build (mmdebstrap's unshare mode); python3-venv: Debian's venv.
# lz4/zstd: a kernel layer extracts the PVH vmlinux (6.1 cloud: lz4, 6.12: zstd) for faster boots.
# systemd: its systemd-analyze verifies the units snapkit ships (tests/unit/test_units.py).
HOST_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap squashfs-tools cpio busybox-static lz4 \
                 zstd util-linux e2fsprogs xfsprogs btrfs-progs uidmap python3-venv systemd
PYTEST_WORKERS ?= 2
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup apt venv image test test-slow test-fast demo bench lint clean

setup: apt venv

apt:
	@missing=$$(for p in $(HOST_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing host packages:" $$missing; \
	    $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# A venv made by another interpreter than $(PYTHON) is named, with the command that remakes it,
# rather than removed on the spot: a venv may be in use by a test run in another shell, and
# deleting it under that run would break it. A fresh checkout (CI's) always gets $(PYTHON).
PYTHON_ID := import sys; print(sys.base_prefix, sys.version.split()[0])
venv:
	@if [ -x $(PY) ] && [ "$$($(PY) -c '$(PYTHON_ID)')" != "$$($(PYTHON) -c '$(PYTHON_ID)')" ]; then \
	    echo "warning: $(VENV) was made by Python $$($(PY) -c '$(PYTHON_ID)'), not $(PYTHON):" \
	         "run 'rm -rf $(VENV) && make venv' to test on the Python the project claims" >&2; \
	fi
	@$(MAKE) --no-print-directory $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[host,dev]'
	touch $@

image: setup
	$(BIN)/vmtest image build

# The suite CI runs: unit, property and VM tests, two workers; the long acceptance runs
# (marked slow: 200 differential histories, the planted-bug hunt, every hostile input) are
# left to `make test-slow`.
test: image
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m "not slow" tests

test-slow: image
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m slow tests

# The quick loop while editing: no VM, nothing slow.
test-fast: venv
	$(BIN)/pytest -q -m "not vm and not slow" tests

demo: image
	$(BIN)/vmtest run --matrix quick --report report

bench: image
	$(BIN)/vmtest bench boot --runs 5
	$(BIN)/snapkit bench cow

lint: venv
	$(BIN)/ruff check snapkit vmtests tests
	$(BIN)/ruff format --check snapkit vmtests tests
	$(BIN)/mypy --strict snapkit vmtests
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info report results
