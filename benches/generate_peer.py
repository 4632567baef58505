"""The peer side of benches/generate.sh: transformers' GemmaForCausalLM (PyTorch eager, CPU)
generating with its KV cache.

  python generate_peer.py make CONFIG DIR     writes DIR/config.json, model.safetensors (seeded
                                              random weights) and prompt.npy (int32 [1, 16])
  python generate_peer.py time DIR NEW        prints one JSON line: prefill and decode tokens/s

Decode tokens/s = (NEW - 1) / (time of generate(NEW) - time of generate(1)), greedy, EOS
ignored (min_new_tokens = NEW), one row: the same work as `gemma-xla generate --ignore-eos`.
"""
import json
import sys
import time

import numpy as np
import torch
from transformers import GemmaConfig, GemmaForCausalLM

CONFIGS = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=16),
    "perf": dict(vocab_size=8192, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=1, head_dim=64),
}


def make(name, out):
    torch.manual_seed(0)
    cfg = GemmaConfig(**CONFIGS[name], max_position_embeddings=2048, rms_norm_eps=1e-6,
                      hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1, pad_token_id=0)
    model = GemmaForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    rng = np.random.default_rng(0)
    np.save(f"{out}/prompt.npy", rng.integers(3, cfg.vocab_size, size=(1, 16)).astype(np.int32))


def timed(model, ids, new):
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, use_cache=True, pad_token_id=0)
    return time.perf_counter() - start


def time_generate(out, new):
    model = GemmaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.from_numpy(np.load(f"{out}/prompt.npy").astype(np.int64))
    timed(model, ids, 4)  # warm-up
    one = min(timed(model, ids, 1) for _ in range(3))
    full = min(timed(model, ids, new) for _ in range(2))
    print(json.dumps({"prefill_tokens_per_s": ids.shape[1] / one, "decode_tokens_per_s": (new - 1) / max(full - one, 1e-9),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        time_generate(sys.argv[2], int(sys.argv[3]))
