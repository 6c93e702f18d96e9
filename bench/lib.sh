# shellcheck shell=bash
# Functions for bench/run.sh: setup, servers, peers' recipes, measurement.
# Sourced, never run; expects BENCH, ROOT, DOCKER, PY and BENCH_TIMEOUT, and
# W (from work_dir) before anything but work_dir is called.

SERVER_PIDS=()
STARTED_DOCKERD=""
PAUSED_PIDS=() # daemons frozen while another peer builds; thawed on exit
BUILDKITD_PID=""
REGPORT=""
REG="" # the counting proxy in front of the registry: every peer goes through it
KSERVE="" # the counting proxy in front of kiln cache serve, the kiln-serve peer's cache

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# work_dir prints the run's work directory (GBs: registry store, base
# images, BuildKit's source tree, extracted golang layers) and makes it if
# need be. It lives outside the repository, in $BENCH_WORK or one directory
# per checkout under /var/tmp/kiln-bench, so that nothing that walks the
# tree (`gofmt -l ./bench`, editors, grep) meets its Go files; bench/.work
# is a symlink to it, which walkers do not follow. A bench/.work directory
# left by an older run is moved there (a rename: same filesystem, so its
# cached setup is kept).
work_dir() {
	local link=$BENCH/.work w
	w=${BENCH_WORK:-/var/tmp/kiln-bench/$(printf '%s' "$ROOT" | tr -c 'A-Za-z0-9.-' _)}
	if [[ -d $link && ! -L $link ]]; then
		[[ -e $w ]] && die "both $link and $w exist: remove one (or set BENCH_WORK)"
		mkdir -p "$(dirname "$w")"
		mv "$link" "$w" || die "moving $link to $w failed"
	fi
	mkdir -p "$w"
	ln -sfn "$w" "$link"
	readlink -f "$w"
}

# cleanup stops every server this run started, and only those.
cleanup() {
	local pid
	thaw_all
	for pid in "${SERVER_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${SERVER_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n $STARTED_DOCKERD ]]; then
		kill "$STARTED_DOCKERD" 2>/dev/null || true
		wait "$STARTED_DOCKERD" 2>/dev/null || true
	fi
	stop_buildkitd
}

