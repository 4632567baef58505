"""JAX's train step compiled ahead of time for a TPU topology (libtpu, no TPU needed): the
peer of `gemma-xla compile` in benches/compile.sh.

python benches/jax_compile_peer.py CONFIG.json BATCH SEQ TOPOLOGY MESH SPECS.json scan|unrolled REMAT HLO_OUT

The same Gemma as benches/jax_train_step.py (bf16 compute over f32 master weights,
value_and_grad, optax clip_by_global_norm + adamw, state donated), with
- the layers either in a Python loop (`unrolled`) or in `jax.lax.scan` over weights stacked
  [layers, ...] (`scan`, what MaxText does by default), remat (none, full, save-dots) as
  `jax.checkpoint` on each layer;
- every parameter split as SPECS.json says (what `train_step specs` prints: gemma::rules'
  PartitionSpec of each checkpoint tensor; a stacked weight takes layer 0's, its layer axis
  unsplit; the AdamW moments take their parameter's);
- activations constrained where gemma::model constrains them (MaxText's logical-axis rules
  give the same): batch over `data` on the embeddings and the residual stream after each
  layer, heads over `model` on the queries, the MLP width over `model` on the gate and up
  projections, the vocabulary over `model` on the logits.
Prints one JSON line (lower and compile seconds, XLA's memory statistics and cost analysis)
and writes the optimised HLO to HLO_OUT, which benches/src/bin/hlo_cost.rs reads with the
same counting as `gemma-xla compile`.
"""
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LAYER = ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
         "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
         "mlp.down_proj.weight"]


def layer_shapes(cfg):
    D, F = cfg["hidden_size"], cfg["intermediate_size"]
    N, K, H = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    return {"input_layernorm.weight": (D,), "self_attn.q_proj.weight": (N * H, D), "self_attn.k_proj.weight": (K * H, D),
            "self_attn.v_proj.weight": (K * H, D), "self_attn.o_proj.weight": (D, N * H), "post_attention_layernorm.weight": (D,),
            "mlp.gate_proj.weight": (F, D), "mlp.up_proj.weight": (F, D), "mlp.down_proj.weight": (D, F)}


