# kiln's make targets. `make bench` runs the benchmarks against docker build
# (BuildKit) and buildah (as root; about 30 minutes; see bench/README.md).
.PHONY: bench
bench:
	bash bench/run.sh
