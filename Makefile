# cxr: the two set-up commands are `make up` (install and start everything) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the product and its tests use (pinned by the Debian release).
APT_PACKAGES := dcmtk dicom3tools fonts-dejavu-core redis-server orthanc orthanc-python orthanc-dicomweb orthanc-gdcm \
                nginx-light chromium docker-compose

.PHONY: up down status test venv viewer system-deps weights-check

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

weights-check: venv
	$(PY) -c "from cxr_models.weights import load_manifest, load_state_dict, MODEL_NAMES; m = load_manifest(); [load_state_dict(n, manifest=m) for n in MODEL_NAMES]; print('demo weights', m['version'], 'verified:', ', '.join(MODEL_NAMES))"

# OHIF (npm @ohif/app dist) and puppeteer-core, exact versions from orthanc/viewer/package-lock.json.
viewer: orthanc/viewer/node_modules/.installed

orthanc/viewer/node_modules/.installed: orthanc/viewer/package.json orthanc/viewer/package-lock.json
	npm ci --prefix orthanc/viewer --no-audit --no-fund --loglevel=error
	touch $@

# Orthanc (+ plugin), the API, a worker and the viewer in the background; one demo study; the URLs.
up: system-deps venv weights-check viewer
	$(PYTHON) orthanc/stack.py up

down:
	$(PYTHON) orthanc/stack.py down

status:
	$(PYTHON) orthanc/stack.py status

test: system-deps venv viewer
	$(PY) -m pytest -q
