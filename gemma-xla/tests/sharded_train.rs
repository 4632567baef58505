//! `train` across meshes as a command: a checkpoint saved from one mesh resumed on another,
//! the collectives of the partitioned step, bad meshes. The step on every mesh against one
//! device, and the seed-only initialisation, are library tests (train/tests/meshes.rs).
use std::path::{Path, PathBuf};
use std::process::Output;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn train(args: &[&str]) -> Output {
    let o =
        testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).arg("train").args(args).current_dir(repo()).output().expect("spawn gemma-xla");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "train {args:?} failed:\n{err}");
    o
}

fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("sharded-{name}"))
}

/// A tiny MQA config with 8 query heads, so that model=8 splits whole heads.
fn config(dir: &Path) -> String {
    let cfg = r#"{"model_type": "gemma", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 8,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "gelu_pytorch_tanh"}"#;
    let path = dir.join("config.json");
    std::fs::write(&path, cfg).unwrap();
    path.to_str().unwrap().to_string()
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

/// Every tensor of two safetensors files, as f32.
fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .iter()
        .map(|n| (n.clone(), st.tensor(n).unwrap().data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        .collect()
}

/// Every tensor within `tol` x max(1, max|w|) (f32 reduction orders differ between meshes,
/// and Adam's normalised update amplifies that noise for small gradients).
fn close(a: &Path, b: &Path, tol: f64, what: &str) {
    for ((n, x), (_, y)) in weights(a).iter().zip(weights(b)) {
        let scale = y.iter().fold(1f32, |m, v| m.max(v.abs())) as f64;
        let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs() as f64).fold(0.0, f64::max);
        assert!(worst <= tol * scale, "{what}: {n} differs by {worst} (scale {scale})");
    }
}

#[test]
fn a_checkpoint_saved_on_one_mesh_resumes_on_another() {
    let root = scratch("reshard");
    let cfg = config(&root);
    let run = [
        "--steps",
        "6",
        "--batch",
        "8",
        "--seq",
        "16",
        "--schedule",
        "constant",
        "--warmup",
        "4",
        "--sample",
        "0",
        "--log-every",
        "1",
        "--config",
        &cfg,
    ];
    let straight = root.join("straight");
    train(&[&run[..], &["--mesh", "data=2,model=4", "--save-every", "3", "--out", straight.to_str().unwrap()]].concat());
    for target in ["model=8", "data=1"] {
        let out = root.join(target.replace('=', "_"));
        let mut first = run.to_vec();
        first[1] = "3";
        train(&[&first[..], &["--mesh", "data=2,model=4", "--out", out.to_str().unwrap()]].concat());
        // Another mesh reduces in another order: the run changes within f32 rounding, so the
        // resume must say so.
        let refused = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
            .args([&["train"][..], &run[..], &["--mesh", target, "--resume", "--out", out.to_str().unwrap()]].concat())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && err.contains("--resume-override mesh"), "{err}");
        train(&[&run[..], &["--mesh", target, "--resume", "--resume-override", "mesh", "--out", out.to_str().unwrap()]].concat());
        let (a, b) = (losses(&straight), losses(&out));
        assert_eq!(a.len(), b.len());
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-5 * x.abs(), "resumed on {target}, step {k}: {y} vs {x}");
        }
        close(&out.join("model.safetensors"), &straight.join("model.safetensors"), 1e-5, target);
    }
    std::fs::remove_dir_all(root).unwrap();
}

/// The optimised, partitioned HLO of one train step (XLA's own dump), with the collectives
/// counted by kind.
fn partitioned_hlo(extra: &[&str]) -> String {
    let root = scratch(&format!("hlo{}", extra.len()));
    let dump = root.join("dump");
    let out = root.join("out");
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["train", "--steps", "1", "--mesh", "data=2,model=2", "--batch", "8", "--seq", "16", "--sample", "0", "--out"])
        .arg(&out)
        .args(extra)
        .env("XLA_FLAGS", format!("--xla_dump_to={} --xla_dump_hlo_as_text", dump.display()))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("train_step.cpu_after_optimizations.txt"))
        .expect("XLA's dump of the optimised train step");
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::remove_dir_all(root).unwrap();
    text
}

