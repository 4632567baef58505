#!/usr/bin/env bash
# The main job, from a fresh clone: build, get the CPU PJRT plugin (pip, on first use),
# list 8 CPU devices, run the shipped SPMD example over them, and run a tiny Gemma checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p gemma-xla
./target/release/gemma-xla devices --devices 8
./target/release/gemma-xla run examples/spmd_matmul.mlir \
  --arg examples/x.npy --arg examples/w.npy --arg examples/b.npy --out out/spmd_matmul
# A tiny Gemma checkpoint written by transformers (MQA, 2 layers): loss and gradients.
./target/release/gemma-xla forward --model gemma-xla/tests/fixtures/gemma/mqa \
  --tokens gemma-xla/tests/fixtures/gemma/mqa/tokens.npy --out out/mqa_forward.safetensors --grads
