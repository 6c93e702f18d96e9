# kiln's make targets. `make bench` runs the benchmarks against docker build
# (BuildKit) and buildah (as root; about 30 minutes; see bench/README.md).
.PHONY: bench
bench:
	bash bench/run.sh

# `make bench-extract` times kiln's layer fetch+extract of the go-service
# base against `curl | tar -xzf` of the same blobs (as root; bench/README.md).
.PHONY: bench-extract
bench-extract:
	bash bench/extract.sh
