#!/usr/bin/env bash
# The main job, from a fresh clone: build, get the CPU PJRT plugin (pip, on first use), and
# train the tiny Gemma on the built-in corpus on 4 CPU devices (mesh data=2,model=2): one
# compiled AdamW step, sharded, its state kept on the devices; checkpoints, metrics.jsonl and
# loss.svg and loss.png under out/train, and a sample from the trained model at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p gemma-xla
rm -rf out/train  # this demo starts afresh each time; train itself refuses to overwrite checkpoints
./target/release/gemma-xla train --out out/train "$@"
