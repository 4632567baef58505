#!/usr/bin/env bash
# Compile time and the partitioned train step against JAX, on the same compiler (libtpu, no
# TPU needed: both sides compile ahead of time for a v5e topology) and the same machine,
# alternated. benches/jax_compile_peer.py is the peer; benches/src/bin/hlo_cost.rs counts
# both optimised programs the same way (loop trips, matmul FLOPs, collectives and bytes per
# chip). The peer installs jax 0.10.2 and optax into benches/.venv-jax unless PYTHON has them.
#
# Usage: benches/compile.sh [PART] [ROUNDS]
#   deep   the 28-layer step (d_model 1024, 8 heads, 1 kv head, head_dim 128, MLP 4096,
#          vocab 32000, bf16, batch 8 x 256) on v5e:2x2, data=2,model=2: ours with the layers
#          as a loop and unrolled, JAX with lax.scan, ROUNDS times alternated; and the 4-layer
#          step of the same widths, to see how compile time grows with depth
#   table  collectives, memory and FLOPs of ours and JAX's (both scanned) for 2B FSDP
#          (data=4,model=1, batch 4 x 512) on v5e:2x2 and (data=256, batch 256 x 512) on
#          v5e:16x16, and 7B (data=32,model=8 --fsdp, batch 256 x 2048, --remat full) on v5e:16x16
#   cpu    the CPU plugin's compile of the one-device f32 step (train_step startup, cold
#          cache) for 4 and 28 layers, ours scanned and unrolled
#   all    all three (default)
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
rounds=${2:-2}
py=${PYTHON:-benches/.venv-jax/bin/python}
if ! "$py" -c 'import jax, optax' 2>/dev/null; then
  python3 -m venv benches/.venv-jax
  benches/.venv-jax/bin/pip install --quiet jax==0.10.2 optax
  py=benches/.venv-jax/bin/python
fi
cargo build --quiet --release -p gemma-xla -p benches --bins
ours=./target/release/gemma-xla
dir=${BENCH_DIR:-$(mktemp -d)}
# libtpu: the copy `gemma-xla compile` installs into its cache, for JAX too.
libtpu=${TPU_LIBRARY_PATH:-$HOME/.cache/gemma-xla/plugins/libtpu-0.0.52/libtpu/libtpu.so}
[ -f "$libtpu" ] || "$ours" compile --config tiny --topology v5e:2x2 --mesh data=2,model=2 --batch 8 --seq 64 >/dev/null
export TPU_LIBRARY_PATH=$libtpu TPU_WORKER_HOSTNAMES=localhost
quiet() { grep -v -E '^(W|I|E)0000|Source Location|libtpu_init|^WARNING|^=== ' || true; }

config() { # NAME LAYERS VOCAB D F HEADS KV HEAD_DIM
  cat > "$dir/$1.json" <<JSON
{"model_type": "gemma", "vocab_size": $3, "hidden_size": $4, "intermediate_size": $5,
 "num_hidden_layers": $2, "num_attention_heads": $6, "num_key_value_heads": $7, "head_dim": $8,
 "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh"}
JSON
}
config deep28 28 32000 1024 4096 8 1 128
config deep4 4 32000 1024 4096 8 1 128
config 2b 18 256000 2048 16384 8 1 256
config 7b 28 256000 3072 24576 16 16 256

# ours CONFIG TOPOLOGY MESH BATCH SEQ NAME [flags...]: compile, dump, count; prints lines
ours_compile() {
  local cfg=$1 topo=$2 mesh=$3 batch=$4 seq=$5 name=$6
  shift 6
  rm -rf "$dir/$name"
  "$ours" compile --config "$dir/$cfg.json" --topology "$topo" --mesh "$mesh" --batch "$batch" --seq "$seq" --dump "$dir/$name" "$@" 2>&1 | quiet |
    grep -E 'compiled in|^  (arguments|temporaries|generated code|total) |^FLOPs per step|does not fit' | sed "s/^/ours $name: /"
  [ -f "$dir/$name/after_optimizations.hlo" ] && echo "ours $name: cost $(./target/release/hlo_cost "$dir/$name/after_optimizations.hlo" "$mesh")"
  return 0
}

# jax CONFIG TOPOLOGY MESH BATCH SEQ NAME MODE REMAT [fsdp]
jax_compile() {
  local cfg=$1 topo=$2 mesh=$3 batch=$4 seq=$5 name=$6 mode=$7 remat=$8 fsdp=${9:-}
  ./target/release/train_step specs "$dir/$cfg.json" "$mesh" $fsdp > "$dir/$name.specs.json"
  "$py" benches/jax_compile_peer.py "$dir/$cfg.json" "$batch" "$seq" "$topo" "$mesh" "$dir/$name.specs.json" "$mode" "$remat" "$dir/$name.hlo" 2>&1 |
    quiet | sed "s/^/jax  $name: /"
  [ -f "$dir/$name.hlo" ] && echo "jax  $name: cost $(./target/release/hlo_cost "$dir/$name.hlo" "$mesh")"
  return 0
}

if [ "$part" = deep ] || [ "$part" = all ]; then
  for r in $(seq "$rounds"); do
    echo "== round $r: 28 layers, v5e:2x2, data=2,model=2, batch 8 x 256"
    ours_compile deep28 v5e:2x2 data=2,model=2 8 256 deep28-scan
    jax_compile deep28 v5e:2x2 data=2,model=2 8 256 jax-deep28-scan scan none
    ours_compile deep28 v5e:2x2 data=2,model=2 8 256 deep28-unrolled --no-scan-layers
    ours_compile deep4 v5e:2x2 data=2,model=2 8 256 deep4-scan
    jax_compile deep4 v5e:2x2 data=2,model=2 8 256 jax-deep4-scan scan none
  done
fi

if [ "$part" = table ] || [ "$part" = all ]; then
  echo "== 2B FSDP, v5e:2x2, data=4,model=1, batch 4 x 512"
  ours_compile 2b v5e:2x2 data=4,model=1 4 512 2b-2x2 --fsdp
  jax_compile 2b v5e:2x2 data=4,model=1 4 512 jax-2b-2x2 scan none fsdp
  echo "== 2B FSDP, v5e:16x16, data=256, batch 256 x 512"
  ours_compile 2b v5e:16x16 data=256,model=1 256 512 2b-16x16 --fsdp
  jax_compile 2b v5e:16x16 data=256,model=1 256 512 jax-2b-16x16 scan none fsdp
  echo "== 7B, v5e:16x16, data=32,model=8 --fsdp, batch 256 x 2048, --remat full"
  ours_compile 7b v5e:16x16 data=32,model=8 256 2048 7b-16x16 --fsdp --remat full
  jax_compile 7b v5e:16x16 data=32,model=8 256 2048 jax-7b-16x16 scan full fsdp
fi

if [ "$part" = cpu ] || [ "$part" = all ]; then
  for r in $(seq "$rounds"); do
    for cfg in deep4 deep28; do
      for flag in "" --no-scan-layers; do
        rm -rf "$dir/cache"
        echo "cpu $cfg ${flag:-scan}: $(./target/release/train_step startup "$dir/$cfg.json" 2 64 "$dir/cache" $flag 2>&1 | quiet)"
      done
    done
  done
fi
