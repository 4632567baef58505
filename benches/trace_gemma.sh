#!/usr/bin/env bash
# Trace + differentiate + lower a Gemma train step: gemma-xla, then JAX, on this machine.
# Usage: benches/trace_gemma.sh [7b|2b|tiny] [reps]   (needs: pip install jax)
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-7b}
reps=${2:-7}
cargo run --quiet --release -p benches --bin trace_gemma -- "$preset" "$reps"
python3 benches/jax_trace_gemma.py "$preset" "$reps"
