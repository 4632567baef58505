//! The evaluator against lm-evaluation-harness 0.4.13's own scoring of the fixture model
//! (fixtures/eval, made by make_reference.py with the harness's HFLM), against `forward`'s
//! log-softmax, and across batch sizes: through the library, as a Rust user calls it.
use anyhow::Result;
use decode::text::{ModelText, TextTokenizer};
use decode::{Generator, Placement};
use eval::{self, Kind};
use gemma::{Checkpoint, Config};
use graph::{DType, Tensor, Tree};
use jit::Jit;
use runtime::HostArray;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    testkit::repo().join("fixtures")
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids(v: &Value) -> Vec<i32> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()
}

/// Scores task-file `text` on the fixture model with `batch` rows: each item's result as the
/// `--out` lines write it, the per-task summary, and the tokens run through the model.
fn score(text: &str, batch: usize) -> Result<(Vec<Value>, serde_json::Map<String, Value>, usize)> {
    let dir = fixtures().join("generate");
    let cfg = Config::from_json_file(&dir.join("config.json"))?;
    let info = ModelText::load(&dir)?;
    let tok = TextTokenizer::load(&dir, None)?;
    let items = eval::parse("tasks.jsonl", text, tok.as_ref(), cfg.vocab_size, info.context)?;
    let ck = data::checkpoint::open(&dir)?;
    ck.validate(&cfg)?;
    let (client, _cache) = testkit::cpu_client(1);
    let params = data::checkpoint::param_views(&ck, &cfg)?;
    let mut g = Generator::new(&client, &cfg, &params, Placement::single(DType::F32), batch, eval::cache_len(&items, info.context))?;
    let mut progressed = 0;
    let outcomes = eval::evaluate(&mut g, &items, tok.as_ref(), &info.eos, |n, _| progressed += n)?;
    assert_eq!(progressed, eval::sequences(&items));
    let json = outcomes.iter().map(|(i, o)| eval::outcome_json(*i, &items[*i], o)).collect();
    let tokens = g.timing.prefill_tokens + g.timing.decode_tokens;
    Ok((json, eval::summarize(&items, &outcomes), tokens))
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
fn scores_match_lm_eval_harness_and_do_not_depend_on_the_batch() -> Result<()> {
    let reference = lines(&fixtures().join("eval/reference.jsonl"));
    let want: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("eval/reference_summary.json"))?)?;
    let text = std::fs::read_to_string(fixtures().join("eval/tasks.jsonl"))?;
    let (one, summary_one, tokens_one) = score(&text, 1)?;
    let (eight, summary_eight, tokens_eight) = score(&text, 8)?;
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
        let g = &summary_one[task];
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
    assert_eq!(summary_one, summary_eight);
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
    assert!(tokens_eight < tokens_one, "{tokens_one} tokens at batch 1, {tokens_eight} at batch 8");
    Ok(())
}

#[test]
fn loglikelihoods_are_sums_of_forward_log_softmax() -> Result<()> {
    let f = fixtures();
    let dir = f.join("generate");
    let cfg = Config::from_json_file(&dir.join("config.json"))?;
    let ck = Checkpoint::open(&dir)?;
    let (client, _cache) = testkit::cpu_client(1);
    let forward = Jit::new("forward", &client, |a: &Tree<Tensor>| gemma::model(&cfg, a, gemma::ModelOptions::default()));
    // The fixture's items and two partial-scoring (WinoGrande-style) items: one context per
    // option, the shared continuation scored after each.
    let mut text = std::fs::read_to_string(f.join("eval/tasks.jsonl"))?;
    text.push_str("{\"task\": \"toy_partial\", \"contexts\": [\"The trophy did not fit in the bag because the trophy\", \"The trophy did not fit in the bag because the bag\"], \"continuation\": \" was too big.\", \"gold\": 0}\n");
    text.push_str("{\"task\": \"toy_partial\", \"contexts\": [\"Anna gave Maria her book because Anna\", \"Anna gave Maria her book because Maria\"], \"continuation\": \" asked for it.\", \"gold\": 1}\n");
    let scores = score(&text, 4)?.0;
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