# install_packages asks apt only for what is missing, so a prepared machine
# never touches the network.
install_packages() {
	local p missing=()
	for p in docker.io docker-registry buildah runc debootstrap python3-matplotlib curl jq; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if ((${#missing[@]})); then
		log "apt-get install ${missing[*]}"
		apt-get update
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
	fi
}

build_tools() {
	log "building kiln and the bench tools"
	(cd "$ROOT" && go build -o "$W/kiln" ./cmd/kiln)
	local t
	for t in countproxy mkbase hashctx mkcontext benchreport; do
		(cd "$ROOT" && go build -o "$W/bin/$t" "./bench/cmd/$t")
	done
}

# build_buildkit builds buildkitd and buildctl from the Go module proxy's
# copy of BuildKit, once per version. `go install module@version` refuses
# the module (its go.mod has exclude directives), so its source tree is
# built as the main module instead.
build_buildkit() {
	BUILDKIT_BIN=$W/buildkit-$BUILDKIT_VERSION
	export BUILDKIT_BIN # the timed recipe runs in a child bash
	[[ -x $BUILDKIT_BIN/buildkitd && -x $BUILDKIT_BIN/buildctl ]] && return
	log "building BuildKit $BUILDKIT_VERSION from the Go module proxy (once; minutes)"
	local dir src=$W/buildkit-src
	dir=$(cd / && go mod download -json "github.com/moby/buildkit@$BUILDKIT_VERSION" | jq -r .Dir)
	[[ -d $dir ]] || die "go mod download github.com/moby/buildkit@$BUILDKIT_VERSION gave no directory"
	rm -rf "$src" "$BUILDKIT_BIN.tmp"
	cp -r "$dir" "$src"
	chmod -R u+w "$src"
	mkdir -p "$BUILDKIT_BIN.tmp"
	(cd "$src" && GOFLAGS= CGO_ENABLED=0 go build -trimpath \
		-ldflags "-X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" \
		-o "$BUILDKIT_BIN.tmp/" ./cmd/buildkitd ./cmd/buildctl) >"$W/logs/buildkit-build.log" 2>&1 ||
		die "building BuildKit failed; see $W/logs/buildkit-build.log"
	rm -rf "$BUILDKIT_BIN"
	mv "$BUILDKIT_BIN.tmp" "$BUILDKIT_BIN"
}

free_port() {
	"$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() {
	local url=$1 i
	for ((i = 0; i < 100; i++)); do
		curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
		sleep 0.1
	done
	die "$url did not come up"
}

# start_registry runs Debian's docker-registry on loopback with its storage
# under .work, and the counting proxy in front of it. The apps/ repositories
# of an earlier run are removed first so every cold case really is cold; the
# base images stay.
start_registry() {
	local store=$W/registry
	rm -rf "$store/docker/registry/v2/repositories/apps"
	mkdir -p "$store"
	REGPORT=$(free_port)
	cat >"$W/registry.yml" <<-EOF
		version: 0.1
		log:
		  level: warn
		  accesslog:
		    disabled: true
		storage:
		  filesystem:
		    rootdirectory: $store
		  delete:
		    enabled: true
		http:
		  addr: 127.0.0.1:$REGPORT
	EOF
	docker-registry serve "$W/registry.yml" >"$W/logs/registry.log" 2>&1 &
	SERVER_PIDS+=($!)
	wait_http "http://127.0.0.1:$REGPORT/v2/"

	rm -f "$W/proxy.port"
	"$W/bin/countproxy" -target "http://127.0.0.1:$REGPORT" -portfile "$W/proxy.port" >"$W/logs/proxy.log" 2>&1 &
	SERVER_PIDS+=($!)
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -s $W/proxy.port ]] && break
		sleep 0.1
	done
	[[ -s $W/proxy.port ]] || die "countproxy did not start"
	REG=127.0.0.1:$(cat "$W/proxy.port")
	wait_http "http://$REG/v2/"
	log "registry 127.0.0.1:$REGPORT, counted through $REG"
}

# start_kiln_serve runs `kiln cache serve` on loopback with a fresh store
# and a counting proxy in front of it: the kiln-serve peer keeps its cache
# there, while its image and base images stay in the plain registry.
start_kiln_serve() {
	local store=$W/kiln-serve-store port i
	rm -rf "$store"
	port=$(free_port)
	"$W/kiln" cache serve --addr "127.0.0.1:$port" --root "$store" 2>"$W/logs/kiln-serve.log" &
	SERVER_PIDS+=($!)
	wait_http "http://127.0.0.1:$port/v2/"
	rm -f "$W/kserve-proxy.port"
	"$W/bin/countproxy" -target "http://127.0.0.1:$port" -portfile "$W/kserve-proxy.port" >"$W/logs/kserve-proxy.log" 2>&1 &
	SERVER_PIDS+=($!)
	for ((i = 0; i < 100; i++)); do
		[[ -s $W/kserve-proxy.port ]] && break
		sleep 0.1
	done
	[[ -s $W/kserve-proxy.port ]] || die "countproxy for kiln cache serve did not start"
	KSERVE=127.0.0.1:$(cat "$W/kserve-proxy.port")
	wait_http "http://$KSERVE/v2/"
	log "kiln cache serve 127.0.0.1:$port, counted through $KSERVE"
}

# start_dockerd starts Docker Engine only if none answers; docker already
# treats 127.0.0.0/8 registries as insecure, so it needs no configuration.
start_dockerd() {
	if "$DOCKER" info >/dev/null 2>&1; then
		return
	fi
	log "starting dockerd"
	dockerd >"$W/logs/dockerd.log" 2>&1 &
	STARTED_DOCKERD=$!
	local i
	for ((i = 0; i < 300; i++)); do
		"$DOCKER" info >/dev/null 2>&1 && return
		sleep 0.1
	done
	die "dockerd did not start; see $W/logs/dockerd.log"
}

# make_bases makes bench/debian:bookworm from debootstrap and bench/golang:1.26
# from it plus the host's /usr/local/go. Each piece is skipped when present.
make_bases() {
	if [[ ! -d $W/rootfs ]]; then
		log "debootstrap --variant=minbase bookworm (once)"
		rm -rf "$W/rootfs.tmp"
		debootstrap --variant=minbase bookworm "$W/rootfs.tmp" http://deb.debian.org/debian >"$W/logs/debootstrap.log" 2>&1 ||
			die "debootstrap failed; see $W/logs/debootstrap.log"
		mv "$W/rootfs.tmp" "$W/rootfs"
	fi
	if [[ ! -f $W/debian.tar ]]; then
		# Runtimes provide /dev, /proc and /sys; apt's caches only add bytes.
		tar -C "$W/rootfs" --numeric-owner \
			--exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
			--exclude='./var/cache/apt/*.bin' --exclude='./var/cache/apt/archives/*.deb' \
			--exclude='./var/lib/apt/lists/*' \
			-cf "$W/debian.tar.tmp" .
		mv "$W/debian.tar.tmp" "$W/debian.tar"
	fi
	local gover
	gover=$(head -1 /usr/local/go/VERSION)
	if [[ ! -f $W/golang-$gover.tar ]]; then
		tar -C / --numeric-owner -cf "$W/golang.tar.tmp" usr/local/go
		mv "$W/golang.tar.tmp" "$W/golang-$gover.tar"
	fi
	local direct=127.0.0.1:$REGPORT path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	log "base images (pushed once, then found in the registry)"
	"$W/bin/mkbase" -ref "$direct/bench/debian:bookworm" -layer "$W/debian.tar" \
		-env "PATH=$path" -cmd bash
	"$W/bin/mkbase" -ref "$direct/bench/golang:1.26" -base "$direct/bench/debian:bookworm" \
		-layer "$W/golang-$gover.tar" -env "PATH=/usr/local/go/bin:/root/go/bin:$path" \
		-env GOTOOLCHAIN=local -env GOPATH=/root/go
}

# make_goproxy fetches the go-service's modules on the host (the only step
# that reaches the Go module proxy) into a module cache whose cache/download
# tree is a file:// GOPROXY the builds use offline.
make_goproxy() {
	GOPROXY_DIR=$W/goproxy
	local variants="base gomod gomod-warm"
	[[ -f $W/goproxy.done && $(cat "$W/goproxy.done") == "$variants" ]] && return
	log "go mod download for go-service (once)"
	local tmp variant
	rm -rf "$W/gomodcache" "$GOPROXY_DIR"
	for variant in $variants; do
		tmp=$(mktemp -d)
		cp -a "$BENCH/scenarios/go-service/app/." "$tmp/"
		"$BENCH/scenarios/go-service/gen.sh" -edit "$tmp" "$variant"
		# tidy fetches .mod and .zip files; download adds the .info files a
		# file:// GOPROXY must also serve.
		(cd "$tmp" && export GOMODCACHE="$W/gomodcache" GOFLAGS=-mod=mod GOTOOLCHAIN=local && go mod tidy && go mod download all)
		rm -rf "$tmp"
	done
	mkdir -p "$GOPROXY_DIR"
	cp -a "$W/gomodcache/cache/download/." "$GOPROXY_DIR/"
	rm -rf "$GOPROXY_DIR/sumdb"
	find "$GOPROXY_DIR" -name '*.lock' -delete
	chmod -R u+w "$W/gomodcache"
	echo "$variants" >"$W/goproxy.done"
}

# Scenario cases, in the order a CI history would produce them. A case
# named X-warm is the warm laptop after X: run right after X on the local
# state X left (nothing wiped, the same daemon), it builds a second change
# of the same kind (see the scenarios' gen.sh), so both compile or copy the
# same amount; only the peers in WARM_PEERS run it.
cases_of() {
	case $1 in
	go-service) echo cold nochange gofile gofile-warm gomod gomod-warm ;;
	parallel-stages) echo cold nochange ;;
	big-context) echo cold nochange onefile onefile-warm ;;
	*) die "unknown scenario $1" ;;
	esac
}

