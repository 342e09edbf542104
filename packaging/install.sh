#!/usr/bin/env bash
# Installs the llmrt C library as a C/C++ user expects it:
#   PREFIX/include/llmrt.h
#   PREFIX/lib/libllmrt.so.VERSION, libllmrt.so.ABI -> it, libllmrt.so -> libllmrt.so.ABI
#   PREFIX/lib/libllmrt.a                       (with --static)
#   PREFIX/lib/pkgconfig/llmrt.pc
#   PREFIX/lib/cmake/llmrt/llmrtConfig.cmake, llmrtConfigVersion.cmake
#
# Usage: packaging/install.sh PREFIX [--profile debug|release] [--static]
# Build first: cargo build --release (the default profile here is release).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:?usage: install.sh PREFIX [--profile debug|release] [--static]}"
shift
profile=release
static=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --static) static=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
libdir_src="${CARGO_TARGET_DIR:-$root/target}/$profile"
[ -f "$libdir_src/libllmrt.so" ] || { echo "no $libdir_src/libllmrt.so: run cargo build first" >&2; exit 1; }

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
abi="$(sed -n 's/^#define LLMRT_ABI_VERSION \([0-9]*\)$/\1/p' "$root/include/llmrt.h")"
major="${version%%.*}"
[ -n "$version" ] && [ -n "$abi" ] || { echo "cannot read the version or the ABI version" >&2; exit 1; }

mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/llmrt"
install -m 644 "$root/include/llmrt.h" "$prefix/include/llmrt.h"
install -m 755 "$libdir_src/libllmrt.so" "$prefix/lib/libllmrt.so.$version"
ln -sfn "libllmrt.so.$version" "$prefix/lib/libllmrt.so.$abi"
ln -sfn "libllmrt.so.$abi" "$prefix/lib/libllmrt.so"
if [ "$static" = 1 ]; then
  install -m 644 "$libdir_src/libllmrt.a" "$prefix/lib/libllmrt.a"
fi
subst() {
  sed -e "s/@VERSION@/$version/g" -e "s/@ABI_VERSION@/$abi/g" -e "s/@VERSION_MAJOR@/$major/g" "$1" > "$2"
}
subst "$root/packaging/llmrt.pc.in" "$prefix/lib/pkgconfig/llmrt.pc"
subst "$root/packaging/llmrtConfig.cmake.in" "$prefix/lib/cmake/llmrt/llmrtConfig.cmake"
subst "$root/packaging/llmrtConfigVersion.cmake.in" "$prefix/lib/cmake/llmrt/llmrtConfigVersion.cmake"
echo "installed llmrt $version (ABI $abi) into $prefix"
