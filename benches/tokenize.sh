#!/usr/bin/env bash
# Tokenize throughput and memory: `gemma-xla tokenize` against HF tokenizers' Python
# `encode_batch` (benches/tokenize_peer.py) on the same generated jsonl corpus with the same
# 32000-token BPE, on the same cores, alternated; then `train`'s start-up on the result.
# Reports MB/s, tokens/s and peak RSS (GNU time) of each run. The peer installs `tokenizers`
# into benches/.venv-tok unless PYTHON has it.
# Usage: benches/tokenize.sh [SIZE_MB] [ROUNDS]   (default 2048 MB, 2 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-2048}
rounds=${2:-2}
py=${PYTHON:-benches/.venv-tok/bin/python}
if ! "$py" -c 'import tokenizers' 2>/dev/null; then
  python3 -m venv benches/.venv-tok
  benches/.venv-tok/bin/pip install --quiet tokenizers==0.22.1
  py=benches/.venv-tok/bin/python
fi
cargo build --quiet --release -p gemma-xla
dir=${BENCH_DIR:-$(mktemp -d)}
[ -f "$dir/corpus.jsonl" ] || "$py" benches/tokenize_peer.py make "$size" "$dir"
workers=$(nproc)
for r in $(seq "$rounds"); do
  rm -rf "$dir/out"
  /usr/bin/time -f "ours rss_kib %M wall_s %e" ./target/release/gemma-xla tokenize --data "$dir/corpus.jsonl" \
    --tokenizer "$dir/tokenizer.json" --out "$dir/out" --workers "$workers" 2>&1 | grep -E 'documents|rss_kib' | sed 's/^/ours: /'
  /usr/bin/time -f "peer rss_kib %M wall_s %e" "$py" benches/tokenize_peer.py time "$dir/corpus.jsonl" "$dir/tokenizer.json" 2>&1 | sed 's/^/peer: /'
done
# train's start-up on the result: until the first step's line (data loading + compile).
cfg="$dir/config.json"
echo '{"model_type": "gemma", "vocab_size": 32000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}' > "$cfg"
rm -rf "$dir/run"
start=$(date +%s.%N)
./target/release/gemma-xla train --config "$cfg" --data "$dir/out" --tokenizer "$dir/tokenizer.json" --steps 1 --batch 2 --seq 64 \
  --mesh data=1 --sample 0 --out "$dir/run" 2>&1 | grep -E '^training' | sed 's/^/train: /'
echo "train: whole run (data loading, compile, one step, checkpoint) $(echo "$(date +%s.%N) - $start" | bc) s"
du -sh "$dir/corpus.jsonl" "$dir/out" | sed 's/^/size: /'