# WARM_PEERS keep local state a later build can use, and are measured as a
# warm laptop too.
WARM_PEERS="kiln buildkit"

# peers_of prints the peers that run a case.
peers_of() {
	local case=$1 p
	shift
	for p in "$@"; do
		if [[ $case != *-warm || " $WARM_PEERS " == *" $p "* ]]; then
			printf '%s ' "$p"
		fi
	done
}

variant_of() {
	case $2 in
	cold | nochange) echo base ;;
	*) echo "$2" ;;
	esac
}

# make_contexts writes every scenario's contexts; the Dockerfiles name this
# run's registry address, so they are made again on every run.
make_contexts() {
	local scenario case variant out
	for scenario in $SCENARIOS; do
		for case in $(cases_of "$scenario"); do
			variant=$(variant_of "$scenario" "$case")
			out=$W/ctx/$scenario/$variant
			[[ -f $out.done && $(cat "$out.done") == "$REG" ]] && continue
			log "context $scenario/$variant"
			case $scenario in
			go-service) "$BENCH/scenarios/go-service/gen.sh" "$out" "$variant" "$REG" "$GOPROXY_DIR" ;;
			parallel-stages) "$BENCH/scenarios/parallel-stages/gen.sh" "$out" "$variant" "$REG" ;;
			big-context) "$BENCH/scenarios/big-context/gen.sh" "$out" "$variant" "$REG" "$W/bin/mkcontext" ;;
			esac
			# The marker lives beside the context so no peer copies it.
			echo "$REG" >"$out.done"
		done
	done
}

