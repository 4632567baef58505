#!/usr/bin/env bash
# Loading a Gemma-2B-shaped bf16 checkpoint (~5 GB, written once): gemma-xla's memory-mapped
# loader, then Python safetensors (numpy) as the peer, each in a fresh process.
# Usage: benches/load_checkpoint.sh [DIR]   (needs: pip install safetensors numpy torch)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/gemma-xla-bench-2b}
cargo build --quiet --release -p benches --bin load_checkpoint
[ -f "$dir/model.safetensors" ] || ./target/release/load_checkpoint write "$dir"
./target/release/load_checkpoint load "$dir"
python3 - "$dir" <<'PY'
import os, resource, sys, time
import numpy as np
import torch
from safetensors.torch import load_file  # numpy has no bf16, so the torch loader
path = os.path.join(sys.argv[1], "model.safetensors")
size = os.path.getsize(path)
t0 = time.perf_counter()
tensors = load_file(path)
t1 = time.perf_counter()
checksum = sum(int(t.view(torch.uint8).numpy().sum(dtype=np.uint64)) for t in tensors.values())
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"python safetensors.torch.load_file: {size/1e9:.2f} GB; load {t1-t0:.2f} s; load+read every byte {t2-t0:.2f} s; "
      f"peak RSS {peak/1e9:.2f} GB = {peak/size:.2f}x the checkpoint (checksum {checksum})")
PY
