#!/usr/bin/env bash
# The 2B-shaped Gemma train step in bf16 on one NVIDIA GPU: tokens/s and MFU, ours vs JAX,
# alternated (ours, JAX, ours, JAX). Not run yet (see BENCHMARKS.md). Fits in 10 minutes on an
# H100 as planned: 2 rounds x 2 sides x (start + compile ~1-2 min + 6 steps of ~1 s) with the
# build and the wheels prepared beforehand; the script stops the rounds early rather than pass
# its BUDGET_S (default 540 s).
#
# Two phases, because the GPU machine cannot reach PyPI:
#   benches/gpu_train_step.sh prepare   # on a machine with PyPI and the same Python/OS:
#                                        # pip-downloads the wheels into benches/.wheels and
#                                        # builds target/release/train_step
#   benches/gpu_train_step.sh run        # on the GPU machine: offline install into
#                                        # benches/.venv-gpu, then the rounds
#
# Ours: benches/src/bin/train_step.rs through the CUDA PJRT plugin from `jax-cuda12-pjrt` (the
# same plugin JAX uses; GEMMA_XLA_PLUGIN=cuda finds it in the venv). Peer: jax[cuda12] with
# benches/jax_train_step.py. Both: batch BATCH x SEQ (default 2 x 2048), bf16 forward and
# backward, f32 master weights and AdamW moments, one device, the loss fetched every step.
# MFU = (6 x matmul parameters x tokens + attention) FLOPs per second / PEAK_TFLOPS (default 989,
# the H100 SXM's dense bf16 peak; set it for other cards).
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:-run}
batch=${BATCH:-2}
seq=${SEQ:-2048}
steps=${STEPS:-6}
rounds=${ROUNDS:-2}
peak=${PEAK_TFLOPS:-989}
budget=${BUDGET_S:-540}
pins=(jax==0.10.2 jaxlib==0.10.2 "jax-cuda12-plugin[with-cuda]==0.10.2" jax-cuda12-pjrt==0.10.2 optax==0.2.8 numpy==2.4.6)

case "$phase" in
  prepare)
    python3 -m pip download --dest benches/.wheels "${pins[@]}"
    cargo build --release -p benches --bin train_step
    echo "copy the repository (with benches/.wheels and target/release/train_step) to the GPU machine and run: $0 run"
    exit 0 ;;
  run) ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac

started=$(date +%s)
venv=benches/.venv-gpu
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --no-index --find-links benches/.wheels "${pins[@]}"
fi
export PATH="$PWD/$venv/bin:$PATH" # so that GEMMA_XLA_PLUGIN=cuda finds the venv's plugin
py="$venv/bin/python"
ours=./target/release/train_step
[ -x "$ours" ] || cargo build --release -p benches --bin train_step
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/2b.json" <<'JSON'
{"model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048, "intermediate_size": 16384,
 "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
 "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh"}
JSON
: > "$dir/results.jsonl"
for r in $(seq "$rounds"); do
  if [ $(( $(date +%s) - started )) -gt $(( budget / 2 )) ] && [ "$r" -gt 1 ]; then
    echo "stopping after $((r - 1)) rounds: over half of the ${budget}s budget used" >&2
    break
  fi
  GEMMA_XLA_PLUGIN=cuda "$ours" step "$dir/2b.json" "$batch" "$seq" data=1 "$steps" bf16 2>"$dir/err" | tail -n 1 \
    | sed 's/^/{"who": "ours", "result": /; s/$/}/' >> "$dir/results.jsonl" || { cat "$dir/err" >&2; exit 1; }
  XLA_PYTHON_CLIENT_MEM_FRACTION=.95 "$py" benches/jax_train_step.py step "$dir/2b.json" "$batch" "$seq" data=1 "$steps" - bf16 \
    2>"$dir/err" | tail -n 1 | sed 's/^/{"who": "jax", "result": /; s/$/}/' >> "$dir/results.jsonl" || { cat "$dir/err" >&2; exit 1; }
  tail -n 2 "$dir/results.jsonl"
done
python3 - "$dir/results.jsonl" "$batch" "$seq" "$peak" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
batch, seq, peak = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
gflop = next(r["result"]["gflop"] for r in rows if r["who"] == "ours")
med = {w: statistics.median(r["result"]["median_ms"] for r in rows if r["who"] == w) for w in ("ours", "jax")}
for w, ms in med.items():
    print(f"{w}: {ms:.1f} ms/step, {batch * seq / ms * 1e3:.0f} tokens/s, MFU {gflop / ms * 1e3 / (peak * 1e3) * 100:.1f}% "
          f"(of {peak:.0f} TFLOP/s; {gflop:.0f} GFLOP per step)")
print(f"ours / JAX step time: {med['ours'] / med['jax']:.2f}x")
PY
echo "elapsed: $(( $(date +%s) - started )) s"
