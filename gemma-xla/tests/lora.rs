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
    // The adapter read with --lora-init, and a --chat-template file, are inputs: no output
    // lands on them or inside the adapter's directory.
    let init = dir.join("init-copy");
    std::fs::create_dir_all(&init).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(testkit::fixtures("lora").join("init").join(f), init.join(f)).unwrap();
    }
    let err = testkit::failed(&train(&init, &["--lora-init", init.to_str().unwrap()]));
    assert!(err.contains("refusing to write") && err.contains("it is the input") && err.contains("adapter_model.safetensors"), "{err}");
    let err = testkit::failed(&train(&init.join("sub"), &["--lora-init", init.to_str().unwrap()]));
    assert!(err.contains("refusing to write --out") && err.contains("the input --lora-init"), "{err}");
    let template = dir.join("t").join("loss.svg");
    std::fs::create_dir_all(template.parent().unwrap()).unwrap();
    std::fs::write(&template, "{{ messages }}").unwrap();
    let err = testkit::failed(&train(&dir.join("t"), &["--chat-template", template.to_str().unwrap()]));
    assert!(err.contains("refusing to write") && err.contains("loss.svg"), "{err}");
    assert_eq!(std::fs::read_to_string(&template).unwrap(), "{{ messages }}");
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

/// A trained adapter and its merged model: (adapter dir = OUT, merged model dir = OUT).
fn trained(dir: &Path) -> PathBuf {
    let out = dir.join("run");
    testkit::succeeded(&train(&out, &["--lora-init", "fixtures/lora/init", "--devices", "1", "--merge"]));
    out
}

fn forward_loss(model: &str, adapter: Option<&Path>, out: &Path) -> f64 {
    let mut c = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"));
    c.args(["forward", "--model", model, "--tokens", "fixtures/lora/tokens.npy", "--out", out.to_str().unwrap()]);
    if let Some(a) = adapter {
        c.args(["--adapter", a.to_str().unwrap()]);
    }
    testkit::succeeded(&c.output().unwrap());
    testkit::safetensors_f64(out)["loss"].1[0]
}

