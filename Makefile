# renkei — the two commands a new machine needs are `make demo` and `make test`.
# Both work as root on a fresh Debian bookworm: they install what they need.

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages: the venv and pyscard's build (libpcsclite-dev, swig).
APT_PACKAGES := python3 python3-venv python3-dev build-essential libpcsclite-dev swig
# Extra Debian packages the integration tests start as real parts.
APT_TEST_PACKAGES := chrony dnsmasq-base systemd usbguard dosfstools e2fsprogs udev tmux nftables iproute2 sudo util-linux openssh-server openssh-client pcscd vsmartcard-vpcd chromium chromium-driver fonts-noto-cjk
# The appliance image (make image): mmdebstrap, SquashFS and zstd, the archive keyring
# mmdebstrap checks the mirror with, Debian's pip wheel (run inside the image, never
# installed there), openssl (a second, independent check of the signature in the tests).
APT_IMAGE_PACKAGES := mmdebstrap squashfs-tools zstd debian-archive-keyring python3-pip-whl openssl git
APT_TEST_PACKAGES += $(APT_IMAGE_PACKAGES) systemd-container lynis
# The benchmark smoke test runs the nginx baseline too.
APT_TEST_PACKAGES += nginx
# The server suites run again on a throw-away PostgreSQL cluster (initdb in a temp dir).
APT_TEST_PACKAGES += postgresql
# The benchmarks' baselines (nginx serves the same batch file statically).
APT_BENCH_PACKAGES := nginx

.PHONY: help deps venv demo test lint unit bench image release clean juki-table municipality-master

help:
	@echo "make demo   - set up and run the main job on its embedded default"
	@echo "make test   - set up, lint and run the whole test suite (what CI runs)"
	@echo "make bench  - run the benchmarks and write bench/report.md"

deps:
	@missing=$$(for p in $(APT_PACKAGES) $(APT_TEST_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: setup.cfg setup.py pyproject.toml common/juki/_scan.c | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) tools/demo.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: venv
	$(VENV)/bin/pytest -q

# The whole suite on SQLite (the embedded default), then the server and end-to-end suites
# again on PostgreSQL: each test worker starts a throw-away cluster (tests/pgcluster.py).
test: venv lint
	$(VENV)/bin/pytest -q -n 2
	$(VENV)/bin/pytest -q -n 2 --database=postgresql tests/server tests/e2e

bench: venv
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(APT_BENCH_PACKAGES)"
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(VENV)/bin/python -m bench

# The appliance image: dist/image (docs/image.md).  Signed with RENKEI_IMAGE_KEY, else
# with a development key made on first use (~/.config/renkei/image-dev-key.pem).
image: venv
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(APT_IMAGE_PACKAGES)"
	$(PY) -m appliance.image build
	$(PY) -m appliance.image verify dist/image

# An agent release for the terminals' updates: dist/release/renkei-agent-<version>.tar.gz
# (docs/updates.md: then `renkei-server publish-update` on the ministry server).
release: venv
	@$(MAKE) --no-print-directory deps APT_PACKAGES="python3-pip-whl"
	$(PY) -m appliance.image release

# Regenerate committed data tables from their public sources (needs npm).
juki-table: venv
	$(PY) tools/build_juki_table.py

municipality-master: venv
	$(PY) tools/build_municipality_master.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
