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
# Debian packages the tests and the runner need: PostgreSQL 15 server + client
# tools; for the e2e tier's real node, containerd, runc, the CNI plugins,
# iptables and conntrack (kube-proxy), and docker.io + debootstrap to build
# the images locally (no registry is reachable).
APT_PACKAGES := postgresql-15 postgresql-client-15 containerd runc containernetworking-plugins \
                iptables conntrack docker.io debootstrap
PYTEST := $(PY) -m pytest
# The local environment tool lives in hack/ (not part of the shipped package).
LOCALENV := PYTHONPATH=hack $(PY) -m localenv

.PHONY: help deps venv components lint typecheck crds crds-check test test-unit \
        test-integration test-citus test-e2e e2e-kind demo demo-down demo-env demo-check-clean bench clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

deps: venv components ## Install everything: Debian packages, the venv, source-built binaries
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

venv: $(VENV_STAMP) ## Create .venv with the package and dev tools

$(VENV_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

components: ## Build the pinned etcd, Kubernetes (control plane and node), MinIO, mc and promtool binaries (cached)
	hack/build-components.sh etcd minio mc kubernetes kubernetes-node promtool

lint: venv ## ruff + mypy
	$(VENV)/bin/ruff check operator hack tests bench
	$(VENV)/bin/ruff format --check operator hack tests bench
	$(VENV)/bin/mypy

crds: venv ## Regenerate crds/ from the models
	$(VENV)/bin/citus-backup crds --output crds
	$(VENV)/bin/citus-backup crds --output manifests/crds

test: deps lint ## Everything: install, lint, then the unit, e2e, integration and Citus tiers
	$(MAKE) --no-print-directory test-unit test-e2e test-integration test-citus

test-unit: venv ## Unit tier: pure logic, no services (seconds)
	$(PYTEST) tests/unit -q

test-integration: venv ## Integration tier: real PostgreSQL, MinIO, etcd, kube-apiserver, controller-manager
	$(PYTEST) tests/integration -q

# A real Citus cluster (coordinator + 2 workers on loopback) from the
# Citus-enabled PostgreSQL in $$CITUS_PG_BINDIR (README: Citus); without it the
# tier is skipped with one line naming the variable.
test-citus: venv ## Citus tier: backup/restore on a real Citus cluster (needs CITUS_PG_BINDIR)
	@if [ -z "$${CITUS_PG_BINDIR:-}" ]; then \
	  echo "test-citus: skipped: CITUS_PG_BINDIR is not set (a PostgreSQL with the Citus extension; README: Citus)"; \
	else $(PYTEST) tests/citus -q; fi

# A real node on this machine (kubelet, containerd, kube-proxy); the images are
# built and loaded on first use (tests/e2e/providers.py explains the providers).
test-e2e: venv ## End-to-end tier: the project's image on a real local node
	$(PYTEST) tests/e2e -q

# The same suite on a kind cluster (tests/e2e/kind_provider.py): not on CI,
# which has no registry. KIND_KEEP=1 keeps the cluster, KIND_RECREATE=1 starts
# a new one. The first test also waits for the cluster, the image build and the
# image pulls, hence a longer per-test timeout than pyproject's 600 s.
e2e-kind: venv ## The e2e suite on kind (needs Docker, kind and registry access)
	E2E_PROVIDER=kind $(PYTEST) tests/e2e -q --timeout=1800

demo: deps ## Bring up the local environment and run the seed's story end to end
	hack/demo.sh

demo-env: venv ## Print `export` lines for the demo environment (eval "$$(make -s demo-env)")
	$(LOCALENV) env

demo-down: venv ## Stop everything `make demo` started
	hack/demo.sh down

demo-check-clean: venv ## After demo-down: fail if anything the demo started is left on the machine
	$(LOCALENV) check-clean

bench: deps ## Benchmarks (see README: Benchmarks)
	bench/run.sh

clean: demo-down ## Remove the venv and local state (not the binary cache)
	rm -rf $(VENV) .localenv .mypy_cache .ruff_cache .pytest_cache
