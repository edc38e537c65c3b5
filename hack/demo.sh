#!/usr/bin/env bash
# `make demo` / `make demo-down`: the seed's story on the local environment
# (see hack/demo.py). Idempotent: a second run re-uses what is already up.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=hack:tests:operator
exec .venv/bin/python hack/demo.py "${1:-up}"
