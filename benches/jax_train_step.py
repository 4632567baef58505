"""JAX's train step, the peer of benches/src/bin/train_step.rs: the same Gemma (written in
jax.numpy like benches/jax_trace_gemma.py), value_and_grad, optax.chain(clip_by_global_norm,
adamw) in one jax.jit with the state donated, the loss fetched every step.

python benches/jax_train_step.py step CONFIG.json BATCH SEQ MESH STEPS [SPECS.json|-] [f32|bf16]
python benches/jax_train_step.py matmul N REPS
python benches/jax_train_step.py trace 2b|7b REPS        (trace + lower of the train step)
python benches/jax_train_step.py startup CONFIG.json BATCH SEQ CACHE_DIR
                                   (trace + lower + compile, JAX's persistent compilation cache)

MESH is e.g. data=1 or data=2,model=2 (run with
XLA_FLAGS=--xla_force_host_platform_device_count=4 for 4 CPU devices); SPECS.json is what
`train_step specs` prints: the PartitionSpec gemma::rules gives every parameter (the
optimizer moments take their parameter's), and the batch's.
Prints one JSON line, like the Rust side.
"""
import json
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_loss(cfg):
    V, D, F = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    L, N, K, H = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    G = N // K

    def rms(x, w):
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
        return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)

    def rope(x, pos):
        half = x.shape[-1] // 2
        freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1]))
        ang = pos[..., None].astype(jnp.float32) * freq
        cos, sin = jnp.cos(ang)[:, :, None, :].astype(x.dtype), jnp.sin(ang)[:, :, None, :].astype(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def loss(params, tokens, compute):
        p = {k: v.astype(compute) for k, v in params.items()}
        B, T = tokens.shape
        emb = p["model.embed_tokens.weight"]
        x = emb[tokens] * jnp.asarray(math.sqrt(D), emb.dtype)
        pos = jnp.broadcast_to(jnp.arange(T), (B, T))
        causal = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
        for i in range(L):
            lp = lambda n: p[f"model.layers.{i}.{n}"]
            h = rms(x, lp("input_layernorm.weight"))
            q = rope((h @ lp("self_attn.q_proj.weight").T).reshape(B, T, N, H), pos).reshape(B, T, K, G, H)
            k = rope((h @ lp("self_attn.k_proj.weight").T).reshape(B, T, K, H), pos)
            v = (h @ lp("self_attn.v_proj.weight").T).reshape(B, T, K, H)
            s = jnp.einsum("btkgh,bskh->bktgs", q, k).astype(jnp.float32) * H**-0.5
            s = jnp.where(causal[None, None, :, None, :], s, jnp.finfo(jnp.float32).min)
            pr = jax.nn.softmax(s, axis=-1).astype(x.dtype)
            o = jnp.einsum("bktgs,bskh->btkgh", pr, v).reshape(B, T, N * H)
            x = x + o @ lp("self_attn.o_proj.weight").T
            h = rms(x, lp("post_attention_layernorm.weight"))
            gate = jax.nn.gelu(h @ lp("mlp.gate_proj.weight").T, approximate=True)
            x = x + (gate * (h @ lp("mlp.up_proj.weight").T)) @ lp("mlp.down_proj.weight").T
        logits = rms(x, p["model.norm.weight"]) @ emb.T
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    return loss


def param_shapes(cfg):
    V, D, F = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    N, K, H = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        shapes.update({
            pre + "input_layernorm.weight": (D,), pre + "post_attention_layernorm.weight": (D,),
            pre + "self_attn.q_proj.weight": (N * H, D), pre + "self_attn.k_proj.weight": (K * H, D),
            pre + "self_attn.v_proj.weight": (K * H, D), pre + "self_attn.o_proj.weight": (D, N * H),
            pre + "mlp.gate_proj.weight": (F, D), pre + "mlp.up_proj.weight": (F, D), pre + "mlp.down_proj.weight": (D, F),
        })
    return shapes


def make_step(cfg, compute=jnp.float32, steps=1000, lr=3e-3, warmup=20, min_lr=3e-4):
    # The defaults are `gemma-xla train`'s (gemma::Hyper::default()).
    loss = make_loss(cfg)

    def schedule(s):
        s = jnp.asarray(s, jnp.float32)
        cos = min_lr + (lr - min_lr) / 2 * (1 + jnp.cos(jnp.pi * (s - warmup) / max(1, steps - warmup)))
        return jnp.where(s < warmup, lr * (s + 1) / warmup, cos)

    mask = lambda params: {k: v.ndim >= 2 for k, v in params.items()}
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask))

    def step(params, opt_state, tokens):
        value, grads = jax.value_and_grad(loss)(params, tokens, compute)
        gn = optax.global_norm(grads)
        count = opt_state[1][0].count
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": value, "grad_norm": gn, "lr": schedule(count)}

    return opt, step


