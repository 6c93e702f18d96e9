#!/usr/bin/env bash
# Writes the go-service build context for one case.
#   gen.sh OUT VARIANT REGISTRY GOPROXY_DIR
# VARIANT: base (cold, nochange), gofile (one .go file changed),
# gomod (gofile + a require line bumped; resolves from the local proxy).
# Each variant builds on the previous one, as successive commits do.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 variant=$2 registry=$3 proxy=$4

rm -rf "$out"
mkdir -p "$out"
cp -a "$here/app/." "$out/"
sed "s|@REGISTRY@|$registry|g" "$here/Dockerfile" >"$out/Dockerfile"
case $variant in
base) ;;
gofile)
	sed -i 's/^const version = "1.0.0"/const version = "1.0.1"/' "$out/cmd/inventory/main.go"
	;;
gomod)
	sed -i 's/^const version = "1.0.0"/const version = "1.0.1"/' "$out/cmd/inventory/main.go"
	sed -i 's|github.com/google/uuid v1.5.0|github.com/google/uuid v1.6.0|' "$out/go.mod"
	;;
*)
	echo "gen.sh: unknown variant $variant" >&2
	exit 2
	;;
esac
grep -q 'version = "1.0' "$out/cmd/inventory/main.go"

# go.sum is made offline from the same file proxy the build will use, which
# also proves the proxy holds everything the build needs.
modcache=$(mktemp -d)
trap 'chmod -R u+w "$modcache"; rm -rf "$modcache"' EXIT
(cd "$out" && GOPROXY="file://$proxy" GOSUMDB=off GOFLAGS=-mod=mod GOMODCACHE="$modcache" GOTOOLCHAIN=local go mod tidy)
mkdir -p "$out/goproxy"
cp -a "$proxy/." "$out/goproxy/"
