//! Gemma 2 and Gemma 3 through the commands: a multimodal Gemma 3 checkpoint's language model,
//! train (sharded), resume, LoRA, eval, dump (window-sized caches), plan and compile; bad
//! checkpoints refused. The numbers against transformers are in decode/tests/gemma23.rs.
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    testkit::fixtures("gemma23").join(name)
}

fn run(args: &[&str]) -> std::process::Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).args(args).output().unwrap()
}

/// Token ids in [1, 64) (the fixtures' vocabulary), [rows, seq].
fn tokens(path: &Path, rows: usize, seq: usize) {
    let ids: Vec<i32> = (0..rows * seq).map(|i| 1 + ((i * 37 + i / seq * 11) % 63) as i32).collect();
    let a = runtime::HostArray::from_vec(&[rows as i64, seq as i64], ids).unwrap();
    std::fs::write(path, data::npy::encode_array(&a).unwrap()).unwrap();
}

fn loss_of(path: &Path) -> f64 {
    testkit::safetensors_f64(path)["loss"].1[0]
}

#[test]
fn a_multimodal_gemma3_checkpoint_runs_as_its_language_model() {
    let dir = testkit::scratch_dir("gemma3-mm");
    let text = fixture("gemma3");
    // transformers 5's Gemma3ForConditionalGeneration layout: model.language_model.*, a
    // vision tower and projector beside it, the config's text part in text_config.
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(text.join("config.json")).unwrap()).unwrap();
    let mm = serde_json::json!({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": cfg, "vision_config": {"hidden_size": 8}});
    std::fs::write(dir.join("config.json"), mm.to_string()).unwrap();
    let weights = testkit::safetensors_f64(&text.join("model.safetensors"));
    let mut owned: Vec<(String, Vec<i64>, Vec<u8>)> = weights
        .iter()
        .map(|(n, (shape, v))| {
            let name = n.replacen("model.", "model.language_model.", 1);
            (name, shape.iter().map(|&d| d as i64).collect(), v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect())
        })
        .collect();
    owned.push(("model.vision_tower.patch_embedding.weight".into(), vec![2, 2], vec![0; 16]));
    owned.push(("model.multi_modal_projector.mm_input_projection_weight".into(), vec![2], vec![0; 8]));
    let tensors: Vec<gemma::SaveTensor> =
        owned.iter().map(|(n, s, b)| gemma::SaveTensor { name: n.clone(), dtype: graph::DType::F32, shape: s.clone(), bytes: b }).collect();
    gemma::save_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let out = dir.join("mm.safetensors");
    let o = run(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        text.join("tokens.npy").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let log = testkit::succeeded(&o);
    assert!(log.contains("vision tower is ignored"), "{log}");
    let want = testkit::safetensors_f64(&text.join("reference.safetensors"))["loss"].1[0];
    let got = loss_of(&out);
    assert!((got - want).abs() <= 2e-6 * want, "{got} vs transformers {want}");
    // Without the language model's weights it is an error naming what is missing.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(dir.join("config.json"), empty.join("config.json")).unwrap();
    let vision: Vec<gemma::SaveTensor> = owned
        .iter()
        .filter(|(n, _, _)| n.contains("vision"))
        .map(|(n, s, b)| gemma::SaveTensor { name: n.clone(), dtype: graph::DType::F32, shape: s.clone(), bytes: b })
        .collect();
    gemma::save_safetensors(&empty.join("model.safetensors"), &vision).unwrap();
    let o = run(&[
        "forward",
        "--model",
        empty.to_str().unwrap(),
        "--tokens",
        text.join("tokens.npy").to_str().unwrap(),
        "--out",
        dir.join("x.safetensors").to_str().unwrap(),
    ]);
    let err = testkit::failed(&o);
    assert!(err.contains("missing") && err.contains("model.embed_tokens.weight"), "{err}");
}

#[test]
fn a_gemma2_checkpoint_with_qk_norm_weights_is_refused() {
    let dir = testkit::scratch_dir("gemma2-qnorm");
    let src = fixture("gemma2");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let weights = testkit::safetensors_f64(&src.join("model.safetensors"));
    let mut owned: Vec<(String, Vec<i64>, Vec<u8>)> = weights
        .iter()
        .map(|(n, (shape, v))| {
            (n.clone(), shape.iter().map(|&d| d as i64).collect(), v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect())
        })
        .collect();
    owned.push(("model.layers.0.self_attn.q_norm.weight".into(), vec![12], vec![0; 48]));
    let tensors: Vec<gemma::SaveTensor> =
        owned.iter().map(|(n, s, b)| gemma::SaveTensor { name: n.clone(), dtype: graph::DType::F32, shape: s.clone(), bytes: b }).collect();
    gemma::save_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let o = run(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        src.join("tokens.npy").to_str().unwrap(),
        "--out",
        dir.join("o.safetensors").to_str().unwrap(),
    ]);
    let err = testkit::failed(&o);
    assert!(err.contains("unexpected") && err.contains("model.layers.0.self_attn.q_norm.weight"), "{err}");
}

#[test]
fn train_resume_lora_and_eval_work_on_gemma2_and_gemma3() {
    let dir = testkit::scratch_dir("gemma23-train");
    let data = dir.join("tokens.npy");
    tokens(&data, 8, 12);
    for name in ["gemma2", "gemma3"] {
        let init = fixture(name);
        let common = |out: &Path, steps: &str| -> Vec<String> {
            ["train", "--init", init.to_str().unwrap(), "--data", data.to_str().unwrap(), "--devices", "4", "--mesh", "data=2,model=2"]
                .iter()
                .map(|s| s.to_string())
                .chain(
                    ["--batch", "4", "--steps", steps, "--schedule", "constant", "--warmup", "0", "--lr", "1e-2", "--log-every", "1"]
                        .iter()
                        .map(|s| s.to_string()),
                )
                .chain(["--save-every", "2", "--sample", "0", "--out"].iter().map(|s| s.to_string()))
                .chain([out.to_str().unwrap().to_string()])
                .collect()
        };
        let whole = dir.join(format!("{name}-whole"));
        let args = common(&whole, "4");
        testkit::succeeded(&run(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        let metrics = testkit::json_lines(&whole.join("metrics.jsonl"));
        assert!(metrics.last().unwrap()["loss"].as_f64().unwrap() < metrics[0]["loss"].as_f64().unwrap(), "{name} learns");
        // Two steps, then two more from the checkpoint: the same weights bit for bit.
        let split = dir.join(format!("{name}-split"));
        let args = common(&split, "2");
        testkit::succeeded(&run(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        let mut args = common(&split, "4");
        args.push("--resume".into());
        testkit::succeeded(&run(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert!(read(&whole) == read(&split), "{name}: resumed weights differ");
        // LoRA on the new members' projections.
        let lora = dir.join(format!("{name}-lora"));
        let mut args = common(&lora, "2");
        args.extend(["--lora-rank", "2", "--lora-targets", "q_proj,k_proj,v_proj,o_proj,down_proj"].iter().map(|s| s.to_string()));
        testkit::succeeded(&run(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        assert!(lora.join("adapter_model.safetensors").is_file());
        // eval on token ids (the fixture has no tokenizer), with the adapter too.
        let tasks = dir.join("tasks.jsonl");
        std::fs::write(
            &tasks,
            "{\"context_ids\": [2, 5, 9, 14, 20, 27, 30], \"choices_ids\": [[3, 4], [40], [41, 42, 43]], \"gold\": 1}\n",
        )
        .unwrap();
        for adapter in [None, Some(&lora)] {
            let mut args = vec!["eval", "--model", init.to_str().unwrap(), "--tasks", tasks.to_str().unwrap()];
            if let Some(a) = adapter {
                args.extend(["--adapter", a.to_str().unwrap()]);
            }
            let o = run(&args);
            let text = testkit::succeeded(&o);
            assert!(text.contains("acc"), "{name}: {text}");
        }
    }
}

#[test]
fn dump_plan_and_compile_cover_the_new_members() {
    let dir = testkit::scratch_dir("gemma23-inspect");
    // decode: the sliding layers' caches hold the window (3), the global ones the cache (16).
    let out = dir.join("dump");
    let cfg = fixture("gemma2").join("config.json");
    testkit::succeeded(&run(&[
        "dump",
        "--config",
        cfg.to_str().unwrap(),
        "--what",
        "decode",
        "--batch",
        "2",
        "--seq",
        "8",
        "--cache-len",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(out.join("stablehlo.mlir")).unwrap();
    assert!(text.contains("tensor<2x3x2x12xf32>") && text.contains("tensor<2x16x2x12xf32>"), "window-sized and full caches");
    // plan: the new norms and QK-norm weights are listed and counted.
    let o = run(&["plan", "--config", "gemma3-27b", "--mesh", "data=4,model=4", "--batch", "16", "--seq", "1024"]);
    let text = testkit::succeeded(&o);
    assert!(text.contains("27009346304 parameters"), "{text}");
    for t in ["self_attn.q_norm.weight", "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"] {
        assert!(text.contains(&format!("model.layers.*.{t}")), "{t}: {text}");
    }
    // compile: a Gemma 3 train step for a v5e slice.
    let cfg = fixture("gemma3").join("config.json");
    let o = run(&[
        "compile",
        "--topology",
        "v5e:2x2",
        "--config",
        cfg.to_str().unwrap(),
        "--mesh",
        "data=2,model=2",
        "--batch",
        "4",
        "--seq",
        "16",
    ]);
    let text = testkit::succeeded(&o);
    assert!(text.contains("memory per chip"), "{text}");
}

#[test]
fn eval_with_window_sized_caches_scores_as_full_recomputation() {
    // Contexts longer than the window (3), choices sharing the context's cache rows: each
    // choice's log-likelihood equals the sum of log-softmax over a full forward pass.
    let dir = testkit::scratch_dir("gemma23-eval");
    let model = fixture("gemma2");
    let context = [2, 5, 9, 14, 20, 27, 30, 11];
    let choices: [&[i32]; 3] = [&[3, 4], &[40], &[41, 42, 43]];
    let tasks = dir.join("tasks.jsonl");
    let line = serde_json::json!({"context_ids": context, "choices_ids": choices, "gold": 1});
    std::fs::write(&tasks, format!("{line}\n{line}\n")).unwrap();
    let scores = dir.join("scores.jsonl");
    testkit::succeeded(&run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        tasks.to_str().unwrap(),
        "--batch",
        "3",
        "--out",
        scores.to_str().unwrap(),
    ]));
    let got: Vec<f64> = testkit::json_lines(&scores)[0]["loglikelihoods"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (c, choice) in choices.iter().enumerate() {
        let seq: Vec<i32> = context.iter().chain(choice.iter()).copied().collect();
        let npy = dir.join(format!("seq{c}.npy"));
        let a = runtime::HostArray::from_vec(&[1, seq.len() as i64], seq.clone()).unwrap();
        std::fs::write(&npy, data::npy::encode_array(&a).unwrap()).unwrap();
        let out = dir.join(format!("f{c}.safetensors"));
        testkit::succeeded(&run(&[
            "forward",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            npy.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]));
        let logits = &testkit::safetensors_f64(&out)["logits"].1;
        let v = 64;
        let mut want = 0.0;
        for (j, &tok) in choice.iter().enumerate() {
            let t = context.len() - 1 + j; // the position predicting choice token j
            let row = &logits[t * v..(t + 1) * v];
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            want += row[tok as usize] - lse;
        }
        assert!((got[c] - want).abs() <= 1e-4 * want.abs().max(1.0), "choice {c}: eval {} vs recomputed {want}", got[c]);
    }
}
