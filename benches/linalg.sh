#!/usr/bin/env bash
# Batched linear algebra on the CPU: the programs JAX lowers (LAPACK custom calls) run by
# gemma-xla's FFI handlers (faer; nalgebra for Schur) against JAX itself (jaxlib's LAPACK), same inputs, same cores,
# alternated. Times are per execution, compile excluded; on both sides the argument already
# lives on the device and the results stay there.
# Usage: benches/linalg.sh [ROUNDS] [REPS]   (default 2 rounds of 5 executions)
# The peer installs jax 0.10.2 into benches/.venv-jax unless PYTHON has it.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
reps=${2:-5}
py=${PYTHON:-benches/.venv-jax/bin/python}
if ! "$py" -c 'import jax' 2>/dev/null; then
  python3 -m venv benches/.venv-jax
  benches/.venv-jax/bin/pip install --quiet jax==0.10.2
  py=benches/.venv-jax/bin/python
fi
cargo build --quiet --release -p benches --bin linalg
dir=${BENCH_DIR:-$(mktemp -d)}
"$py" benches/linalg_peer.py make "$dir"
for name in cholesky_64x256x256_f32 solve_64x256x256_f32 qr_64x256x256_f32 eigh_64x256x256_f32 svdvals_64x256x256_f32 svd_64x256x256_f32 \
  eig_64x128x128_f32 schur_64x128x128_f32; do
  for r in $(seq "$rounds"); do
    ./target/release/linalg "$dir/$name.mlir" "$dir/${name}_arg.npy" "$reps" 2>/dev/null | grep '^ours'
    "$py" benches/linalg_peer.py time "$dir" "$name" "$reps"
  done
done