/// The instructions of one kind (`all-gather`, `all-reduce`, ...), one line each.
fn ops<'a>(hlo: &'a str, kind: &str) -> Vec<&'a str> {
    hlo.lines().filter(|l| l.contains(&format!(" {kind}("))).collect()
}

#[test]
fn the_partitioned_step_has_the_collectives_a_user_expects() {
    // tiny on data=2,model=2: vocab 256 and MLP 128 split over model, batch over data.
    let hlo = partitioned_hlo(&[]);
    assert!(
        ops(&hlo, "all-gather").is_empty(),
        "no all-gather without FSDP (not of the embedding, not of logits):\n{:?}",
        ops(&hlo, "all-gather")
    );
    // Gradients are summed over `data` (XLA names the mesh axes axis_0, axis_1): every one of
    // tiny's 20 parameter shards, the vocab-split embedding [128, 64] among them. With the
    // layers as a loop (the default) the 9 weights of a layer are summed in the backward
    // loop's body, once per layer: 4 + 9 in the program; unrolled, all 20.
    let data_sums = |hlo: &str| -> (usize, bool) {
        // XLA writes the data groups {0,2},{1,3} in its mesh form or its iota form.
        let sums: Vec<&str> = ops(hlo, "all-reduce")
            .into_iter()
            .filter(|l| l.contains("{'axis_0'}") || l.contains("replica_groups=[2,2]<=[2,2]T(1,0)"))
            .collect();
        let operands: usize = sums.iter().map(|l| l.split(" all-reduce(").next().unwrap().matches("f32[").count()).sum();
        (operands, sums.iter().any(|l| l.contains("f32[128,64]")))
    };
    let (operands, embedding) = data_sums(&hlo);
    assert!(operands >= 13 && embedding, "gradient sums over data cover {operands} tensors (embedding: {embedding})");
    let unrolled = partitioned_hlo(&["--no-scan-layers"]);
    let (operands, embedding) = data_sums(&unrolled);
    assert!(operands >= 20 && embedding, "unrolled: gradient sums over data cover {operands} tensors (embedding: {embedding})");

    // With FSDP the weights are gathered over `data`, layer by layer, and the activations
    // keep the batch split (no gather of [8, 16, ...] activations).
    let hlo = partitioned_hlo(&["--fsdp"]);
    let gathers = ops(&hlo, "all-gather");
    let weights =
        gathers.iter().filter(|l| ["f32[64,64]", "f32[64,32]", "f32[128,64]"].iter().any(|s| l.contains(&format!("= {s}")))).count();
    assert!(weights >= 8, "FSDP weight gathers: {gathers:?}");
    assert!(!gathers.iter().any(|l| l.contains("= f32[8,16,")), "an activation was gathered over the batch: {gathers:?}");
}

#[test]
fn bad_meshes_are_refused_before_compiling() {
    let run = |args: &[&str]| {
        let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
            .arg("train")
            .args(args)
            .args(["--steps", "1", "--sample", "0"])
            .current_dir(repo())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run(&["--mesh", "data=2,model=2", "--devices", "8"]);
    assert!(err.contains("the mesh data=2,model=2 has 4 devices but --devices is 8"), "{err}");
    let err = run(&["--mesh", "data=2,tensor=2"]);
    assert!(err.contains("tensor"), "{err}");
    let err = run(&["--mesh", "data=2,data=2"]);
    assert!(err.contains("data") && err.contains("twice"), "{err}");
    // tiny has 4 heads: model=3 splits neither them nor the vocabulary of 256.
    let err = run(&["--mesh", "model=3"]);
    assert!(err.contains("does not divide") && err.contains("meshes of 3 devices that work"), "{err}");
    // 7B's state (8.5 G parameters, 3 f32 copies: 95 GiB) is refused before allocating.
    let err = run(&["--config", "7b", "--mesh", "data=1"]);
    assert!(err.contains("does not fit in the") && err.contains("gemma-xla plan"), "{err}");
    let err = run(&["--mesh", "data=4", "--batch", "6"]);
    assert!(err.contains("batch") && err.contains('6'), "{err}");
}
