//! LoRA training against PEFT + torch.optim.AdamW in float64 (fixtures/lora/make_reference.py):
//! the tiny Gemma of fixtures/generate, adapters of rank 4 on q_proj, v_proj and down_proj,
//! started from the same PEFT adapter (fixtures/lora/init, read with --lora-init), five steps
//! with clipping, warmup and cosine; on one device and on data=2,model=2. Also: the files are
//! PEFT's, resume is bit-exact, --merge writes W + (alpha/r) B A, and bad settings are refused.
use std::path::{Path, PathBuf};

const HYPER: [&str; 14] =
    ["--batch", "4", "--steps", "5", "--lr", "1e-2", "--warmup", "1", "--min-lr", "1e-3", "--weight-decay", "0.1", "--clip", "0.5"];

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["train", "--init", "fixtures/generate", "--data", "fixtures/lora/tokens.npy", "--log-every", "1"])
        .args(HYPER)
        .args(extra)
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap()
}

fn adapters(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    testkit::safetensors_f64(path)
}

#[test]
fn lora_training_matches_peft_in_float64() {
    let reference = testkit::safetensors_f64(&testkit::fixtures("lora").join("reference.safetensors"));
    let dir = testkit::scratch_dir("lora");
    for (devices, mesh) in [("1", "data=1"), ("4", "data=2,model=2")] {
        let out = dir.join(mesh.replace([',', '='], "_"));
        let log = testkit::succeeded(&train(&out, &["--lora-init", "fixtures/lora/init", "--devices", devices, "--mesh", mesh]));
        assert!(log.contains("3328 LoRA parameters (rank 4, alpha 8, q_proj,v_proj,down_proj; 106816 frozen)"), "{log}");
        let metrics = testkit::json_lines(&out.join("metrics.jsonl"));
        assert_eq!(metrics.len(), 5);
        for (s, m) in metrics.iter().enumerate() {
            for key in ["loss", "grad_norm"] {
                let (got, want) = (m[key].as_f64().unwrap(), reference[key].1[s]);
                assert!((got - want).abs() <= 2e-5 * want.abs(), "{mesh} step {}: {key} {got} vs PEFT {want}", s + 1);
            }
        }
        // The adapters after five steps, in PEFT's file.
        let got = adapters(&out.join("adapter_model.safetensors"));
        let mut worst = 0f64;
        let mut n = 0;
        for (name, (shape, want)) in reference.iter().filter(|(k, _)| k.starts_with("params.")) {
            let file_name = format!("base_model.model.{}", &name["params.".len()..]);
            let (s, g) = got.get(&file_name).unwrap_or_else(|| panic!("no {file_name}"));
            assert_eq!(s, shape);
            let scale = want.iter().fold(1f64, |m, x| m.max(x.abs()));
            for (a, b) in g.iter().zip(want) {
                worst = worst.max((a - b).abs() / scale);
            }
            n += 1;
        }
        assert_eq!(n, got.len());
        assert!(worst <= 1e-4, "{mesh}: adapters differ from PEFT's by {worst:e} (scaled)");
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!((config["r"].as_i64(), config["lora_alpha"].as_f64()), (Some(4), Some(8.0)));
        assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));
        assert_eq!((config["lora_dropout"].as_f64(), config["bias"].as_str()), (Some(0.0), Some("none")));
        assert_eq!((config["task_type"].as_str(), config["fan_in_fan_out"].as_bool()), (Some("CAUSAL_LM"), Some(false)));
        assert_eq!(config["use_rslora"].as_bool(), Some(false));
        assert_eq!(config["base_model_name_or_path"], "fixtures/generate");
    }
}

