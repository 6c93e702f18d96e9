#!/usr/bin/env bash
# Times kiln's layer fetch+extract path against `curl | tar -xzf` for the
# go-service base (bench/golang:1.26, made as run.sh makes it) on a loopback
# registry. As root, from the repository root: `make bench-extract`.
# BENCH_REPS (default 3) runs per side, interleaved; medians and their ratio
# are printed.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
PY=python3
DOCKER=docker
BENCH_TIMEOUT=900
# shellcheck source=lib.sh
source "$BENCH/lib.sh"
W=$(work_dir)
mkdir -p "$W/logs" "$W/bin"
trap cleanup EXIT

for p in docker-registry debootstrap curl; do
	dpkg -s "$p" >/dev/null 2>&1 || die "missing package $p (bash bench/run.sh installs it)"
done
build_tools
(cd "$ROOT" && go build -o "$W/bin/extractbench" ./bench/cmd/extractbench)
start_registry
make_bases
"$W/bin/extractbench" -ref "127.0.0.1:$REGPORT/bench/golang:1.26" -work "$W/extract" -reps "${BENCH_REPS:-3}"
