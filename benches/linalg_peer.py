"""The JAX side of benches/linalg.sh: batched linear algebra on the CPU, timed in JAX.

  python3 benches/linalg_peer.py make DIR        writes DIR/<name>.mlir and DIR/<name>_arg.npy
  python3 benches/linalg_peer.py time DIR NAME REPS
                                                 prints "peer NAME median_ms M min_ms M"
The programs are what jax.jit lowers for the CPU (LAPACK custom calls); gemma-xla runs the same
text through its own FFI handlers (benches/src/bin/linalg.rs).
"""
import statistics
import sys
import time

import numpy as np

import jax

jax.config.update("jax_platforms", "cpu")
import jax.numpy as jnp  # noqa: E402

CASES = {
    # name: (function, input maker)
    "cholesky_64x256x256_f32": (jnp.linalg.cholesky, lambda r: spd(r, 64, 256)),
    "svd_64x256x256_f32": (lambda a: jnp.linalg.svd(a, compute_uv=True), lambda r: r.standard_normal((64, 256, 256)).astype(np.float32)),
    "svdvals_64x256x256_f32": (lambda a: jnp.linalg.svd(a, compute_uv=False), lambda r: r.standard_normal((64, 256, 256)).astype(np.float32)),
    "solve_64x256x256_f32": (lambda a: jnp.linalg.inv(a), lambda r: (r.standard_normal((64, 256, 256)) + 16 * np.eye(256)).astype(np.float32)),
    "eigh_64x256x256_f32": (jnp.linalg.eigh, lambda r: sym(r, 64, 256)),
    "qr_64x256x256_f32": (jnp.linalg.qr, lambda r: r.standard_normal((64, 256, 256)).astype(np.float32)),
    "eig_64x128x128_f32": (jnp.linalg.eig, lambda r: r.standard_normal((64, 128, 128)).astype(np.float32)),
    "schur_64x128x128_f32": (jax.lax.linalg.schur, lambda r: r.standard_normal((64, 128, 128)).astype(np.float32)),
}


def spd(r, b, n):
    x = r.standard_normal((b, n, n))
    return (x @ np.swapaxes(x, -1, -2) / n + np.eye(n)).astype(np.float32)


def sym(r, b, n):
    x = r.standard_normal((b, n, n))
    return ((x + np.swapaxes(x, -1, -2)) / 2).astype(np.float32)


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "make":
        for name, (fn, make) in CASES.items():
            a = make(np.random.default_rng(0))
            np.save(f"{d}/{name}_arg.npy", a)
            with open(f"{d}/{name}.mlir", "w") as f:
                f.write(jax.jit(fn).lower(a).as_text())
        return
    name, reps = sys.argv[3], int(sys.argv[4])
    fn, _ = CASES[name]
    a = jnp.asarray(np.load(f"{d}/{name}_arg.npy"))
    f = jax.jit(fn)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append((time.perf_counter() - t) * 1e3)
    print(f"peer {name} median_ms {statistics.median(times):.2f} min_ms {min(times):.2f}")


if __name__ == "__main__":
    main()