# rotate prints the peers starting at a different one each repetition, so
# no peer always runs first (page cache, registry warm-up) or last.
rotate() {
	local rep=$1
	shift
	local peers=("$@") n=$# i
	for ((i = 0; i < n; i++)); do
		printf '%s ' "${peers[$(((i + rep - 1) % n))]}"
	done
}

write_machine() {
	{
		echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
		echo "nproc: $(nproc)"
		echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
		echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
		echo "kernel: $(uname -r)"
		echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
		echo "docker: $("$DOCKER" version --format 'client {{.Client.Version}}, engine {{.Server.Version}}' 2>&1)"
		echo "buildah: $(buildah --version)"
		if [[ -n ${BUILDKIT_BIN:-} ]]; then
			echo "buildkit: $("$BUILDKIT_BIN/buildctl" --version), $("$BUILDKIT_BIN/buildkitd" --version)"
		fi
		echo "runc: $(runc --version | head -1)"
		echo "registry: $(docker-registry --version)"
		echo "go: $(go version)"
		echo "kiln: $("$W/kiln" version 2>&1 | head -1) (git $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- cmd internal || echo ', with uncommitted changes'))"
		echo "storage: $(df -h "$W" | awk 'NR==2 {print $1, $2}'), buildah driver $(buildah info --format '{{.store.GraphDriverName}}' 2>/dev/null || echo '?'), docker driver $("$DOCKER" info --format '{{.Driver}}' 2>/dev/null)"
	} >"$1"
}

# --- peers: wipe (a fresh runner) and recipe (the timed CI step) ----------

# kiln's local state is its cache directory; a new HOME gives a fresh runner.
wipe_kiln() { wipe_kiln_home "$W/kiln-home"; }

wipe_kiln_home() {
	local home=$1 m
	# Unmount anything a previous build left behind before deleting it.
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(findmnt -rn -o TARGET | grep "^$home/" | sort -r)
	rm -rf "$home"
	mkdir -p "$home/.cache"
}

