//! `gemma-xla eval` against lm-evaluation-harness 0.4.13's own scoring of the fixture model
//! (tests/fixtures/eval, made by make_reference.py with the harness's HFLM), against `forward`'s
//! log-softmax, across batch sizes, and on bad task files.
use anyhow::Result;
use gemma::{Checkpoint, Config};
use gemma_xla::eval::{self, Kind};
use gemma_xla::text::TextTokenizer;
use graph::{Tensor, Tree};
use jit::Jit;
use runtime::{Client, HostArray, PluginSpec};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids(v: &Value) -> Vec<i32> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()
}

fn gemma_xla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma-xla")).args(args).output().expect("spawn gemma-xla")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-xla-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_eval(batch: &str, dir: &Path) -> (Vec<Value>, Value, String) {
    run_eval_on(&fixtures().join("eval/tasks.jsonl"), batch, dir)
}

fn run_eval_on(tasks: &Path, batch: &str, dir: &Path) -> (Vec<Value>, Value, String) {
    let f = fixtures();
    let out = dir.join(format!("scores{batch}.jsonl"));
    let o = gemma_xla(&[
        "eval",
        "--model",
        f.join("generate").to_str().unwrap(),
        "--tasks",
        tasks.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        batch,
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("scores{batch}.summary.json"))).unwrap()).unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(stdout.contains("toy_mc") && stdout.contains("acc_norm"), "{stdout}");
    (lines(&out), summary, stderr)
}

#[test]
fn splits_follow_the_harness() -> Result<()> {
    let f = fixtures();
    let tok = TextTokenizer::load(&f.join("generate"), None)?.unwrap();
    let text = std::fs::read_to_string(f.join("eval/tasks.jsonl"))?;
    let items = eval::parse("tasks.jsonl", &text, Some(&tok), 512, 128)?;
    let reference = lines(&f.join("eval/reference.jsonl"));
    assert_eq!(items.len(), reference.len());
    let mut empty = 0;
    for (item, r) in items.iter().zip(&reference) {
        match &item.kind {
            Kind::Choice { contexts, continuations, .. } => {
                if let Some(enc) = r.get("context_enc").and_then(|c| c.as_array()) {
                    for (j, cont) in continuations.iter().enumerate() {
                        assert_eq!(&contexts[j], &ids(&enc[j]), "line {} context", item.line);
                        assert_eq!(cont, &ids(&r["continuation_enc"][j]), "line {} choice {j}", item.line);
                        empty += cont.is_empty() as usize;
                    }
                }
            }
            Kind::Generate { context, .. } => assert_eq!(context, &ids(&r["context_enc"]), "line {}", item.line),
        }
    }
    assert!(empty >= 1, "the fixture has a choice the harness's split leaves without tokens");
    Ok(())
}

#[test]
fn scores_match_lm_eval_harness_and_do_not_depend_on_the_batch() {
    let dir = scratch("harness");
    let reference = lines(&fixtures().join("eval/reference.jsonl"));
    let want: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("eval/reference_summary.json")).unwrap()).unwrap();
    let (one, summary_one, stderr_one) = run_eval("1", &dir);
    let (eight, summary_eight, stderr_eight) = run_eval("8", &dir);
    for (got, r) in one.iter().zip(&reference) {
        if let Some(lls) = r.get("loglikelihoods") {
            for (x, y) in got["loglikelihoods"].as_array().unwrap().iter().zip(lls.as_array().unwrap()) {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "item {}: {x} vs the harness's {y}", r["index"]);
            }
            for key in ["is_greedy", "pred", "gold"] {
                assert_eq!(got[key], r[key], "item {} {key}", r["index"]);
            }
            if !r["pred_norm"].is_null() {
                assert_eq!(got["pred_norm"], r["pred_norm"], "item {} pred_norm", r["index"]);
            }
        } else {
            assert_eq!(got["generated"], r["generated"], "item {} generated", r["index"]);
            assert_eq!(got["exact_match"].as_bool().unwrap(), r["exact_match"].as_f64().unwrap() == 1.0);
        }
    }
    for (task, w) in want["tasks"].as_object().unwrap() {
        let g = &summary_one["tasks"][task];
        assert_eq!(g["items"], w["n"], "{task}");
        for key in ["acc", "acc_stderr", "exact_match", "exact_match_stderr"] {
            if let Some(v) = w.get(key).and_then(Value::as_f64) {
                assert!((g[key].as_f64().unwrap() - v).abs() < 1e-12, "{task} {key}: {} vs {v}", g[key]);
            }
        }
        if let Some(v) = w.get("acc_norm").and_then(Value::as_f64) {
            assert!((g["acc_norm"].as_f64().unwrap() - v).abs() < 1e-12, "{task} acc_norm");
        }
    }
    // --batch 8 scores the same: same predictions and metrics; log-likelihoods agree to f32
    // rounding (the programs differ in shape).
    assert_eq!(summary_one["tasks"], summary_eight["tasks"]);
    for (a, b) in one.iter().zip(&eight) {
        for key in ["pred", "pred_norm", "is_greedy", "generated"] {
            assert_eq!(a.get(key), b.get(key), "item {} {key}", a["index"]);
        }
        if let Some(lls) = a.get("loglikelihoods") {
            for (x, y) in lls.as_array().unwrap().iter().zip(b["loglikelihoods"].as_array().unwrap()) {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "item {}: batch 1 {x} vs batch 8 {y}", a["index"]);
            }
        }
    }
    // Sharing contexts within a batch runs fewer tokens through the model.
    let tokens = |s: &str| -> usize { s.split(" tokens through").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap() };
    assert!(tokens(&stderr_eight) < tokens(&stderr_one), "{stderr_one}\n{stderr_eight}");
}

