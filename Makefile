# cxr: the two set-up commands are `make up` (install and start everything) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the product and its tests use (pinned by the Debian release).
APT_PACKAGES := dcmtk dicom3tools fonts-dejavu-core redis-server orthanc orthanc-python orthanc-dicomweb orthanc-gdcm

.PHONY: up down test venv system-deps weights-check

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

weights-check: venv
	$(PY) -c "from cxr_models.weights import load_manifest, load_state_dict, MODEL_NAMES; m = load_manifest(); [load_state_dict(n, manifest=m) for n in MODEL_NAMES]; print('demo weights', m['version'], 'verified:', ', '.join(MODEL_NAMES))"

DEMO_DIR := var/demo

up: system-deps venv weights-check
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(VENV)/bin/cxr phantom generate --out $(DEMO_DIR)/phantom --n-studies 1 --seed 7 --size-range 1024 1536 --other-fraction 0 --no-progress
	$(VENV)/bin/cxr analyze $(DEMO_DIR)/phantom/train --out $(DEMO_DIR)/results
	@echo "cxr is installed in $(VENV); a demo PhantomCXR study was analysed into $(DEMO_DIR)/results."
	@echo "The service, Orthanc and the viewer are not part of this release yet (see README: Status)."

down:
	@echo "nothing running yet"

test: system-deps venv
	$(PY) -m pytest -q
