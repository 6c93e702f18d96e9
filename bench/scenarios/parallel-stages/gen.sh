#!/usr/bin/env bash
# Writes the parallel-stages build context (just its Dockerfile).
#   gen.sh OUT VARIANT REGISTRY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 variant=$2 registry=$3
[[ $variant == base ]] || { echo "gen.sh: unknown variant $variant" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out"
sed "s|@REGISTRY@|$registry|g" "$here/Dockerfile" >"$out/Dockerfile"
