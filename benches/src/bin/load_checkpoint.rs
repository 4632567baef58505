//! Peak host memory and time to load a Gemma-2B-shaped bf16 checkpoint with
//! `gemma::Checkpoint` (memory-mapped): open, validate every name and shape, and read every
//! byte (a checksum, so all pages are really touched).
//!
//! cargo run --release -p benches --bin load_checkpoint -- write DIR   (once; ~5 GB)
//! cargo run --release -p benches --bin load_checkpoint -- load DIR
//! benches/load_checkpoint.sh runs both and the Python safetensors peer.
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;

fn peak_rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    let kb: u64 = line.split_whitespace().nth(1).context("bad VmHWM")?.parse()?;
    Ok(kb * 1024)
}

fn write(dir: &Path) -> Result<()> {
    let cfg = gemma::Config::preset("2b")?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"model_type": "gemma", "vocab_size": {}, "hidden_size": {}, "intermediate_size": {}, "num_hidden_layers": {}, "num_attention_heads": {}, "num_key_value_heads": {}, "head_dim": {}, "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 10000.0, "rms_norm_eps": 1e-6}}"#,
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
    )?;
    let shapes = gemma::param_shapes(&cfg);
    // Random-looking bf16 bit patterns (not zeros: zero pages would flatter the numbers).
    let mut seed = 1u64;
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, s)| {
            let n = s.iter().product::<i64>() as usize;
            (0..n)
                .flat_map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let bits = (0x3c00 | ((seed >> 40) as u16 & 0x03ff)) ^ (((seed >> 20) as u16 & 1) << 15);
                    bits.to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, s), d)| {
            let shape: Vec<usize> = s.iter().map(|&x| x as usize).collect();
            (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape, d).expect("view"))
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    let size = std::fs::metadata(dir.join("model.safetensors"))?.len();
    println!("wrote {} ({:.2} GB)", dir.join("model.safetensors").display(), size as f64 / 1e9);
    Ok(())
}

fn load(dir: &Path) -> Result<()> {
    let size = std::fs::metadata(dir.join("model.safetensors"))?.len();
    let t0 = Instant::now();
    let cfg = gemma::Config::from_json_file(&dir.join("config.json"))?;
    let ck = gemma::Checkpoint::open(dir)?;
    ck.validate(&cfg)?;
    let t_open = t0.elapsed();
    let mut sum = 0u64;
    for (name, _) in gemma::param_shapes(&cfg) {
        let t = ck.get(&name).context("validated")?;
        sum = t.bytes.chunks(8).fold(sum, |acc, c| acc.wrapping_add(c.iter().map(|&b| b as u64).sum::<u64>()));
    }
    let t_all = t0.elapsed();
    let peak = peak_rss_bytes()?;
    println!(
        "gemma-xla: checkpoint {:.2} GB; open+validate {:.1} ms; open+validate+read every byte {:.2} s; peak RSS {:.2} GB = {:.2}x the checkpoint (checksum {sum})",
        size as f64 / 1e9,
        t_open.as_secs_f64() * 1e3,
        t_all.as_secs_f64(),
        peak as f64 / 1e9,
        peak as f64 / size as f64
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("write"), Some(dir)) => write(Path::new(dir)),
        (Some("load"), Some(dir)) => load(Path::new(dir)),
        _ => bail!("usage: load_checkpoint write|load DIR"),
    }
}
