#!/usr/bin/env bash
# The train step on the perf config (d_model 512, 8 heads, 1 kv head, head_dim 64, MLP 2048,
# 4 layers, vocab 8192; batch 4 x seq 128, f32, one CPU device), metrics fetched every step:
# tokens/s and the host's share of the time between steps (everything but the PJRT
# executions, measured by the run itself, after the first step that compiles).
# Usage: benches/train_step.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-30}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/config.json" <<'JSON'
{"model_type": "gemma", "vocab_size": 8192, "hidden_size": 512, "intermediate_size": 2048,
 "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 64,
 "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh"}
JSON
cargo build --quiet --release -p gemma-xla
./target/release/gemma-xla train --config "$dir/config.json" --batch 4 --seq 128 --mesh data=1 \
  --steps "$steps" --log-every 1 --save-every 0 --sample 0 --out "$dir/out" 2>&1 | grep -v '^W0000'
python3 - "$dir/out/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]  # the first step includes compiling
print(f"median tokens/s over steps 2..{len(rows) + 1}: {statistics.median(r['tokens_per_s'] for r in rows):.0f}")
PY
