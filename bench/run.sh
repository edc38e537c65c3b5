#!/usr/bin/env bash
# The benchmark of issue #3 (`make bench`): the runner against the seed's
# method (pg_dump > file; aws s3 cp; rm) and the limit (pg_dump > /dev/null).
#
#   bench/run.sh                 # both data sets below, one after the other (~12 min)
#   bench/run.sh --scale 1x      # 3 databases of pgbench -s 50 (~2.4 GB), 3 runs each
#   bench/run.sh --scale 2x      # twice as large (memory must not follow size)
#   bench/run.sh --scale 1 --repeat 1   # seconds: pgbench -s 1, for development
#   bench/run.sh --help          # all options
#
# Idempotent: installs aws-cli (pinned) into bench/.venv-awscli once, keeps the
# generated PostgreSQL data set between runs (see bench/servers.py), and starts
# and stops its own PostgreSQL and MinIO. Results: bench/results/*.json + *.md.
set -euo pipefail

AWSCLI_VERSION=1.46.3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="$repo/.venv/bin/python"
awsvenv="$here/.venv-awscli"
stamp="$awsvenv/.installed-awscli-$AWSCLI_VERSION"

if [ ! -x "$python" ]; then
  echo "bench: $python missing; run 'make venv' (or 'make bench', which does)" >&2
  exit 1
fi
if [ ! -f "$stamp" ]; then
  echo "bench: installing awscli==$AWSCLI_VERSION into $awsvenv" >&2
  rm -rf "$awsvenv"
  "$python" -m venv "$awsvenv"
  "$awsvenv/bin/python" -m pip install -q --disable-pip-version-check "awscli==$AWSCLI_VERSION"
  touch "$stamp"
fi
for tool in pg_dump pg_dumpall pg_restore pgbench initdb; do
  if [ ! -x "${PG_BINDIR:-/usr/lib/postgresql/15/bin}/$tool" ]; then
    echo "bench: $tool not found in ${PG_BINDIR:-/usr/lib/postgresql/15/bin} (make deps)" >&2
    exit 1
  fi
done

export PYTHONPATH="$repo/hack:$here:$repo/operator${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
if [ "$#" -eq 0 ]; then
  "$python" "$here/bench.py" --scale 1x
  exec "$python" "$here/bench.py" --scale 2x
fi
exec "$python" "$here/bench.py" "$@"
