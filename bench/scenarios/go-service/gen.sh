#!/usr/bin/env bash
# Writes the go-service build context for one case.
#   gen.sh OUT VARIANT REGISTRY GOPROXY_DIR
#   gen.sh -edit DIR VARIANT   (only the variant's source edits, in place)
# VARIANT: base (cold, nochange), gofile (one .go file changed), gomod
# (gofile + a require line bumped; resolves from the local proxy), and the
# warm laptop's next commit after each: gofile-warm (the same .go file
# changed again), gomod-warm (gomod + another require line bumped).
# Each variant builds on the previous one, as successive commits do.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

edit() {
	local dir=$1 variant=$2 version
	case $variant in
	base) return ;;
	gofile | gomod | gomod-warm) version=1.0.1 ;;
	gofile-warm) version=1.0.2 ;;
	*)
		echo "gen.sh: unknown variant $variant" >&2
		exit 2
		;;
	esac
	sed -i "s/^const version = \"1.0.0\"/const version = \"$version\"/" "$dir/cmd/inventory/main.go"
	if [[ $variant == gomod* ]]; then
		sed -i 's|github.com/google/uuid v1.5.0|github.com/google/uuid v1.6.0|' "$dir/go.mod"
	fi
	if [[ $variant == gomod-warm ]]; then
		sed -i 's|github.com/cespare/xxhash/v2 v2.2.0|github.com/cespare/xxhash/v2 v2.3.0|' "$dir/go.mod"
	fi
}

if [[ $1 == -edit ]]; then
	edit "$2" "$3"
	exit
fi

out=$1 variant=$2 registry=$3 proxy=$4
rm -rf "$out"
mkdir -p "$out"
cp -a "$here/app/." "$out/"
sed "s|@REGISTRY@|$registry|g" "$here/Dockerfile" >"$out/Dockerfile"
edit "$out" "$variant"
grep -q 'version = "1.0' "$out/cmd/inventory/main.go"

# go.sum is made offline from the same file proxy the build will use, which
# also proves the proxy holds everything the build needs.
modcache=$(mktemp -d)
trap 'chmod -R u+w "$modcache"; rm -rf "$modcache"' EXIT
(cd "$out" && GOPROXY="file://$proxy" GOSUMDB=off GOFLAGS=-mod=mod GOMODCACHE="$modcache" GOTOOLCHAIN=local go mod tidy)
mkdir -p "$out/goproxy"
cp -a "$proxy/." "$out/goproxy/"
