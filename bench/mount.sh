#!/usr/bin/env bash
# Times issue 12's many-small-files cache mount (bench/cmd/mountbench)
# through Debian's docker-registry on loopback, counting saves at
# bench/cmd/countproxy. As root, from the repository root: `make
# bench-mount`. BENCH_REPS (default 3) runs per side, interleaved;
# MOUNT_FILES, MOUNT_MB and MOUNT_ADD size the mount (30000, 400, 200).
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

for p in docker-registry curl; do
	dpkg -s "$p" >/dev/null 2>&1 || die "missing package $p (bash bench/run.sh installs it)"
done
log "building the bench tools"
for t in countproxy mountbench; do
	(cd "$ROOT" && go build -o "$W/bin/$t" "./bench/cmd/$t")
done
# A save is measured against an empty repository: blobs an earlier run
# left in bench/ would be skipped as present, and not counted.
rm -rf "$W/registry/docker/registry/v2/repositories/bench"
start_registry
log "load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$W/bin/mountbench" -registry "127.0.0.1:$REGPORT" -proxy "$REG" -work "$W/mount" \
	-reps "${BENCH_REPS:-3}" -files "${MOUNT_FILES:-30000}" -mb "${MOUNT_MB:-400}" -add "${MOUNT_ADD:-200}" "$@"
log "load: $(cut -d' ' -f1-3 /proc/loadavg)"
