"""PyTorch's train step, the eager peer of benches/src/bin/train_step.rs (asked for with
`benches/run.sh --torch`): transformers' GemmaForCausalLM built from the same config, its
own shifted cross-entropy (labels = the tokens), backward, clip_grad_norm_(1.0) and
torch.optim.AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only, the same
warmup + cosine schedule as the JAX peer), no torch.compile; the loss fetched every step.

python benches/torch_train_step.py step CONFIG.json BATCH SEQ STEPS [f32|bf16]

One device (the CPU, torch's default thread count). Prints one JSON line, like the other sides.
"""
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import transformers


def step_cmd(cfg_path, batch, seq, steps, compute="f32"):
    cfg = json.load(open(cfg_path))
    torch.manual_seed(0)
    config = transformers.GemmaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=cfg.get("rope_theta", 10000.0),
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=max(seq, 8), tie_word_embeddings=True,
        attn_implementation="sdpa")
    dtype = torch.bfloat16 if compute == "bf16" else torch.float32
    model = transformers.GemmaForCausalLM(config).to(dtype)
    with torch.no_grad():  # as the other sides: N(0, 0.02) matrices, zero norm weights (Gemma scales by 1 + w)
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.zero_()
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    lr, warmup, total, min_lr = 3e-3, 20, 1000, 3e-4  # `gemma-xla train`'s defaults
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    floor = min_lr / lr
    schedule = lambda s: (s + 1) / warmup if s < warmup else floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    V = cfg["vocab_size"]
    batches = [torch.from_numpy(((np.arange(batch * seq) * 7919 + b * 104729 + 1) % (V - 1) + 1).astype(np.int64).reshape(batch, seq))
               for b in range(4)]
    times, first, losses = [], 0.0, []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        tokens = batches[i % 4]
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        m = {"loss": loss.item(), "grad_norm": grad_norm.item()}  # logging every step
        dt = time.perf_counter() - t0
        losses.append(round(m["loss"], 4))
        if i == 0:
            first = dt
            cpu0 = time.process_time()
        else:
            times.append(dt)
    assert math.isfinite(m["loss"]), m
    print(json.dumps({"side": f"torch {torch.__version__} eager, transformers {transformers.__version__}",
                      "median_ms": round(statistics.median(times) * 1e3, 3), "min_ms": round(min(times) * 1e3, 3),
                      "cpu_ms": round((time.process_time() - cpu0) / len(times) * 1e3, 1), "threads": torch.get_num_threads(),
                      "first_step_s": round(first, 2), "steps": len(times), "loss": round(m["loss"], 6), "losses": losses}))


def main():
    a = sys.argv[1:]
    if len(a) >= 5 and a[0] == "step":
        step_cmd(a[1], int(a[2]), int(a[3]), int(a[4]), *(a[5:6]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
