# sdcloud - two commands: `make up` (the main job, local provider) and `make test` (everything).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: setup up down test lint unit molecule e2e bench clean

## setup: the venv with pinned Python deps, and the Debian packages for local machines/test hosts
setup: $(VENV)/.installed
	@scripts/apt-deps.sh

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

## up: provision.yml on the embedded default (a local Debian 12 machine, CPU only)
up: setup
	ansible-playbook playbooks/provision.yml $(ARGS)

## down: teardown.yml (deletes the machine and everything it created)
down: setup
	ansible-playbook playbooks/teardown.yml $(ARGS)

## test: lint, unit/plugin tests, molecule scenarios, end to end - with per-stage timings
test: setup
	scripts/test.sh

lint: setup
	scripts/test.sh lint

unit: setup
	scripts/test.sh unit

molecule: setup
	scripts/test.sh molecule

e2e: setup
	scripts/test.sh e2e

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