#[test]
fn forward_generate_and_eval_apply_an_adapter_unmerged() {
    let dir = testkit::scratch_dir("lora-adapter");
    let run = trained(&dir);
    // forward: the adapter on the base equals the merged model, and differs from the base.
    let with = forward_loss("fixtures/generate", Some(&run), &dir.join("f1.safetensors"));
    let merged = forward_loss(run.to_str().unwrap(), None, &dir.join("f2.safetensors"));
    let base = forward_loss("fixtures/generate", None, &dir.join("f3.safetensors"));
    assert!((with - merged).abs() <= 1e-5 * merged.abs(), "adapter {with} vs merged {merged}");
    assert!((with - base).abs() > 1e-3, "the adapter changes the model: {with} vs {base}");
    // generate: greedy continuations equal the merged model's.
    let gen = |model: &str, adapter: Option<&Path>| {
        let mut c = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"));
        c.args(["generate", "--model", model, "--prompt", "Owen rides", "--max-new-tokens", "12"]);
        c.args(["--tokenizer", "fixtures/generate/tokenizer.json"]);
        if let Some(a) = adapter {
            c.args(["--adapter", a.to_str().unwrap()]);
        }
        let o = c.output().unwrap();
        testkit::succeeded(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(gen("fixtures/generate", Some(&run)), gen(run.to_str().unwrap(), None));
    // eval: the adapter's scores are the merged model's.
    let eval = |model: &str, adapter: Option<&Path>, name: &str| {
        let out = dir.join(name);
        let mut c = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"));
        c.args(["eval", "--model", model, "--tasks", "fixtures/eval/tasks.jsonl", "--out", out.to_str().unwrap()]);
        c.args(["--tokenizer", "fixtures/generate/tokenizer.json"]);
        if let Some(a) = adapter {
            c.args(["--adapter", a.to_str().unwrap()]);
        }
        testkit::succeeded(&c.output().unwrap());
        testkit::json_lines(&out)
    };
    let (a, m) = (eval("fixtures/generate", Some(&run), "a.jsonl"), eval(run.to_str().unwrap(), None, "m.jsonl"));
    assert_eq!(a.len(), m.len());
    for (x, y) in a.iter().zip(&m) {
        assert_eq!(x["pred"], y["pred"]);
        let (lx, ly) = (x["loglikelihoods"].as_array(), y["loglikelihoods"].as_array());
        if let (Some(lx), Some(ly)) = (lx, ly) {
            for (p, q) in lx.iter().zip(ly) {
                let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
                assert!((p - q).abs() <= 1e-4 * q.abs().max(1.0), "{p} vs {q}");
            }
        }
    }
    // The adapter's files are inputs: forward and eval refuse to write over them.
    let adapter_file = run.join("adapter_model.safetensors");
    let before = std::fs::read(&adapter_file).unwrap();
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["forward", "--model", "fixtures/generate", "--tokens", "fixtures/lora/tokens.npy", "--adapter", run.to_str().unwrap()])
        .args(["--out", adapter_file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = testkit::failed(&o);
    assert!(err.contains("refusing to write") && err.contains("adapter_model.safetensors"), "{err}");
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["eval", "--model", "fixtures/generate", "--tasks", "fixtures/eval/tasks.jsonl", "--adapter", run.to_str().unwrap()])
        .args(["--tokenizer", "fixtures/generate/tokenizer.json", "--out", run.join("adapter_config.json").to_str().unwrap()])
        .output()
        .unwrap();
    let err = testkit::failed(&o);
    assert!(err.contains("refusing to write") && err.contains("adapter_config.json"), "{err}");
    assert_eq!(std::fs::read(&adapter_file).unwrap(), before);
    // A bad adapter directory is an error naming it.
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["forward", "--model", "fixtures/generate", "--tokens", "fixtures/lora/tokens.npy", "--adapter", "fixtures/generate"])
        .args(["--out", dir.join("bad.safetensors").to_str().unwrap()])
        .output()
        .unwrap();
    let err = testkit::failed(&o);
    assert!(err.contains("--adapter fixtures/generate") && err.contains("adapter_config.json"), "{err}");
}

/// PEFT loads the adapter `train` wrote (peft.PeftModel.from_pretrained on the base) and
/// computes the loss forward --adapter computes. Needs Python with torch, transformers and
/// peft: GEMMA_XLA_PEFT_PYTHON=/path/to/python.
#[test]
#[ignore = "needs Python with torch, transformers and peft (pip install ...): set GEMMA_XLA_PEFT_PYTHON"]
fn peft_loads_what_train_wrote() {
    let python = std::env::var("GEMMA_XLA_PEFT_PYTHON").expect("GEMMA_XLA_PEFT_PYTHON");
    let dir = testkit::scratch_dir("lora-peft");
    let run = trained(&dir);
    let o = std::process::Command::new(python)
        .arg(testkit::fixtures("lora").join("make_reference.py"))
        .args(["--load", run.to_str().unwrap()])
        .current_dir(testkit::repo())
        .output()
        .unwrap();
    let text = testkit::succeeded(&o);
    let line = text.lines().find(|l| l.starts_with("{\"loss\"")).unwrap_or_else(|| panic!("{text}"));
    let peft: f64 = serde_json::from_str::<serde_json::Value>(line).unwrap()["loss"].as_f64().unwrap();
    // Its loss is over tokens.npy's first four rows: ours over the same rows.
    let four = dir.join("four.npy");
    let all = data::npy::read_token_ids(&testkit::fixtures("lora").join("tokens.npy"), 512, 2).unwrap();
    let rows = all.slice(&[0..4, 0..8]).unwrap();
    std::fs::write(&four, data::npy::encode_array(&rows).unwrap()).unwrap();
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["forward", "--model", "fixtures/generate", "--adapter", run.to_str().unwrap(), "--tokens", four.to_str().unwrap()])
        .args(["--out", dir.join("f.safetensors").to_str().unwrap()])
        .output()
        .unwrap();
    testkit::succeeded(&o);
    let ours = testkit::safetensors_f64(&dir.join("f.safetensors"))["loss"].1[0];
    assert!((ours - peft).abs() <= 1e-5 * peft.abs(), "ours {ours} vs PEFT {peft}");
}