def step_cmd(cfg_path, batch, seq, mesh_text, steps, specs_path=None, compute="f32"):
    cfg = json.load(open(cfg_path))
    axes = [a.split("=") for a in mesh_text.split(",")]
    names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
    devices = np.array(jax.devices()[: int(np.prod(sizes))]).reshape(sizes)
    mesh = Mesh(devices, names)
    specs = json.load(open(specs_path)) if specs_path not in (None, "-") else {"params": {}, "batch": []}
    spec = lambda name, rank: P(*[tuple(a) or None for a in specs["params"][name]]) if name in specs["params"] else P(*([None] * rank))
    rng = np.random.default_rng(0)
    params = {}
    for name, shape in param_shapes(cfg).items():
        host = np.zeros(shape, np.float32) if len(shape) == 1 else (rng.standard_normal(shape, np.float32) * 0.02)
        params[name] = jax.device_put(host, NamedSharding(mesh, spec(name, len(shape))))
    opt, step = make_step(cfg, compute=jnp.bfloat16 if compute == "bf16" else jnp.float32)
    opt_state = opt.init(params)  # the moments take their parameter's sharding
    tok_sharding = NamedSharding(mesh, P(tuple(specs["batch"]) or None, None))
    V = cfg["vocab_size"]
    batches = [((np.arange(batch * seq) * 7919 + b * 104729 + 1) % (V - 1) + 1).astype(np.int32).reshape(batch, seq) for b in range(4)]
    jstep = jax.jit(step, donate_argnums=(0, 1))
    times, first, losses = [], 0.0, []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        tokens = jax.device_put(batches[i % 4], tok_sharding)
        params, opt_state, metrics = jstep(params, opt_state, tokens)
        m = {k: float(v) for k, v in metrics.items()}  # logging every step
        dt = time.perf_counter() - t0
        losses.append(round(m["loss"], 4))
        if i == 0:
            first = dt
            cpu0 = time.process_time()
        else:
            times.append(dt)
    assert math.isfinite(m["loss"]), m
    print(json.dumps({"side": f"jax {jax.__version__}", "median_ms": round(statistics.median(times) * 1e3, 3), "min_ms": round(min(times) * 1e3, 3),
                      "cpu_ms": round((time.process_time() - cpu0) / len(times) * 1e3, 1),
                      "first_step_s": round(first, 2), "steps": len(times), "loss": round(m["loss"], 6), "losses": losses}))


def matmul_cmd(n, reps):
    a = jax.device_put(((np.arange(n * n) % 17 - 8) / 16).astype(np.float32).reshape(n, n))
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    print(json.dumps({"side": f"jax {jax.__version__}", "n": n, "median_ms": round(t * 1e3, 3), "gflops": round(2 * n**3 / t / 1e9, 1)}))


PRESETS = {  # as gemma::Config::preset
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16),
    "2b": dict(vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256),
    "7b": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16, head_dim=256),
}


def trace_cmd(preset, reps, batch=8, seq=2048):
    """Trace + lower (no compile) of the whole bf16-compute train step, shapes only."""
    cfg = PRESETS[preset]
    shapes = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in param_shapes(cfg).items()}
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        opt, step = make_step(cfg, compute=jnp.bfloat16)  # a fresh function: no trace cache hit
        opt_state = jax.eval_shape(opt.init, shapes)
        text = jax.jit(step, donate_argnums=(0, 1)).lower(shapes, opt_state, tokens).as_text()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"side": f"jax {jax.__version__}", "preset": preset, "median_ms": round(statistics.median(times) * 1e3, 1),
                      "times_ms": [round(t * 1e3, 1) for t in times], "bytes": len(text)}))


def startup_cmd(cfg_path, batch, seq, cache_dir):
    """Trace + lower + compile of the one-device f32 train step, with JAX's persistent
    compilation cache in CACHE_DIR (cold when it is empty, warm when an earlier run filled it)."""
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cfg = json.load(open(cfg_path))
    rng = np.random.default_rng(0)
    params = {name: jnp.asarray(np.zeros(shape, np.float32) if len(shape) == 1 else rng.standard_normal(shape, np.float32) * 0.02)
              for name, shape in param_shapes(cfg).items()}
    tokens = jnp.zeros((batch, seq), jnp.int32)
    opt, step = make_step(cfg)
    opt_state = opt.init(params)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens).compile()
    dt = time.perf_counter() - t0
    assert compiled is not None
    print(json.dumps({"side": f"jax {jax.__version__}", "startup_ms": round(dt * 1e3, 1)}))


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "step":
        step_cmd(a[0], int(a[1]), int(a[2]), a[3], int(a[4]), *a[5:7])
    elif cmd == "matmul":
        matmul_cmd(int(a[0]), int(a[1]))
    elif cmd == "trace":
        trace_cmd(a[0], int(a[1]))
    elif cmd == "startup":
        startup_cmd(a[0], int(a[1]), int(a[2]), a[3])
    else:
        sys.exit(f"unknown command {cmd}")