#[test]
fn loglikelihoods_are_sums_of_forward_log_softmax() -> Result<()> {
    let f = fixtures();
    let dir = f.join("generate");
    let cfg = Config::from_json_file(&dir.join("config.json"))?;
    let ck = Checkpoint::open(&dir)?;
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    let forward = Jit::new("forward", &client, |a: &Tree<Tensor>| gemma::model(&cfg, a, gemma::ModelOptions::default()));
    // The fixture's items and two partial-scoring (WinoGrande-style) items: one context per
    // option, the shared continuation scored after each.
    let scratch = scratch("forward");
    let tasks = scratch.join("tasks.jsonl");
    let mut text = std::fs::read_to_string(f.join("eval/tasks.jsonl"))?;
    text.push_str("{\"task\": \"toy_partial\", \"contexts\": [\"The trophy did not fit in the bag because the trophy\", \"The trophy did not fit in the bag because the bag\"], \"continuation\": \" was too big.\", \"gold\": 0}\n");
    text.push_str("{\"task\": \"toy_partial\", \"contexts\": [\"Anna gave Maria her book because Anna\", \"Anna gave Maria her book because Maria\"], \"continuation\": \" asked for it.\", \"gold\": 1}\n");
    std::fs::write(&tasks, &text)?;
    let scores = run_eval_on(&tasks, "4", &scratch).0;
    let tok = TextTokenizer::load(&dir, None)?.unwrap();
    let items = eval::parse("tasks.jsonl", &text, Some(&tok), 512, 128)?;
    assert_eq!(scores.len(), items.len());
    let v = cfg.vocab_size as usize;
    let mut checked = 0;
    for (item, got) in items.iter().zip(&scores) {
        let Kind::Choice { contexts, continuations, .. } = &item.kind else { continue };
        for (j, cont) in continuations.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
            let context = &contexts[j];
            // forward on context + continuation (padded to 64; causal, so padding is inert).
            let mut seq = context.clone();
            seq.extend(cont);
            let n = seq.len();
            seq.resize(64, 0);
            let mut args: Tree<HostArray> = Tree::new();
            for (name, _) in gemma::param_shapes(&cfg) {
                let r = ck.get(&name).unwrap();
                args.insert(format!("params.{name}"), HostArray::from_bytes(r.dtype, r.shape, r.bytes.to_vec())?)?;
            }
            args.insert("tokens", HostArray::from_vec(&[1, 64], seq.clone())?)?;
            let logits = forward.call_host(&args)?.leaf("logits")?.to_vec::<f32>()?;
            let mut ll = 0.0;
            for p in context.len() - 1..n - 1 {
                let row: Vec<f64> = logits[p * v..(p + 1) * v].iter().map(|&x| x as f64).collect();
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                ll += row[seq[p + 1] as usize] - lse;
            }
            let ours = got["loglikelihoods"][j].as_f64().unwrap();
            assert!((ours - ll).abs() <= 1e-5 * ll.abs().max(1.0), "line {} choice {j}: {ours} vs forward {ll}", item.line);
            checked += 1;
        }
    }
    assert!(checked >= 19, "{checked}");
    Ok(())
}

#[test]
fn bad_task_files_are_refused_before_compiling() {
    let dir = scratch("bad");
    let model = fixtures().join("generate");
    let cases: &[(&str, &str)] = &[
        ("{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 0}\nnot json\n", "tasks0.jsonl:2: not a JSON object"),
        ("{\"context\": \"a\", \"choices\": [], \"gold\": 0}", "no choices"),
        ("{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 2}", "gold 2 is out of range for 2 choices"),
        ("{\"context\": \"\", \"choices\": [\" b\"], \"gold\": 0}", "context is empty"),
        ("{\"context\": \"a\", \"choices\": [\"\"], \"gold\": 0}", "choice 0 is empty"),
        ("{\"context_ids\": [2, 900], \"choices_ids\": [[5]], \"gold\": 0}", "token 900 is outside the vocabulary [0, 512)"),
        ("{\"context\": \"a\", \"until\": [\"\\n\"], \"answers\": [\"b\"], \"max_new_tokens\": 500}", "but the model's context is 128"),
        ("{\"context\": \"a\"}", "expected \"choices\""),
        (
            "{\"context\": \"a\", \"until\": [], \"answers\": [\"b\"], \"max_new_tokens\": 18446744073709551615}",
            "but the model's context is 128",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("tasks{i}.jsonl"));
        std::fs::write(&path, text).unwrap();
        let o = gemma_xla(&["eval", "--model", model.to_str().unwrap(), "--tasks", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} succeeded");
        assert!(stderr.contains(want), "case {i}: {stderr}");
        assert!(!stderr.contains("cpu_device_count"), "case {i}: the plugin was loaded before the check: {stderr}");
    }
    // --out in a directory that does not exist: refused before anything runs.
    let path = dir.join("ok.jsonl");
    std::fs::write(&path, "{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 0}\n").unwrap();
    let missing = dir.join("missing/scores.jsonl");
    let o = gemma_xla(&["eval", "--model", model.to_str().unwrap(), "--tasks", path.to_str().unwrap(), "--out", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("does not exist") && !stderr.contains("cpu_device_count"), "{stderr}");
    // A text item for a model without a tokenizer.
    let path = dir.join("text.jsonl");
    std::fs::write(&path, "{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 0}\n").unwrap();
    let bare = fixtures().join("gemma/mqa");
    let o = gemma_xla(&["eval", "--model", bare.to_str().unwrap(), "--tasks", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("needs a tokenizer") && stderr.contains("text.jsonl:1"), "{stderr}");
}
