"""Renders benches/run.sh's results (JSON lines) as the BENCHMARKS.md sections run.sh owns,
and splices them in between the `benches/run.sh` markers, keeping every other section.

python3 benches/report.py --results R.jsonl --machine TEXT --rounds N --perf-steps N --tiny-steps N [--torch 0|1] [--write BENCHMARKS.md]
(standard library only)
"""
import argparse
import collections
import datetime
import json
import re
import statistics

BEGIN = "<!-- begin: written by benches/run.sh; edits here are overwritten -->"
END = "<!-- end: written by benches/run.sh -->"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--perf-steps", type=int, required=True)
    ap.add_argument("--tiny-steps", type=int, required=True)
    ap.add_argument("--torch", type=int, default=0)
    ap.add_argument("--write")
    a = ap.parse_args()
    runs = collections.defaultdict(list)  # (bench, who) -> results in round order
    for line in open(a.results):
        r = json.loads(line)
        runs[(r["bench"], r["who"])].append(r["result"])

    def med(bench, who, key):
        return statistics.median(r[key] for r in runs[(bench, who)])

    def per_round(bench, key, peer="jax"):
        return [o[key] / j[key] for o, j in zip(runs[(bench, "ours")], runs[(bench, peer)])]

    jax_version = runs[("perf1", "jax")][0]["side"]
    peak = med("matmul", "ours", "gflops")
    today = datetime.date.today().isoformat()
    out = [BEGIN, ""]
    out.append(f"Written by `benches/run.sh` (rounds {a.rounds}) on {today}. Machine: {a.machine}. Peer: {jax_version} "
               "(CPU, pip, benches/.venv). Every ratio is ours / JAX from runs alternated in that one invocation "
               "(ours, JAX, ours, JAX, ...; fresh processes); medians over rounds. Below 1 means we are faster.")
    out.append("")

    out.append("### f32 matmul peak of this machine")
    out.append("")
    out.append("`train_step matmul 2048 5`: a 2048 x 2048 x 2048 f32 product through `jit`, arrays on the device, "
               "median of 5 executions; JAX: `jax.jit(lambda x, y: x @ y)`, the same.")
    out.append("")
    out.append("| | ms | GFLOP/s |")
    out.append("|---|---|---|")
    out.append(f"| gemma-xla | {med('matmul', 'ours', 'median_ms'):.1f} | **{peak:.1f}** (the peak used below) |")
    out.append(f"| {jax_version} | {med('matmul', 'jax', 'median_ms'):.1f} | {med('matmul', 'jax', 'gflops'):.1f} |")
    out.append("")

    def step_section(bench, title, cmd_ours, cmd_jax, note, extra=()):
        o, j = runs[(bench, "ours")], runs[(bench, "jax")]
        gflop = o[0]["gflop"]
        om, jm = med(bench, "ours", "median_ms"), med(bench, "jax", "median_ms")
        oc, jc = med(bench, "ours", "cpu_ms"), med(bench, "jax", "cpu_ms")
        out.append(f"### {title}")
        out.append("")
        out.append(note)
        out.append("")
        out.append(f"Ours: `{cmd_ours}`. JAX: `{cmd_jax}`.")
        out.append("")
        out.append("| | median step (wall) | best step | CPU time per step | GFLOP/s (wall) | of the matmul peak | first step (compile) |")
        out.append("|---|---|---|---|---|---|---|")
        for name, who, m, c in (("gemma-xla", "ours", om, oc), (jax_version, "jax", jm, jc)):
            out.append(f"| {name} | {m:.1f} ms | {med(bench, who, 'min_ms'):.1f} ms | {c:.0f} ms | {gflop / m * 1e3:.1f} | "
                       f"{gflop / m * 1e3 / peak * 100:.0f}% | {med(bench, who, 'first_step_s'):.1f} s |")
        ratios = ", ".join(f"{x:.2f}" for x in per_round(bench, "median_ms"))
        out.append(f"| **ours / JAX** | **{om / jm:.2f}x** (per round: {ratios}) | {med(bench, 'ours', 'min_ms') / med(bench, 'jax', 'min_ms'):.2f}x | "
                   f"{oc / jc:.2f}x | | | |")
        for who, label, ratio_label in extra:
            if not runs[(bench, who)]:
                continue
            xm, xc = med(bench, who, "median_ms"), med(bench, who, "cpu_ms")
            name = label.format(side=runs[(bench, who)][0]["side"])
            out.append(f"| {name} | {xm:.1f} ms | {med(bench, who, 'min_ms'):.1f} ms | {xc:.0f} ms | {gflop / xm * 1e3:.1f} | "
                       f"{gflop / xm * 1e3 / peak * 100:.0f}% | {med(bench, who, 'first_step_s'):.1f} s |")
            if ratio_label:
                rr = ", ".join(f"{x:.2f}" for x in per_round(bench, "median_ms", who))
                out.append(f"| **{ratio_label}** | **{om / xm:.2f}x** (per round: {rr}) | "
                           f"{med(bench, 'ours', 'min_ms') / med(bench, who, 'min_ms'):.2f}x | {oc / xc:.2f}x | | | |")
        out.append("")
        tail = [f"ours {o[-1]['loss']:.4f}", f"JAX {j[-1]['loss']:.4f}"]
        if runs[(bench, "torch")]:
            tail.append(f"torch {runs[(bench, 'torch')][-1]['loss']:.4f}")
        if any(runs[(bench, who)] for who, _, _ in extra):
            out.append("Rows: `gemma-xla` runs as shipped, with glibc's `glibc.malloc.hugetlb=1` tunable "
                       "(`runtime::host_malloc`: transparent huge pages for XLA's scratch memory); 'glibc defaults' is the "
                       "same binary with `GLIBC_TUNABLES=`; the JAX row is JAX as users run it, and 'JAX + hugetlb' is "
                       "JAX with the same tunable, so the table shows what the setting is worth to each side."
                       + (" `torch` is transformers' GemmaForCausalLM (sdpa attention) with `torch.optim.AdamW` and "
                          "`clip_grad_norm_`, eager (`benches/torch_train_step.py`), fetching the loss every step."
                          if runs[(bench, "torch")] else ""))
            out.append("")
        out.append(f"{gflop:.1f} GFLOP per step (2 x multiply-adds of the forward's products, x3 for the backward; "
                   f"embedding lookups and elementwise work not counted). Losses after the last step: "
                   f"{', '.join(tail)} (same data, different random initial weights).")
        out.append("")

    step_section("perf1", "Train step, perf config, one CPU device",
                 f"benches/src/bin/train_step.rs step perf.json 4 128 data=1 {a.perf_steps}",
                 f"benches/jax_train_step.py step perf.json 4 128 data=1 {a.perf_steps}",
                 "Forward, backward, global-norm clipping and AdamW in one program (JAX: `jax.jit` of value_and_grad + "
                 "`optax.chain(clip_by_global_norm(1), adamw(...))`, params and optimizer state donated); d_model 512, "
                 "8 heads, 1 kv head, head_dim 64, MLP 2048, 4 layers, vocab 8192; batch 4 x 128, f32. State on the device; "
                 f"every step uploads the batch and fetches the metrics (loss, grad_norm, lr), as a run logging every step; "
                 f"{a.perf_steps} timed steps after the first (which compiles).",
                 extra=(("ours-default-malloc", "gemma-xla, glibc defaults", ""),
                        ("jax-hugetlb", "{side} + hugetlb", "ours / (JAX + hugetlb)"),
                        ("torch", "{side}", "ours / torch")))
    step_section("perf4", "Train step, perf config, 4 CPU devices (data=2, model=2)",
                 f"train_step step perf.json 4 128 data=2,model=2 {a.perf_steps}",
                 f"XLA_FLAGS=--xla_force_host_platform_device_count=4 jax_train_step.py step perf.json 4 128 data=2,model=2 "
                 f"{a.perf_steps} specs.json",
                 "The same step over a 2 x 2 mesh of CPU devices on this machine's cores. Every parameter and both AdamW "
                 "moments split as `gemma::rules` says (`train_step specs` writes them as JSON; JAX places its arrays "
                 "with `NamedSharding`s over the same specs, the moments follow their parameters), the batch over `data`. "
                 "Ours also constrains the activations as the rules say; JAX propagates from the inputs.")

    o, j = runs[("tiny", "ours")], runs[("tiny", "jax")]
    om, jm = med("tiny", "ours", "median_ms"), med("tiny", "jax", "median_ms")
    out.append("### Host overhead: the tiny config's step")
    out.append("")
    out.append(f"`train_step step tiny.json 8 64 data=1 {a.tiny_steps}` vs `jax_train_step.py step tiny.json 8 64 data=1 "
               f"{a.tiny_steps}`: the tiny preset (86 K parameters), batch 8 x 64, one device, where dispatch dominates. "
               "Each step uploads the batch, runs the step and fetches the three metrics (logging every step). "
               "'Host between steps' is our wall time per step minus the PJRT execution time (what the loop spends "
               "outside the program: argument tree, upload, checks, fetches).")
    out.append("")
    out.append("| | per step (wall, median) | best | host between steps |")
    out.append("|---|---|---|---|")
    out.append(f"| gemma-xla | {om * 1e3:.0f} us | {med('tiny', 'ours', 'min_ms') * 1e3:.0f} us | {med('tiny', 'ours', 'host_median_us'):.0f} us |")
    out.append(f"| {jax_version} | {jm * 1e3:.0f} us | {med('tiny', 'jax', 'min_ms') * 1e3:.0f} us | (not separable) |")
    out.append(f"| **ours / JAX** | **{om / jm:.2f}x** | | |")
    out.append("")

    if runs[("startup-cold", "ours")]:
        oc, ow = med("startup-cold", "ours", "startup_ms"), med("startup-warm", "ours", "startup_ms")
        jc, jw = med("startup-cold", "jax", "startup_ms"), med("startup-warm", "jax", "startup_ms")
        hits = [r["cache_hits"] for r in runs[("startup-warm", "ours")]]
        misses = [r["cache_misses"] for r in runs[("startup-cold", "ours")]]
        out.append("### Start-up: trace + lower + compile of the perf step, cold and warm")
        out.append("")
        out.append("`train_step startup perf.json 4 128 CACHE` vs `jax_train_step.py startup perf.json 4 128 CACHE`: the "
                   "one-device f32 train step of the perf config, from the jitted function to a loaded executable, in a fresh "
                   "process. Cold: the cache directory is emptied first; warm: the next process, with the entry the cold one "
                   "wrote (ours: `runtime::CompileCache`, as `--cache-dir` in the CLI; JAX: `jax_compilation_cache_dir` with "
                   "its minimum compile time and entry size set to 0). Ours still traces and lowers when warm; the key is "
                   f"the program text. Our cold runs compiled ({misses} misses), our warm runs loaded ({hits} hits).")
        out.append("")
        out.append("| | cold | warm | cold / warm |")
        out.append("|---|---|---|---|")
        out.append(f"| gemma-xla | {oc:.0f} ms | {ow:.0f} ms | **{oc / ow:.1f}x** |")
        out.append(f"| {jax_version} | {jc:.0f} ms | {jw:.0f} ms | {jc / jw:.1f}x |")
        out.append(f"| **ours / JAX** | **{oc / jc:.2f}x** | **{ow / jw:.2f}x** | |")
        out.append("")

    out.append("### Trace + lower of the 2B- and 7B-shaped train steps")
    out.append("")
    out.append("`train_step trace PRESET 5` vs `jax_train_step.py trace PRESET 2`: the whole train step (bf16-compute "
               "model, value_and_grad, clipping, AdamW over f32 master weights; batch 8 x 2048) traced and lowered to "
               "StableHLO text, shapes only, no compile. JAX: a fresh `jax.jit(step, donate_argnums=(0, 1))"
               ".lower(...).as_text()` each time (no trace-cache hits).")
    out.append("")
    out.append("| preset | gemma-xla median | every run (ms) | trace / lower | JAX median | ours / JAX |")
    out.append("|---|---|---|---|---|---|")
    for p in ("2b", "7b"):
        b = f"trace-{p}"
        every = ", ".join(f"{t:.0f}" for r in runs[(b, "ours")] for t in r["times_ms"])
        om, jm = med(b, "ours", "median_ms"), med(b, "jax", "median_ms")
        out.append(f"| {p} | {om:.1f} ms | {every} | {med(b, 'ours', 'trace_ms'):.1f} / {med(b, 'ours', 'lower_ms'):.1f} ms | "
                   f"{jm:.0f} ms | **{om / jm:.3f}x** ({jm / om:.0f}x faster) |")
    out.append("")
    out.append(END)
    text = "\n".join(out) + "\n"
    print(text)
    if a.write:
        doc = open(a.write).read()
        if BEGIN in doc and END in doc:
            doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", lambda _: text, doc, flags=re.S)
        else:  # first run: after the introduction, before the first section
            at = doc.index("\n## ") + 1
            doc = doc[:at] + "## Against JAX: train step, host overhead, trace (benches/run.sh)\n\n" + text + "\n" + doc[at:]
        open(a.write, "w").write(doc)


if __name__ == "__main__":
    main()
