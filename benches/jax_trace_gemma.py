"""JAX's time to trace, differentiate and lower the same Gemma train step as
benches/src/bin/trace_gemma.rs (loss + gradients of every parameter, shapes only).

python3 benches/jax_trace_gemma.py [7b|2b|tiny] [reps]      (pip install jax)
Each repetition builds a fresh function so JAX's trace cache cannot answer it.
"""
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp

PRESETS = {  # vocab, d_model, mlp, layers, heads, kv heads, head_dim
    "tiny": (256, 64, 128, 2, 4, 1, 16),
    "2b": (256000, 2048, 16384, 18, 8, 1, 256),
    "7b": (256000, 3072, 24576, 28, 16, 16, 256),
}


def make_loss(cfg):
    V, D, F, L, N, K, H = cfg
    G = N // K

    def rms(x, w):
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + 1e-6)
        return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)

    def rope(x, pos):
        half = x.shape[-1] // 2
        freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1]))
        ang = pos[..., None].astype(jnp.float32) * freq
        cos, sin = jnp.cos(ang)[:, :, None, :].astype(x.dtype), jnp.sin(ang)[:, :, None, :].astype(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def loss(params, tokens):
        B, T = tokens.shape
        emb = params["embed"]
        x = emb[tokens] * jnp.asarray(math.sqrt(D), emb.dtype)
        pos = jnp.broadcast_to(jnp.arange(T), (B, T))
        causal = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
        for lp in params["layers"]:
            h = rms(x, lp["ln1"])
            q = rope((h @ lp["q"].T).reshape(B, T, K, G, H).reshape(B, T, N, H), pos).reshape(B, T, K, G, H)
            k = rope((h @ lp["k"].T).reshape(B, T, K, H), pos)
            v = (h @ lp["v"].T).reshape(B, T, K, H)
            s = jnp.einsum("btkgh,bskh->bktgs", q, k).astype(jnp.float32) * H**-0.5
            s = jnp.where(causal[None, None, :, None, :], s, jnp.finfo(jnp.float32).min)
            p = jax.nn.softmax(s, axis=-1).astype(x.dtype)
            o = jnp.einsum("bktgs,bskh->btkgh", p, v).reshape(B, T, N * H)
            x = x + o @ lp["o"].T
            h = rms(x, lp["ln2"])
            x = x + (jax.nn.gelu(h @ lp["gate"].T, approximate=True) * (h @ lp["up"].T)) @ lp["down"].T
        logits = rms(x, params["norm"]) @ emb.T
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    return loss


def shapes(cfg, dtype=jnp.bfloat16):
    V, D, F, L, N, K, H = cfg
    s = lambda *d: jax.ShapeDtypeStruct(d, dtype)
    layer = dict(ln1=s(D), q=s(N * H, D), k=s(K * H, D), v=s(K * H, D), o=s(D, N * H), ln2=s(D), gate=s(F, D), up=s(F, D), down=s(D, F))
    return dict(embed=s(V, D), layers=[dict(layer) for _ in range(L)], norm=s(D))


def main():
    preset = sys.argv[1] if len(sys.argv) > 1 else "7b"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    cfg = PRESETS[preset]
    tokens = jax.ShapeDtypeStruct((8, 2048), jnp.int32)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        lowered = jax.jit(jax.value_and_grad(make_loss(cfg))).lower(shapes(cfg), tokens)
        text = lowered.as_text()
        times.append(time.perf_counter() - t0)
    print(f"jax {jax.__version__} {preset}: trace+grad+lower to StableHLO text, median of {reps}: "
          f"{statistics.median(times) * 1e3:.1f} ms ({len(text)} bytes)")


if __name__ == "__main__":
    main()
