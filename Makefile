# The README's two commands: `make demo` and `make test`. Both set up everything
# they need on a fresh Debian machine: a virtual environment from the lock file,
# and for the tests the Debian packages of the real peers (Orthanc, dcmtk).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := orthanc orthanc-dicomweb dcmtk chromium postgresql

.PHONY: setup system-deps demo test lint typecheck bench lock

$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(STAMP)

# Orthanc is the hospital's PACS and dcmtk the modality in the end-to-end tests;
# chromium (headless, driven by Playwright) the browser of the page tests;
# postgresql the hub's national-scale database (a throwaway cluster per test run).
# Any package of the list that is not installed is installed.
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP)
	$(VENV)/bin/aifi demo --once

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench $(wildcard training)
	$(VENV)/bin/ruff format --check src tests bench $(wildcard training)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: system-deps $(STAMP) lint typecheck
	$(VENV)/bin/pytest

bench: system-deps $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/round_trip.py

# Regenerate requirements.lock after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra test -o requirements.lock
