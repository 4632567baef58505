#!/usr/bin/env bash
# Decode (and prefill) tokens/s of `gemma-xla generate` against transformers' generate with its
# KV cache (PyTorch eager) on the same CPU, for the tiny and perf configs: one row, a 16-token
# prompt, NEW greedy tokens, EOS ignored. Runs alternate (ours, peer, ours, peer, ...) and
# medians are compared. The peer needs torch and transformers: set PYTHON to an interpreter
# that has them, or the script installs them (about 4 GB) into benches/.venv.
# Usage: benches/generate.sh [NEW] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
new=${1:-128}
rounds=${2:-3}
py=${PYTHON:-benches/.venv/bin/python}
if ! "$py" -c 'import torch, transformers' 2>/dev/null; then
  python3 -m venv benches/.venv
  benches/.venv/bin/pip install --quiet torch transformers safetensors numpy
  py=benches/.venv/bin/python
fi
cargo build --quiet --release -p gemma-xla
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for config in tiny perf; do
  "$py" benches/generate_peer.py make "$config" "$dir/$config"
  for r in $(seq "$rounds"); do
    ./target/release/gemma-xla generate --model "$dir/$config" --tokens "$dir/$config/prompt.npy" \
      --max-new-tokens "$new" --ignore-eos 2>&1 >/dev/null | grep '^prefill:' | sed "s/^/$config ours: /" >> "$dir/log"
    "$py" benches/generate_peer.py time "$dir/$config" "$new" | sed "s/^/$config peer: /" >> "$dir/log"
  done
done
"$py" - "$dir/log" <<'PY'
import json, re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    config, who, rest = re.match(r"(\w+) (ours|peer): (.*)", line).groups()
    if who == "ours":
        pre, dec = (float(x) for x in re.findall(r"\(([\d.]+) tokens/s\)", rest))
    else:
        j = json.loads(rest)
        pre, dec = j["prefill_tokens_per_s"], j["decode_tokens_per_s"]
    rows.setdefault((config, who), []).append((pre, dec))
print("| config | gemma-xla decode tokens/s | transformers decode tokens/s | ratio | gemma-xla prefill tokens/s | transformers prefill tokens/s |")
print("|---|---|---|---|---|---|")
for config in ("tiny", "perf"):
    ours, peer = rows[(config, "ours")], rows[(config, "peer")]
    od, pd = statistics.median(d for _, d in ours), statistics.median(d for _, d in peer)
    op, pp = statistics.median(p for p, _ in ours), statistics.median(p for p, _ in peer)
    print(f"| {config} | {od:.0f} | {pd:.0f} | {od / pd:.2f}x | {op:.0f} | {pp:.0f} |")
PY