def main(cfg_path, batch, seq, topology, mesh_text, specs_path, mode, remat, hlo_out):
    cfg = json.load(open(cfg_path))
    V, D = cfg["vocab_size"], cfg["hidden_size"]
    L, N, K, H = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    G = N // K
    scan = mode == "scan"
    specs = json.load(open(specs_path))

    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    axes = [a.split("=") for a in mesh_text.split(",")]
    names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
    devices = sorted(topo.devices, key=lambda d: d.id)[: int(np.prod(sizes))]
    mesh = Mesh(np.array(devices).reshape(sizes), names)

    def pspec(entry, rank):
        return P(*[tuple(a) if a else None for a in entry]) if entry is not None else P(*([None] * rank))

    # Parameter shapes and splits: per layer, or stacked [L, ...].
    shapes, shardings = {}, {}
    for name, shape in [("model.embed_tokens.weight", (V, D)), ("model.norm.weight", (D,))]:
        shapes[name] = shape
        shardings[name] = pspec(specs["params"].get(name), len(shape))
    for n, shape in layer_shapes(cfg).items():
        if scan:
            shapes[f"layers.{n}"] = (L,) + shape
            inner = specs["params"].get(f"model.layers.0.{n}")
            shardings[f"layers.{n}"] = P(None, *pspec(inner, len(shape)))
        else:
            for i in range(L):
                shapes[f"model.layers.{i}.{n}"] = shape
                shardings[f"model.layers.{i}.{n}"] = pspec(specs["params"].get(f"model.layers.{i}.{n}"), len(shape))
    batch_axes = tuple(specs["batch"]) or None

    def constrain(x, *dims):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*dims)))

    data = batch_axes
    model = "model" if "model" in names and dict(zip(names, sizes))["model"] > 1 else None

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

    def layer(x, lp, pos, causal):
        B, T = x.shape[0], x.shape[1]
        h = rms(x, lp["input_layernorm.weight"])
        q = constrain((h @ lp["self_attn.q_proj.weight"].T).reshape(B, T, N, H), data, None, model, None)
        q = rope(q, pos).reshape(B, T, K, G, H)
        k = rope((h @ lp["self_attn.k_proj.weight"].T).reshape(B, T, K, H), pos)
        v = (h @ lp["self_attn.v_proj.weight"].T).reshape(B, T, K, H)
        s = jnp.einsum("btkgh,bskh->bktgs", q, k).astype(jnp.float32) * H**-0.5
        s = jnp.where(causal[None, None, :, None, :], s, jnp.finfo(jnp.float32).min)
        pr = jax.nn.softmax(s, axis=-1).astype(x.dtype)
        o = jnp.einsum("bktgs,bskh->btkgh", pr, v).reshape(B, T, N * H)
        x = x + o @ lp["self_attn.o_proj.weight"].T
        h = rms(x, lp["post_attention_layernorm.weight"])
        gate = jax.nn.gelu(constrain(h @ lp["mlp.gate_proj.weight"].T, data, None, model), approximate=True)
        up = constrain(h @ lp["mlp.up_proj.weight"].T, data, None, model)
        x = x + (gate * up) @ lp["mlp.down_proj.weight"].T
        return constrain(x, data, None, None)

    if remat == "full":
        layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)
    elif remat == "save-dots":
        layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.dots_saveable)

    def loss(params, tokens):
        p = {k: v.astype(jnp.bfloat16) for k, v in params.items()}
        B, T = tokens.shape
        emb = p["model.embed_tokens.weight"]
        x = constrain(emb[tokens] * jnp.asarray(math.sqrt(D), emb.dtype), data, None, None)
        pos = jnp.broadcast_to(jnp.arange(T), (B, T))
        causal = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
        if scan:
            stacked = {n: p[f"layers.{n}"] for n in LAYER}
            x, _ = jax.lax.scan(lambda c, lp: (layer(c, lp, pos, causal), None), x, stacked)
        else:
            for i in range(L):
                x = layer(x, {n: p[f"model.layers.{i}.{n}"] for n in LAYER}, pos, causal)
        logits = constrain(rms(x, p["model.norm.weight"]) @ emb.T, data, None, model)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    mask = lambda params: {k: v.ndim >= 2 for k, v in params.items()}
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask))

    def step(params, opt_state, tokens):
        value, grads = jax.value_and_grad(loss)(params, tokens)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    param_sh = {k: NamedSharding(mesh, s) for k, s in shardings.items()}
    abstract = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=param_sh[k]) for k, s in shapes.items()}
    opt_state = jax.eval_shape(opt.init, abstract)
    opt_sh = jax.tree.map(lambda a: a.sharding if hasattr(a, "sharding") and a.sharding is not None else NamedSharding(mesh, P()), opt_state)
    # The moments take their parameter's split (the tree's leaves under mu/nu are named like params).
    opt_sh = jax.tree_util.tree_map_with_path(
        lambda path, a: param_sh[path[-1].key] if hasattr(path[-1], "key") and path[-1].key in param_sh and a.shape == shapes[path[-1].key]
        else NamedSharding(mesh, P()), opt_state)
    opt_abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), opt_state, opt_sh)
    tok_sh = NamedSharding(mesh, P(batch_axes, None))
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=tok_sh)
    jitted = jax.jit(step, in_shardings=(param_sh, opt_sh, tok_sh), out_shardings=(param_sh, opt_sh, NamedSharding(mesh, P())),
                     donate_argnums=(0, 1))
    t0 = time.perf_counter()
    lowered = jitted.lower(abstract, opt_abstract, tokens)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    with open(hlo_out, "w") as f:
        f.write(compiled.as_text())
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    print(json.dumps({
        "side": f"jax {jax.__version__}", "mode": mode, "remat": remat, "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
        "arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes, "aliased": m.alias_size_in_bytes,
        "temporaries": m.temp_size_in_bytes, "code": m.generated_code_size_in_bytes,
        "flops": cost.get("flops") if cost else None,
    }))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), a[3], a[4], a[5], a[6], a[7], a[8])
