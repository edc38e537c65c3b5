# citus-backup-operator — the two set-up commands are `make test` and `make demo`.
# Every target is idempotent and re-uses caches: the venv is rebuilt only when
# pyproject.toml changes, Go-built binaries live in ~/.cache/citus-backup-operator.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv is (re)installed when pyproject.toml changes: the stamp names its hash.
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
# Debian packages the tests and the runner need (PostgreSQL 15 server + client tools).
APT_PACKAGES := postgresql-15 postgresql-client-15
PYTEST := $(PY) -m pytest
# The local environment tool lives in hack/ (not part of the shipped package).
LOCALENV := PYTHONPATH=hack $(PY) -m localenv

.PHONY: help deps venv components lint typecheck crds crds-check test test-unit \
        test-integration test-e2e demo demo-down demo-env bench clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

deps: venv components ## Install everything: Debian packages, the venv, source-built binaries
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

venv: $(VENV_STAMP) ## Create .venv with the package and dev tools

$(VENV_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

components: ## Build the pinned etcd, Kubernetes, MinIO and mc binaries (cached)
	hack/build-components.sh

lint: venv ## ruff + mypy
	$(VENV)/bin/ruff check operator hack tests bench
	$(VENV)/bin/ruff format --check operator hack tests bench
	$(VENV)/bin/mypy

crds: venv ## Regenerate crds/ from the models
	$(VENV)/bin/citus-backup crds --output crds
	$(VENV)/bin/citus-backup crds --output manifests/crds

test: deps lint ## Everything: install, lint, then the unit, integration and e2e tiers
	$(MAKE) --no-print-directory test-unit test-e2e test-integration

test-unit: venv ## Unit tier: pure logic, no services (seconds)
	$(PYTEST) tests/unit -q

test-integration: venv ## Integration tier: real PostgreSQL, MinIO, etcd, kube-apiserver, controller-manager
	$(PYTEST) tests/integration -q

# The e2e tier needs a real kubelet (issue #6); until it has tests, say so
# rather than letting pytest close the run on "no tests ran".
test-e2e: venv ## End-to-end tier
	@if ls tests/e2e/test_*.py >/dev/null 2>&1; then $(PYTEST) tests/e2e -q; \
	else echo "e2e tier: no tests yet (needs a real kubelet, issue #6)"; fi

demo: deps ## Bring up the local environment and run the seed's story end to end
	hack/demo.sh

demo-env: venv ## Print `export` lines for the demo environment (eval "$$(make -s demo-env)")
	$(LOCALENV) env

demo-down: venv ## Stop everything `make demo` started
	hack/demo.sh down

bench: deps ## Benchmarks (see README: Benchmarks)
	bench/run.sh

clean: demo-down ## Remove the venv and local state (not the binary cache)
	rm -rf $(VENV) .localenv .mypy_cache .ruff_cache .pytest_cache