#[test]
fn lora_resumes_bit_for_bit_and_merges() {
    let dir = testkit::scratch_dir("lora-resume");
    let whole = dir.join("whole");
    testkit::succeeded(&train(&whole, &["--lora-rank", "4", "--lora-targets", "q_proj,o_proj,up_proj", "--devices", "1", "--merge"]));
    // The same run stopped after step 2 (its later checkpoints and outputs removed), resumed.
    let split = dir.join("split");
    testkit::succeeded(&train(
        &split,
        &["--lora-rank", "4", "--lora-targets", "q_proj,o_proj,up_proj", "--devices", "1", "--save-every", "2"],
    ));
    for f in ["checkpoints/step_4", "checkpoints/step_5"] {
        std::fs::remove_dir_all(split.join(f)).unwrap();
    }
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::remove_file(split.join(f)).unwrap();
    }
    let ck = split.join("checkpoints/step_2");
    for f in ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json", "config.json"] {
        assert!(ck.join(f).is_file(), "the checkpoint holds {f}");
    }
    assert!(!ck.join("model.safetensors").exists(), "a LoRA checkpoint holds no base weights");
    let log =
        testkit::succeeded(&train(&split, &["--lora-rank", "4", "--lora-targets", "q_proj,o_proj,up_proj", "--devices", "1", "--resume"]));
    assert!(log.contains("resumed from"), "{log}");
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    assert!(read(whole.join("adapter_model.safetensors")) == read(split.join("adapter_model.safetensors")), "resumed adapters differ");
    // --merge: W + (alpha/r) B A for the targets, the other weights as they were.
    let base = testkit::safetensors_f64(&testkit::fixtures("generate").join("model.safetensors"));
    let merged = testkit::safetensors_f64(&whole.join("model.safetensors"));
    let ad = adapters(&whole.join("adapter_model.safetensors"));
    assert_eq!(merged.len(), base.len());
    for (name, (shape, w)) in &base {
        let got = &merged[name].1;
        let a = ad.get(&format!("base_model.model.{}", name.replace(".weight", ".lora_A.weight")));
        let b = ad.get(&format!("base_model.model.{}", name.replace(".weight", ".lora_B.weight")));
        let want: Vec<f64> = match (a, b) {
            (Some((_, a)), Some((_, b))) => {
                let (rows, cols, r) = (shape[0], shape[1], 4);
                (0..rows * cols).map(|k| w[k] + 2.0 * (0..r).map(|j| b[(k / cols) * r + j] * a[j * cols + k % cols]).sum::<f64>()).collect()
            }
            _ => w.clone(),
        };
        let worst = got.iter().zip(&want).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0f64, f64::max);
        assert!(worst <= 1e-6, "{name}: merged differs by {worst:e}");
    }
}

#[test]
fn bad_lora_settings_are_refused() {
    let dir = testkit::scratch_dir("lora-bad");
    let cases: &[(&[&str], &str)] = &[
        (&["--lora-rank", "4", "--lora-targets", "q_proj,embed_tokens"], "\"embed_tokens\" is not a projection"),
        (&["--lora-rank", "0"], "--lora-rank 0"),
        (&["--lora-rank", "33", "--lora-targets", "k_proj"], "must be in 1..=32 for k_proj"),
        (&["--lora-rank", "4", "--lora-alpha", "0"], "--lora-alpha 0"),
        (&["--lora-alpha", "4"], "need --lora-rank"),
        (&["--merge"], "--merge applies to LoRA runs"),
        (&["--lora-init", "fixtures/lora/init", "--lora-rank", "8"], "--lora-rank 8 disagrees"),
        (&["--lora-init", "fixtures/lora/init", "--lora-targets", "q_proj"], "--lora-targets q_proj disagrees"),
    ];
    for (i, (flags, want)) in cases.iter().enumerate() {
        let err = testkit::failed(&train(&dir.join(format!("o{i}")), flags));
        assert!(err.contains(want), "{flags:?}: {err}");
    }
    // Flags that agree with --lora-init are fine (targets compare as sets).
    let ok =
        train(&dir.join("ok"), &["--lora-init", "fixtures/lora/init", "--lora-targets", "down_proj,q_proj,v_proj", "--lora-alpha", "8"]);
    testkit::succeeded(&ok);
    // An adapter made for another base: the tiny preset has one kv head, so its v_proj is
    // [16, 64] where the adapter's B is [32, 4].
    let other = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args([
            "train",
            "--config",
            "tiny",
            "--lora-init",
            "fixtures/lora/init",
            "--steps",
            "1",
            "--out",
            dir.join("other").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = testkit::failed(&other);
    assert!(err.contains("adapter_model.safetensors") && err.contains("this model needs"), "{err}");
}
