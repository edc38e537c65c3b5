#!/usr/bin/env bash
# `make demo`: bring up the local environment (PostgreSQL, MinIO, etcd,
# kube-apiserver, kube-controller-manager as loopback processes) and print how
# to reach it. Idempotent: a second run re-uses what is already up.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=hack
.venv/bin/python -m localenv up
