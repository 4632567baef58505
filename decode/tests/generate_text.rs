//! `generate` against transformers on the fixture in fixtures/generate (made by its
//! make_fixtures.py): a Gemma-style tokenizer (BPE with byte fallback) and tokenizer_config
//! with Gemma's chat template, and a tiny GQA model. Checks greedy tokens and logits against
//! `generate(do_sample=False)`, tokenization and chat formatting against transformers, and the
//! command's errors.
use anyhow::Result;
use decode::chat::Message;
use decode::text::TextTokenizer;
use decode::{Generator, Placement};
use gemma::{Checkpoint, Config};
use graph::{DType, Tree};
use runtime::HostView;
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    testkit::fixtures("generate")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i32> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()
}

fn read_i32(path: &std::path::Path) -> (Vec<i64>, Vec<i32>) {
    let a = data::npy::read(path).unwrap();
    (a.dims().to_vec(), a.to_vec::<i32>().unwrap())
}

fn tokenizer() -> TextTokenizer {
    TextTokenizer::load(&dir(), None).unwrap().expect("the fixture has a tokenizer.json")
}

#[test]
fn tokenization_matches_transformers() {
    let t = tokenizer();
    assert_eq!(t.add_bos, Some(true));
    for case in json("tokenizer_cases.json")["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(t.encode(text, false).unwrap(), ids(&case["ids_no_special"]), "{text:?} without special tokens");
        assert_eq!(t.encode(text, true).unwrap(), ids(&case["ids_with_special"]), "{text:?} with BOS");
        let decoded = t.decode(&ids(&case["ids_with_special"])).unwrap();
        assert_eq!(decoded, case["decode_with_special_ids_skip_special"].as_str().unwrap(), "{text:?} decoded");
    }
}

#[test]
fn chat_prompts_match_apply_chat_template() {
    let t = tokenizer();
    let cases = json("chat_cases.json");
    assert_eq!(t.chat_template.as_deref(), cases["chat_template"].as_str());
    let messages = |v: &Value| -> Vec<Message> {
        v.as_array().unwrap().iter().map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect()
    };
    for case in cases["cases"].as_array().unwrap() {
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let text = t.chat_prompt(&messages(&case["messages"]), agp).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{} (add_generation_prompt {agp})", case["name"]);
        // apply_chat_template(tokenize=True) adds no special tokens: the template wrote BOS.
        assert_eq!(t.encode(&text, false).unwrap(), ids(&case["ids"]), "{} ids", case["name"]);
    }
    for case in cases["errors"].as_array().unwrap() {
        let err = t.chat_prompt(&messages(&case["messages"]), true).unwrap_err().to_string();
        assert!(err.contains(case["message"].as_str().unwrap()), "{}: {err}", case["name"]);
    }
}

#[test]
fn greedy_tokens_and_logits_match_transformers() -> Result<()> {
    let d = dir();
    let cfg = Config::from_json_file(&d.join("config.json"))?;
    let ck = Checkpoint::open(&d)?;
    let mut p: Tree<HostView> = Tree::new();
    for (name, _) in gemma::param_shapes(&cfg) {
        let r = ck.get(&name).unwrap();
        p.insert(name, HostView { dtype: r.dtype, dims: r.shape, bytes: r.bytes })?;
    }
    let (pdims, prompts) = read_i32(&d.join("prompts.npy"));
    let (gdims, greedy) = read_i32(&d.join("greedy.npy"));
    let want_logits = data::npy::read(&d.join("greedy_logits.npy"))?.to_vec::<f32>()?;
    let (b, t, n) = (pdims[0] as usize, pdims[1] as usize, (gdims[1] - pdims[1]) as usize);
    let v = cfg.vocab_size as usize;
    let (client, _cache) = testkit::cpu_client(1);
    let mut g = Generator::new(&client, &cfg, &p, Placement::single(DType::F32), b, 32)?;
    let rows: Vec<&[i32]> = prompts.chunks(t).collect();
    let mut logits = g.extend(&rows, &vec![0; b])?;
    let mut worst = 0f32;
    for step in 0..n {
        let mut next = Vec::new();
        for (row, l) in logits.iter().enumerate() {
            let want = &want_logits[(row * n + step) * v..(row * n + step + 1) * v];
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            worst = worst.max(l.iter().zip(want).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
            let id = (0..v).max_by(|&i, &j| l[i].total_cmp(&l[j]).then(j.cmp(&i))).unwrap() as i32;
            assert_eq!(id, greedy[row * (t + n) + t + step], "row {row} step {step}");
            next.push([id]);
        }
        let refs: Vec<&[i32]> = next.iter().map(|x| &x[..]).collect();
        logits = g.extend(&refs, &vec![t + step; b])?;
    }
    assert!(worst < 1e-5, "logits differ from transformers' by {worst} of the largest");
    Ok(())
}
