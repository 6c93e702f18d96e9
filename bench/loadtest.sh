#!/usr/bin/env bash
# bench/loadtest.sh: the bounded load test of issue 13, against kiln cache
# serve and Debian's docker-registry (CNCF distribution 2.8) in one run,
# interleaved round by round so both meet the same machine load. Each
# server gets a fresh store on disk and logs every request to a file (kiln
# its JSON access log, docker-registry its access log), so both pay for
# logging alike. Only 127.0.0.1 is ever contacted.
#
#	LOAD_CLIENTS=32 LOAD_DURATION=60s LOAD_ROUNDS=2 bench/loadtest.sh
#
# Results (one JSON file per round and server, and summary.txt) go to
# $LOAD_OUT (default: a new directory under /var/tmp/kiln-loadtest).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=${LOAD_CLIENTS:-32}
DURATION=${LOAD_DURATION:-60s}
ROUNDS=${LOAD_ROUNDS:-2}
OUT=${LOAD_OUT:-$(mkdir -p /var/tmp/kiln-loadtest && mktemp -d /var/tmp/kiln-loadtest/run.XXXXXX)}
mkdir -p "$OUT/bin"
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$OUT/kiln-store" "$OUT/registry-store"
}
trap cleanup EXIT

(cd "$ROOT" && go build -o "$OUT/bin/kiln" ./cmd/kiln && go build -o "$OUT/bin/loadtest" ./bench/cmd/loadtest)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {
	local i
	for i in $(seq 100); do
		curl -fsS -o /dev/null "http://$1/v2/" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "server at $1 did not answer" >&2
	exit 1
}

KPORT=$(free_port)
"$OUT/bin/kiln" cache serve --addr "127.0.0.1:$KPORT" --root "$OUT/kiln-store" 2>"$OUT/kiln.log" &
KPID=$!
PIDS+=("$KPID")
wait_up "127.0.0.1:$KPORT"

RPORT=$(free_port)
cat >"$OUT/registry.yml" <<YAML
version: 0.1
log:
  level: warn
  formatter: text
storage:
  filesystem:
    rootdirectory: $OUT/registry-store
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$RPORT
YAML
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin docker-registry serve "$OUT/registry.yml" >"$OUT/registry.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
wait_up "127.0.0.1:$RPORT"

{
	echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" rev-parse --short HEAD) $CLIENTS clients x $DURATION, $ROUNDS rounds; $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# kiln cache serve: $("$OUT/bin/kiln" version | head -1); docker-registry: $(dpkg-query -W -f '${Version}' docker-registry)"
} | tee "$OUT/summary.txt"
status=0
for r in $(seq "$ROUNDS"); do
	for target in kiln registry; do
		if [[ $target == kiln ]]; then port=$KPORT pid=$KPID; else port=$RPORT pid=$RPID; fi
		"$OUT/bin/loadtest" -label "round $r $target" -url "http://127.0.0.1:$port" -pid "$pid" \
			-clients "$CLIENTS" -duration "$DURATION" -json "$OUT/$target-$r.json" | tee -a "$OUT/summary.txt" || status=1
	done
done
echo "results in $OUT"
exit $status
