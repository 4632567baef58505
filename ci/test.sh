#!/usr/bin/env bash
# What CI runs (through .ci/run): format check, clippy with warnings as errors, the API docs
# without warnings, the tests, and the examples at tiny sizes.
# The tests fetch the CPU PJRT plugin by themselves on first use (pip, pinned hash).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace
# The examples (README: `cargo run --release --example NAME`), here in the test profile that
# is already built, at tiny sizes; each fails unless its loss falls or its text comes out.
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo run --quiet --example train_tiny -- 60 "$out/tiny"
cargo run --quiet --example generate -- "$out/tiny" "The " 24
cargo run --quiet --example custom_loop -- 30