recipe_kiln() {
	local repo=$1 ctx=$2 report=$3
	kiln_build "$W/kiln-home" "$repo" "$repo:cache" "$ctx" "$report"
}

# kiln-serve is kiln with its cache (records, layers, cache mounts) on
# `kiln cache serve` instead of the registry it pushes the image to: the
# cache server next to the runners that issue 13 is about. Its own HOME,
# so kiln's warm cases still follow kiln's own builds.
wipe_kiln-serve() { wipe_kiln_home "$W/kiln-serve-home"; }

recipe_kiln-serve() {
	local repo=$1 ctx=$2 report=$3
	kiln_build "$W/kiln-serve-home" "$repo" "$KSERVE/${repo#*/}:cache" "$ctx" "${report%.json}-serve.json"
}

kiln_build() {
	local home=$1 repo=$2 cache=$3 ctx=$4 report=$5
	HOME=$home XDG_CACHE_HOME=$home/.cache \
		"$W/kiln" build --progress=plain --push -t "$repo:latest" \
		--cache-from "type=registry,ref=$cache" \
		--cache-to "type=registry,ref=$cache,mode=max" \
		--report "$report" "$ctx"
}

# docker: images included, so the base is pulled again as on a fresh runner.
wipe_docker() {
	"$DOCKER" system prune -af --volumes
	"$DOCKER" builder prune -af
}

# The pull-then-build recipe CI guides teach for docker build.
recipe_docker() {
	local repo=$1 ctx=$2
	"$DOCKER" pull "$repo:latest" || true
	DOCKER_BUILDKIT=1 "$DOCKER" build --cache-from "$repo:latest" \
		--build-arg BUILDKIT_INLINE_CACHE=1 -t "$repo:latest" "$ctx"
	"$DOCKER" push "$repo:latest"
}

# buildah keeps RUN --mount=type=cache directories under /var/tmp, outside
# its image store; a fresh runner has none.
wipe_buildah() {
	buildah rm --all
	buildah rmi --all --force
	rm -rf /var/tmp/buildah-cache /var/tmp/buildah-cache-*
}

# buildah 1.28's remote layer cache: --cache-to pushes each step's layer
# image to a repository, --cache-from looks steps up there.
recipe_buildah() {
	local repo=$1 ctx=$2
	buildah build --layers --cache-from "$repo-cache" --cache-to "$repo-cache" \
		--tls-verify=false -t "$repo:latest" "$ctx"
	buildah push --tls-verify=false "$repo:latest"
}

# BuildKit as its CI docs run it: buildkitd with the OCI worker (runc), a
# fresh daemon with an empty state directory for every fresh-runner case.
# The loopback registry speaks plain HTTP.
start_buildkitd() {
	local state=$1 t0 t1 i
	cat >"$W/buildkitd.toml" <<-EOF
		[worker.oci]
		  enabled = true
		[worker.containerd]
		  enabled = false
		[registry."$REG"]
		  http = true
		  insecure = true
	EOF
	rm -f "$W/buildkitd.sock"
	t0=$(date +%s.%N)
	"$BUILDKIT_BIN/buildkitd" --config "$W/buildkitd.toml" --root "$state" \
		--addr "unix://$W/buildkitd.sock" >>"$W/logs/buildkitd.log" 2>&1 &
	BUILDKITD_PID=$!
	for ((i = 0; i < 600; i++)); do
		if "$BUILDKIT_BIN/buildctl" --addr "unix://$W/buildkitd.sock" debug workers >/dev/null 2>&1; then
			t1=$(date +%s.%N)
			awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b-a}' >"$W/daemon.seconds"
			return
		fi
		kill -0 "$BUILDKITD_PID" 2>/dev/null || break
		sleep 0.05
	done
	die "buildkitd did not start; see $W/logs/buildkitd.log"
}

stop_buildkitd() {
	[[ -n $BUILDKITD_PID ]] || return 0
	kill -CONT "$BUILDKITD_PID" 2>/dev/null || true # a frozen one would never see the TERM
	kill "$BUILDKITD_PID" 2>/dev/null || true
	wait "$BUILDKITD_PID" 2>/dev/null || true
	BUILDKITD_PID=""
}

