#!/usr/bin/env bash
# Regenerates xla-sys/src/bindings.rs from pjrt_c_api.h (PJRT C API 0.114), its FFI
# extension header and XLA's FFI header xla/ffi/api/c_api.h (FFI API 0.3).
# The header comes from the sdist of PyPI package pypjrt==0.1.1 (vendored OpenXLA headers,
# Apache-2.0). Needs pip, cargo and libclang (Debian: apt-get install libclang-dev).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-binary :all: --no-deps -d "$tmp" pypjrt==0.1.1
tar -xzf "$tmp"/pypjrt-0.1.1.tar.gz -C "$tmp"
include="$tmp/pypjrt-0.1.1/vendor"
grep -q '#define PJRT_API_MINOR 114' "$include/xla/pjrt/c/pjrt_c_api.h" \
  || { echo "regen.sh: expected PJRT API 0.114 in the header" >&2; exit 1; }
grep -q '#define XLA_FFI_API_MINOR 3' "$include/xla/ffi/api/c_api.h" \
  || { echo "regen.sh: expected XLA FFI API 0.3 in the header" >&2; exit 1; }
cargo run --quiet --release --manifest-path "$here/regen/Cargo.toml" -- \
  "$include" "$here/src/bindings.rs"
echo "wrote $here/src/bindings.rs"
