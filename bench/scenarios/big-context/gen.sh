#!/usr/bin/env bash
# Writes the big-context build context for one case.
#   gen.sh OUT VARIANT REGISTRY MKCONTEXT_BINARY
# VARIANT: base (cold, nochange), onefile (one small file changed),
# onefile-warm (the warm laptop's next commit: the same file changed again).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 variant=$2 registry=$3 mkcontext=$4
rm -rf "$out"
mkdir -p "$out"
"$mkcontext" -dir "$out" -small 20000 -large 3 -large-bytes $((20 << 20)) -seed 1
sed "s|@REGISTRY@|$registry|g" "$here/Dockerfile" >"$out/Dockerfile"
case $variant in
base) ;;
onefile) echo "changed by the bench" >>"$out/src/pkg050/file10000.txt" ;;
onefile-warm) printf 'changed by the bench\nand again\n' >>"$out/src/pkg050/file10000.txt" ;;
*)
	echo "gen.sh: unknown variant $variant" >&2
	exit 2
	;;
esac
