#!/usr/bin/env bash
# What CI runs (through .ci/run): format check, clippy with warnings as errors, the tests.
# The tests fetch the CPU PJRT plugin by themselves on first use (pip, pinned hash).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
