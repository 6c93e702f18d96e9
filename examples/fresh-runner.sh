#!/usr/bin/env bash
# kiln's main job, offline: runner 1 builds examples/hello and exports its
# cache; runner 2 starts with an empty kiln directory (a fresh CI machine),
# imports that cache and hits every step. A shared directory stands in for
# the registry or cache server every runner would reach.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/kiln-example.XXXXXX)
go build -o "$work/kiln" ./cmd/kiln

echo "--- runner 1: cold build, cache exported to $work/shared-cache"
XDG_CACHE_HOME="$work/runner1" "$work/kiln" build --progress=plain \
  --cache-to "type=local,dest=$work/shared-cache" \
  -o "type=local,dest=$work/out1" examples/hello

echo "--- runner 2: empty kiln directory, cache imported"
XDG_CACHE_HOME="$work/runner2" "$work/kiln" build --progress=plain \
  --cache-from "type=local,src=$work/shared-cache" \
  -o "type=local,dest=$work/out2" examples/hello 2>&1 | tee "$work/runner2.log"

cached=$(grep -c ' CACHED$' "$work/runner2.log" || true)
diff -r "$work/out1" "$work/out2" >/dev/null && same=same || same=DIFFERENT
echo "--- runner 2: $cached steps CACHED; its files are $same as runner 1's ($work/out2)"
