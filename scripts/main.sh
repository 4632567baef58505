#!/usr/bin/env bash
# The main job, from a fresh clone: build, get the CPU PJRT plugin (pip, on first use),
# list 8 CPU devices, and run the shipped SPMD example over them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p gemma-xla
./target/release/gemma-xla devices --devices 8
./target/release/gemma-xla run examples/spmd_matmul.mlir \
  --arg examples/x.npy --arg examples/w.npy --arg examples/b.npy --out out/spmd_matmul
