#!/usr/bin/env bash
# The benchmark of issue #14 (bench/large.py): one large database against
# pg_dump -Fd -j N / pg_restore -j N on local disk.
#
#   bench/run-large.sh                          # 3 GB database, N=2, gzip 1
#   bench/run-large.sh --size-gb 6              # twice as large
#   bench/run-large.sh --size-gb 0.2 --quiet-wait 0   # seconds, for development
#   bench/run-large.sh --compression 0,6        # also the effect of the level
#
# The generated data set is cached (bench/servers.py); results in bench/results/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="$repo/.venv/bin/python"
if [ ! -x "$python" ]; then
  echo "bench: $python missing; run 'make venv'" >&2
  exit 1
fi
export PYTHONPATH="$repo/hack:$here:$repo/operator${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
exec "$python" "$here/large.py" "$@"
