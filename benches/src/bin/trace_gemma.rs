//! Time to trace, differentiate and lower a Gemma train step (loss + gradients of every
//! parameter) for a model preset, shapes only (no weights). Compare with
//! benches/jax_trace_gemma.py, which does the same with jax.jit(...).lower(...).
//!
//! `cargo run --release -p benches --bin trace_gemma -- [7b|2b|tiny] [reps]`
use anyhow::Result;
use graph::DType;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(String::as_str).unwrap_or("7b");
    let reps: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(7);
    let cfg = gemma::Config::preset(preset)?;
    let (batch, seq) = (8, 2048);
    let mut times = Vec::new();
    let mut stats = (0, 0, 0);
    for _ in 0..reps {
        let t0 = Instant::now();
        let f = gemma::trace_loss(&cfg, DType::Bf16, batch, seq)?;
        let t1 = Instant::now();
        let n = f.params.len() - 1; // every parameter but the tokens
        let g = graph::value_and_grad(&f, &(0..n).collect::<Vec<_>>())?;
        let t2 = Instant::now();
        let text = g.to_stablehlo()?;
        let t3 = Instant::now();
        times.push([(t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64(), (t3 - t2).as_secs_f64(), (t3 - t0).as_secs_f64()]);
        stats = (f.nodes.len(), g.nodes.len(), text.len());
    }
    let median = |k: usize| {
        let mut v: Vec<f64> = times.iter().map(|t| t[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    println!(
        "gemma-xla {preset} (layers={}, batch={batch}, seq={seq}, bf16): forward nodes {}, with backward {}, StableHLO {} bytes",
        cfg.num_hidden_layers, stats.0, stats.1, stats.2
    );
    println!(
        "median of {reps}: trace {:.1} ms, value_and_grad {:.1} ms, lower {:.1} ms, total {:.1} ms",
        median(0),
        median(1),
        median(2),
        median(3)
    );
    Ok(())
}
