#!/usr/bin/env bash
# kiln benchmarks: kiln against the latest BuildKit (buildkitd + buildctl),
# docker build and buildah, each measured as a fresh CI runner against a
# warm remote cache in a loopback registry, and kiln and BuildKit also as a
# warm laptop (local state kept). Run as root from the repository root:
# `make bench`.
#
# Environment knobs (see bench/README.md):
#   BENCH_REPS       repetitions of every case (default 3)
#   BENCH_SCENARIOS  scenarios to run (default "go-service parallel-stages big-context")
#   BENCH_PEERS      builders to compare (default "docker buildah buildkit kiln"; also
#                    kiln-serve: kiln with its cache on a `kiln cache serve` started for the run)
#   BENCH_RESULTS    where results go (default bench/results)
#   BENCH_TIMEOUT    seconds before one build is killed and recorded as failed (default 900)
#   BENCH_WORK       the work directory (default /var/tmp/kiln-bench/<checkout>; bench/.work links to it)
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
REPS=${BENCH_REPS:-3}
SCENARIOS=${BENCH_SCENARIOS:-"go-service parallel-stages big-context"}
PEERS=${BENCH_PEERS:-"docker buildah buildkit kiln"}
RESULTS=${BENCH_RESULTS:-$BENCH/results}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}
DOCKER=/usr/bin/docker # Debian's client; /usr/local/bin/docker may be another one
BUILDKIT_VERSION=v0.34.2 # the latest release: go list -m -versions github.com/moby/buildkit
PY=/usr/bin/python3    # Debian's python, the one python3-matplotlib serves

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
W=$(work_dir)
export DOCKER W BENCH_TIMEOUT

main() {
	[[ $(id -u) == 0 ]] || die "run as root: kiln, buildah and dockerd need it for RUN"
	local t0
	t0=$(date +%s)
	mkdir -p "$W/logs" "$W/bin" "$W/ctx"
	trap cleanup EXIT
	trap 'exit 130' INT TERM

	install_packages
	build_tools
	if [[ " $PEERS " == *" buildkit "* ]]; then
		build_buildkit
	fi
	start_registry
	if [[ " $PEERS " == *" kiln-serve "* ]]; then
		start_kiln_serve
	fi
	if [[ " $PEERS " == *" docker "* ]]; then
		start_dockerd
	fi
	make_bases
	make_goproxy
	make_contexts

	local jsonl=$W/results.jsonl
	: >"$jsonl"
	rm -rf "$W/kiln-reports"
	mkdir -p "$W/kiln-reports"
	write_machine "$W/machine.txt"

	local rep scenario case peer
	for ((rep = 1; rep <= REPS; rep++)); do
		for scenario in $SCENARIOS; do
			for case in $(cases_of "$scenario"); do
				# shellcheck disable=SC2086 # PEERS is a word list
				for peer in $(peers_of "$case" $(rotate "$rep" $PEERS)); do
					measure "$jsonl" "$scenario" "$case" "$peer" "$rep"
				done
				if [[ $case == nochange && " $PEERS " == *" kiln "* ]]; then
					measure_floor "$jsonl" "$scenario" "$case" "$rep"
				fi
			done
		done
	done

	local t1
	t1=$(date +%s)
	log "all builds done in $((t1 - t0)) s; writing $RESULTS"
	mkdir -p "$RESULTS"
	cp "$W/machine.txt" "$RESULTS/machine.txt"
	rm -rf "$RESULTS/kiln-reports"
	cp -r "$W/kiln-reports" "$RESULTS/kiln-reports"
	"$W/bin/benchreport" -in "$jsonl" -machine "$RESULTS/machine.txt" \
		-reps "$REPS" -started "$t0" -finished "$t1" \
		-json "$RESULTS/results.json" -md "$RESULTS/results.md"
	"$PY" "$BENCH/chart.py" "$RESULTS/results.json" "$RESULTS/chart.png"
	log "done: $RESULTS/results.md ($(($(date +%s) - t0)) s in all)"
}

main "$@"