# wipe_buildkit stops the daemon, deletes every state it had and starts a
# new one; its start time goes to daemon.seconds, reported beside the build.
wipe_buildkit() {
	local name=$1 m
	stop_buildkitd
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(findmnt -rn -o TARGET | grep "^$W/buildkit-state-" | sort -r)
	rm -rf "$W"/buildkit-state-*
	start_buildkitd "$W/buildkit-state-$name"
}

# The recipe BuildKit's docs give for CI: registry cache, mode=max, an OCI
# image manifest for the cache, imported back on the next runner.
recipe_buildkit() {
	local repo=$1 ctx=$2
	"$BUILDKIT_BIN/buildctl" --addr "unix://$W/buildkitd.sock" build --progress=plain \
		--frontend dockerfile.v0 --local context="$ctx" --local dockerfile="$ctx" \
		--output "type=image,name=$repo:latest,push=true,registry.insecure=true" \
		--export-cache "type=registry,ref=$repo:buildcache,mode=max,image-manifest=true,registry.insecure=true" \
		--import-cache "type=registry,ref=$repo:buildcache,registry.insecure=true"
}

export -f recipe_kiln recipe_kiln-serve kiln_build recipe_docker recipe_buildah recipe_buildkit
export KSERVE

# daemon_pids prints the processes a peer keeps running between builds:
# buildkitd, and dockerd with the containerd it started; kiln and buildah
# have none.
daemon_pids() {
	local d
	case $1 in
	buildkit) [[ -z $BUILDKITD_PID ]] || echo "$BUILDKITD_PID" ;;
	docker)
		for d in $(pidof dockerd); do
			echo "$d"
			pgrep -P "$d" || true
		done
		;;
	esac
}

# quiesce leaves only one peer's daemon running for its build: every other
# peer's daemon is frozen (SIGSTOP), so none of its background work
# (writeback, GC, cache pruning after its last build) lands in this build's
# time, while its state stays as it was for its own warm case; the peer's
# own daemon is thawed (SIGCONT) and does that deferred work in its own
# time. "floor" freezes them all. Nothing is restarted or dropped.
quiesce() {
	local peer=$1 p pid frozen=""
	for p in $PEERS; do
		[[ $p != "$peer" ]] || continue
		for pid in $(daemon_pids "$p"); do
			if kill -STOP "$pid" 2>/dev/null; then
				PAUSED_PIDS+=("$pid")
				frozen+=" $p:$pid"
			fi
		done
	done
	[[ -z $frozen ]] || log "  frozen during $peer's build:$frozen"
	for pid in $(daemon_pids "$peer"); do
		kill -CONT "$pid" 2>/dev/null || true
	done
}

# thaw_all wakes every daemon quiesce froze, so none is left stopped.
thaw_all() {
	local pid
	for pid in "${PAUSED_PIDS[@]}"; do
		kill -CONT "$pid" 2>/dev/null || true
	done
	PAUSED_PIDS=()
}

# settle waits for the disk: sync returns when the dirty pages earlier
# builds and the wipe left are written, so their writeback does not run
# during the next build. The page cache is kept (a runner's is warm too).
settle() {
	sync
}

# load1 prints the 1-minute load average, recorded beside every build: on a
# shared machine it says how much else was running.
load1() {
	cut -d' ' -f1 /proc/loadavg
}

json_string() { "$PY" -c 'import json, sys; print(json.dumps(sys.stdin.read()))'; }

