#!/usr/bin/env bash
# After `make demo`: run every hint the demo printed as a user pasting it would,
# each in a fresh shell (empty environment but HOME and a system PATH, working
# directory /), after the eval line the demo prints first. Fails naming the
# first hint that does not work. .ci/run calls this between `make demo` and
# `make demo-down`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
hints="$repo/.localenv/demo/hints.sh"
if [[ ! -s "$hints" ]]; then
  echo "demo-check: $hints is missing: run \`make demo\` first" >&2
  exit 1
fi
setup="$(head -n 1 "$hints")"
status=0
while IFS= read -r hint; do
  [[ -n "$hint" ]] || continue
  echo "demo-check: \$ $hint"
  if ! env -i HOME="$HOME" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
      bash --noprofile --norc -euo pipefail -c "cd / && $setup && $hint" >/tmp/demo-check.out 2>&1; then
    echo "demo-check: FAILED: $hint" >&2
    sed 's/^/    /' /tmp/demo-check.out >&2
    status=1
  else
    head -n 5 /tmp/demo-check.out | sed 's/^/    /'
  fi
done < <(tail -n +2 "$hints")
rm -f /tmp/demo-check.out
if [[ $status -eq 0 ]]; then echo "demo-check: every hint works in a fresh shell"; fi
exit $status
