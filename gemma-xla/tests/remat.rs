//! Rematerialisation (`--remat full|save-dots`) changes memory and FLOPs, never values: the
//! loss and every gradient of the transformers-made fixture equal the plain ones, a few
//! sharded train steps end at the same weights, and the compiled step has the barriers.
use anyhow::Result;
use gemma::{Checkpoint, Config, ModelOptions};
use graph::{DType, Remat, Tensor, Tree};
use jit::Jit;
use runtime::{Client, HostArray, PluginSpec};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    testkit::fixtures("gemma").join(name)
}

/// Loss and gradients of the gqa fixture (f32) with the decoder layers called as `remat` says.
fn loss_and_grads(client: &Client, remat: Remat) -> Result<Vec<(String, Vec<f32>)>> {
    let dir = fixture("gqa");
    let cfg = Config::from_json_file(&dir.join("config.json"))?;
    let ck = Checkpoint::open(&dir)?;
    let tokens = data::npy::read(&dir.join("tokens.npy"))?;
    let ids: Vec<i32> = tokens.to_vec::<i64>()?.into_iter().map(|i| i as i32).collect();
    let (b, t) = (tokens.dims()[0], tokens.dims()[1]);
    let mut args: Tree<HostArray> = Tree::new();
    for (name, _) in gemma::param_shapes(&cfg) {
        let r = ck.get(&name).unwrap();
        args.insert(format!("params.{name}"), HostArray::from_bytes(r.dtype, r.shape, r.bytes.to_vec())?)?;
    }
    args.insert("tokens", HostArray::from_vec(&[b, t], ids)?)?;
    let opts = ModelOptions { remat, ..ModelOptions::default() };
    let jit = Jit::new("grads", client, |a: &Tree<Tensor>| -> Result<Tree<Tensor>, graph::Error> {
        let f = gemma::trace_model(&cfg, DType::F32, b, t, opts)?;
        Ok(graph::value_and_grad_tree(&f, "loss", "params")?.call_tree(a))
    });
    let out = jit.call_host(&args)?;
    let text = jit.last_function().unwrap().to_stablehlo()?;
    let barriers = text.matches("stablehlo.optimization_barrier").count();
    assert_eq!(barriers > 0, remat != Remat::None, "{remat}: {barriers} barriers");
    Ok(out.into_leaves().into_iter().filter(|(n, _)| n != "logits").map(|(n, v)| (n, v.to_vec::<f32>().unwrap())).collect())
}

#[test]
fn remat_leaves_the_loss_and_every_gradient_unchanged() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    let plain = loss_and_grads(&client, Remat::None)?;
    assert_eq!(plain.len(), 1 + gemma::param_shapes(&Config::from_json_file(&fixture("gqa").join("config.json"))?).len());
    for remat in [Remat::Full, Remat::SaveDots] {
        for ((name, x), (_, y)) in loss_and_grads(&client, remat)?.iter().zip(&plain) {
            let scale = y.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
            let worst = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(worst <= 1e-6 * scale, "{remat}: {name} differs by {worst} (scale {scale})");
        }
    }
    Ok(())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gemma_xla(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_gemma-xla")).args(args).current_dir(repo()).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn sharded_train_steps_with_remat_match_and_the_program_has_barriers() {
    let root = std::env::temp_dir().join(format!("gemma-xla-remat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let common = ["train", "--steps", "3", "--batch", "4", "--seq", "16", "--log-every", "1", "--sample", "0", "--mesh", "data=2,model=2"];
    let mut runs = Vec::new();
    for remat in ["none", "full", "save-dots"] {
        let out = root.join(remat);
        gemma_xla(&[&common[..], &["--remat", remat, "--out", out.to_str().unwrap()]].concat());
        runs.push((remat, losses(&out), std::fs::read(out.join("model.safetensors")).unwrap()));
    }
    let (_, want, _) = &runs[0];
    for (remat, got, _) in &runs[1..] {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs(), "--remat {remat}: loss {g} vs {w}");
        }
    }
    let dump = root.join("dump");
    let summary = gemma_xla(&["dump", "--config", "tiny", "--what", "train-step", "--remat", "full", "--out", dump.to_str().unwrap()]);
    assert!(summary.contains("all-reduce"), "{summary}");
    let mlir = std::fs::read_to_string(dump.join("stablehlo.mlir")).unwrap();
    // Two layers, each recomputed from its input, positions, mask and nine weights.
    assert!(mlir.matches("stablehlo.optimization_barrier").count() >= 2 * 10, "too few barriers");
    std::fs::remove_dir_all(&root).unwrap();
}
