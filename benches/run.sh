#!/usr/bin/env bash
# Every comparison with JAX in one command; rewrites the part of BENCHMARKS.md between the
# `benches/run.sh` markers (our number, the peer's, the ratio, the command, the machine, the
# date) and keeps every other section as it is.
#
#   benches/run.sh [--rounds N] [--quick] [--no-write] [--torch]
#
# - The peer: JAX on CPU with pinned versions, installed with pip into benches/.venv on first
#   use (jax/jaxlib 0.10.2, optax 0.2.8, numpy 2.4.6).
# - Every figure comes from runs that alternate ours, JAX, ours, JAX, ... (ROUNDS rounds,
#   fresh processes), so both sides see the same machine load; medians over rounds.
# - Comparisons: the machine's f32 matmul peak through our runtime; the train step on the perf
#   config on one device and on 4 CPU devices (data=2,model=2); the tiny config's step (host
#   overhead); start-up (trace + lower + compile of the perf step) cold and warm from each
#   side's persistent compilation cache; trace + lower of the 2B- and 7B-shaped train steps.
# - Allocator: our binaries run with glibc's huge-page tunable (runtime::host_malloc); the perf
#   step is also run with it off for us (`GLIBC_TUNABLES=`) and on for JAX, so the table shows
#   what the setting is worth to each side.
# - `--torch` adds transformers' GemmaForCausalLM in PyTorch eager as a peer of the one-device
#   perf step (benches/torch_train_step.py). Its wheels are large (torch pulls CUDA libraries,
#   about 4 GB): they are pip-installed into benches/.venv-torch on first use, unless
#   TORCH_PYTHON names a python that already has torch and transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
perf_steps=5
tiny_steps=40
write=1
torch=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --quick) rounds=1; perf_steps=2; tiny_steps=10; shift ;;
    --no-write) write=0; shift ;;
    --torch) torch=1; shift ;;
    *) echo "usage: benches/run.sh [--rounds N] [--quick] [--no-write] [--torch]" >&2; exit 2 ;;
  esac
done

py=benches/.venv/bin/python
if ! "$py" -c 'import jax, optax; assert jax.__version__ == "0.10.2" and optax.__version__ == "0.2.8"' 2>/dev/null; then
  python3 -m venv benches/.venv
  benches/.venv/bin/pip install --quiet jax==0.10.2 jaxlib==0.10.2 optax==0.2.8 numpy==2.4.6
fi
tpy=
if [ "$torch" = 1 ]; then
  tpy=${TORCH_PYTHON:-benches/.venv-torch/bin/python}
  if ! "$tpy" -c 'import torch, transformers' 2>/dev/null; then
    [ -n "${TORCH_PYTHON:-}" ] && { echo "benches/run.sh: TORCH_PYTHON=$TORCH_PYTHON cannot import torch and transformers" >&2; exit 2; }
    python3 -m venv benches/.venv-torch
    benches/.venv-torch/bin/pip install --quiet torch==2.15.0 transformers==5.24.0 numpy==2.4.6
  fi
fi
cargo build --quiet --release -p benches --bin train_step
ours=./target/release/train_step

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/perf.json" <<'JSON'
{"model_type": "gemma", "vocab_size": 8192, "hidden_size": 512, "intermediate_size": 2048,
 "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 64,
 "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh"}
JSON
cat > "$dir/tiny.json" <<'JSON'
{"model_type": "gemma", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
 "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh"}
JSON
"$ours" specs "$dir/perf.json" data=2,model=2 > "$dir/specs4.json"
results="$dir/results.jsonl"
# run NAME SIDE COMMAND...: one JSON line from the command, tagged.
run() {
  local name=$1 side=$2
  shift 2
  local line
  line=$("$@" 2>"$dir/stderr" | tail -n 1) || { cat "$dir/stderr" >&2; exit 1; }
  echo "{\"bench\": \"$name\", \"who\": \"$side\", \"result\": $line}" | tee -a "$results"
}
four="XLA_FLAGS=--xla_force_host_platform_device_count=4"
for r in $(seq "$rounds"); do
  echo "== round $r/$rounds" >&2
  run matmul ours "$ours" matmul 2048 5
  run matmul jax "$py" benches/jax_train_step.py matmul 2048 5
  run perf1 ours "$ours" step "$dir/perf.json" 4 128 data=1 "$perf_steps"
  run perf1 jax "$py" benches/jax_train_step.py step "$dir/perf.json" 4 128 data=1 "$perf_steps"
  run perf1 ours-default-malloc env GLIBC_TUNABLES= "$ours" step "$dir/perf.json" 4 128 data=1 "$perf_steps"
  run perf1 jax-hugetlb env GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$py" benches/jax_train_step.py step "$dir/perf.json" 4 128 data=1 "$perf_steps"
  if [ -n "$tpy" ]; then run perf1 torch "$tpy" benches/torch_train_step.py step "$dir/perf.json" 4 128 "$perf_steps"; fi
  run perf4 ours "$ours" step "$dir/perf.json" 4 128 data=2,model=2 "$perf_steps"
  run perf4 jax env "$four" "$py" benches/jax_train_step.py step "$dir/perf.json" 4 128 data=2,model=2 "$perf_steps" "$dir/specs4.json"
  rm -rf "$dir/cache-ours" "$dir/cache-jax"
  run startup-cold ours "$ours" startup "$dir/perf.json" 4 128 "$dir/cache-ours"
  run startup-cold jax "$py" benches/jax_train_step.py startup "$dir/perf.json" 4 128 "$dir/cache-jax"
  run startup-warm ours "$ours" startup "$dir/perf.json" 4 128 "$dir/cache-ours"
  run startup-warm jax "$py" benches/jax_train_step.py startup "$dir/perf.json" 4 128 "$dir/cache-jax"
  run tiny ours "$ours" step "$dir/tiny.json" 8 64 data=1 "$tiny_steps"
  run tiny jax "$py" benches/jax_train_step.py step "$dir/tiny.json" 8 64 data=1 "$tiny_steps"
  for preset in 2b 7b; do
    run "trace-$preset" ours "$ours" trace "$preset" 5
    run "trace-$preset" jax "$py" benches/jax_train_step.py trace "$preset" 2
  done
done
machine="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
args=(--torch "$torch" --results "$results" --machine "$machine" --rounds "$rounds" --perf-steps "$perf_steps" --tiny-steps "$tiny_steps")
[ "$write" = 1 ] && args+=(--write BENCHMARKS.md)
python3 benches/report.py "${args[@]}"