# measure wipes one peer's local state (not for a -warm case: that one
# runs on the state the previous case left), resets the byte counters,
# times the peer's recipe and appends one JSON line. A failed build is
# recorded, never fatal.
measure() {
	local jsonl=$1 scenario=$2 case=$3 peer=$4 rep=$5
	local ctx repo logf report start end rc=0 stats err='""' daemon=null load
	ctx=$W/ctx/$scenario/$(variant_of "$scenario" "$case")
	repo=$REG/apps/$scenario-$peer-r$rep
	logf=$W/logs/$scenario-$case-$peer-r$rep.log
	report=$W/kiln-reports/$scenario-$case-r$rep.json
	rm -f "$W/daemon.seconds"
	quiesce "$peer"
	if [[ $case == *-warm ]]; then
		: >"$logf"
	else
		"wipe_$peer" "$scenario-$case" >"$logf" 2>&1 || log "warning: wiping $peer failed (see $logf)"
	fi
	if [[ -s $W/daemon.seconds ]]; then
		daemon=$(cat "$W/daemon.seconds")
		log "$scenario/$case rep $rep: $peer daemon started in $daemon s"
	fi
	settle
	load=$(load1)
	curl -fsS -X POST "http://$REG/_bench/reset"
	[[ -z $KSERVE ]] || curl -fsS -X POST "http://$KSERVE/_bench/reset"
	log "$scenario/$case rep $rep: $peer (load $load)"
	start=$(date +%s.%N)
	timeout "$BENCH_TIMEOUT" bash -c 'set -euo pipefail; "$@"' _ "recipe_$peer" "$repo" "$ctx" "$report" >>"$logf" 2>&1 || rc=$?
	end=$(date +%s.%N)
	stats=$(curl -fsS "http://$REG/_bench/stats")
	if [[ -n $KSERVE ]]; then
		# kiln-serve's bytes are its image's (registry) plus its cache's
		# (kiln cache serve); every other peer's cache bytes are 0 there.
		stats=$(jq -cs '{pulled: (map(.pulled) | add), pushed: (map(.pushed) | add), requests: (map(.requests) | add)}' \
			<<<"$stats $(curl -fsS "http://$KSERVE/_bench/stats")")
	fi
	if ((rc != 0)); then
		err=$(tail -n 15 "$logf" | json_string)
		log "  FAILED (exit $rc) after $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b-a}') s; see $logf"
	else
		log "  $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b-a}') s, $(jq -r '"pulled \(.pulled/1e5|floor/10) MB, pushed \(.pushed/1e5|floor/10) MB"' <<<"$stats")"
	fi
	jq -cn --arg scenario "$scenario" --arg case "$case" --arg peer "$peer" --argjson rep "$rep" \
		--argjson rc "$rc" --arg t0 "$start" --arg t1 "$end" --argjson stats "$stats" \
		--argjson error "$err" --arg log ".work/${logf#"$W"/}" --argjson daemon "$daemon" --argjson load "$load" \
		'{scenario: $scenario, case: $case, peer: $peer, rep: $rep, ok: ($rc == 0), exit_code: $rc,
		  seconds: (($t1|tonumber) - ($t0|tonumber)), daemon_seconds: $daemon, load1: $load, pulled_bytes: $stats.pulled,
		  pushed_bytes: $stats.pushed, requests: $stats.requests, log: $log, error: $error}' >>"$jsonl"
}

# measure_floor records the floor under a no-change build: hash the context
# and do one manifest round trip.
measure_floor() {
	local jsonl=$1 scenario=$2 case=$3 rep=$4 ctx out rc=0
	ctx=$W/ctx/$scenario/$(variant_of "$scenario" "$case")
	quiesce floor
	settle
	out=$("$W/bin/hashctx" -dir "$ctx" -manifest-url "http://$REG/v2/apps/$scenario-kiln-r$rep/manifests/latest") || rc=$?
	if ((rc != 0)); then
		log "warning: floor measurement failed for $scenario"
		return
	fi
	jq -c --arg scenario "$scenario" --arg case "$case" --argjson rep "$rep" \
		'{scenario: $scenario, case: $case, peer: "floor", rep: $rep, ok: true, exit_code: 0,
		  seconds: .total_seconds, pulled_bytes: 0, pushed_bytes: 0, requests: 1, files: .files, bytes: .bytes}' <<<"$out" >>"$jsonl"
}
