# kiln's make targets. `make bench` runs the benchmarks against the latest
# BuildKit, docker build and buildah, fresh runner and warm laptop (as root;
# about 35 minutes, BENCH_PEERS="buildkit kiln" about 15; see bench/README.md).
.PHONY: bench
bench:
	bash bench/run.sh

# `make bench-extract` times kiln's layer fetch+extract of the go-service
# base against `curl | tar -xzf` of the same blobs (as root; bench/README.md).
.PHONY: bench-extract
bench-extract:
	bash bench/extract.sh

# `make bench-mount` times a many-small-files cache mount's restore against
# parallel `curl | tar -x` of the same files, and its save's bytes against
# the bytes added (as root; bench/README.md).
.PHONY: bench-mount
bench-mount:
	bash bench/mount.sh

# `make bench-load` runs the load test of `kiln cache serve` against Debian's
# docker-registry, 32 clients for 60 s, two interleaved rounds (about 4.5
# minutes; LOAD_CLIENTS, LOAD_DURATION, LOAD_ROUNDS; README's cache server
# section).
.PHONY: bench-load
bench-load:
	bash bench/loadtest.sh

# `make check` runs CI's static checks (gofmt on the tracked files, go mod
# tidy, go vet, staticcheck): what to run before landing, instead of a
# gofmt that walks directories (bench/.work holds other projects' Go files).
.PHONY: check
check:
	bash .ci/lint
