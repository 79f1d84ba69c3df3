# pacsnode — the two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the test suite talks to as real peers (and chromium for the console's browser test)
APT_PACKAGES := orthanc orthanc-python orthanc-dicomweb dcmtk dicom3tools pixelmed-apps \
	default-jre-headless chromium chromium-driver poppler-utils docker-compose \
	fonts-dejavu-core fonts-droid-fallback rabbitmq-server
PYTEST_ARGS ?=
# `make test` leaves out the tests marked slow (60 % of the suite's time here: peers restarted,
# processes killed, browsers, whole bundles) so the loop stays short; `make test SLOW=1` runs the
# full set, as .ci/run does.
SLOW ?=
PYTEST_MARKS := $(if $(SLOW),,-m "not slow")

.PHONY: run test venv system-deps broker lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "apt-get install:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	if ! command -v npm >/dev/null 2>&1; then \
		echo "apt-get install: npm (the OHIF viewer test fetches OHIF's prebuilt app with it)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm \
			|| echo "warning: npm not installed; the OHIF viewer test will skip"; \
	fi

run: venv
	$(BIN)/pacsnode db upgrade
	$(BIN)/pacsnode serve

# RabbitMQ for jobs.engine: celery (the machine's own broker on 5672; started only when none
# answers there). The distributed test starts its own private broker beside it.
broker:
	@if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then \
		echo "starting rabbitmq-server"; \
		(service rabbitmq-server start || rabbitmq-server -detached) >/dev/null 2>&1 \
			|| echo "warning: could not start RabbitMQ; the celery tests will skip"; \
	fi

test: system-deps venv broker
	$(BIN)/pytest $(PYTEST_MARKS) $(PYTEST_ARGS)

LINTED := core models pipelines node web app tests bench orthanc

lint: venv
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/lint-imports
	$(BIN)/mypy core models pipelines node web app

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
