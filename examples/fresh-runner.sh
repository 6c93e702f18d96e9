#!/usr/bin/env bash
# kiln's main job, offline: `kiln cache serve` stands on loopback where a CI
# network's cache server would; runner 1 builds examples/hello, pushes the
# image and exports its cache there; runner 2 starts with an empty kiln
# directory (a fresh CI machine), imports that cache, hits every step and
# downloads no layer.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/kiln-example.XXXXXX)
go build -o "$work/kiln" ./cmd/kiln

"$work/kiln" cache serve --addr 127.0.0.1:0 --root "$work/server" 2>"$work/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  addr=$(sed -n 's/.*"msg":"listening","addr":"\([^"]*\)".*/\1/p' "$work/server.log")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/server.log"; echo "kiln cache serve did not start" >&2; exit 1; }
echo "--- kiln cache serve on $addr (store $work/server)"

echo "--- runner 1: cold build, image and cache pushed to $addr"
XDG_CACHE_HOME="$work/runner1" "$work/kiln" build --progress=plain \
  --push -t "$addr/hello:1" \
  --cache-to "type=registry,ref=$addr/hello:buildcache,mode=max" \
  examples/hello

echo "--- runner 2: empty kiln directory, cache imported from $addr"
before=$(wc -l <"$work/server.log")
XDG_CACHE_HOME="$work/runner2" "$work/kiln" build --progress=plain \
  --push -t "$addr/hello:2" \
  --cache-from "type=registry,ref=$addr/hello:buildcache" \
  --report "$work/runner2.json" examples/hello

totals=$(tr -d ' \n' <"$work/runner2.json" | sed -n 's/.*"totals":{\([^}]*\)}.*/\1/p')
echo "--- runner 2's report: $totals"
# What runner 2 fetched, from the server's access log: the cache index
# blob only; a hit never downloads its layer.
tail -n +"$((before + 1))" "$work/server.log" | grep '"method":"GET"' | grep '/blobs/' |
  sed 's/.*"path":"\([^"]*\)".*"bytes_out":\([0-9]*\).*/--- runner 2 fetched \1 (\2 bytes)/' || true
