//! Conversations as training rows, against transformers: the text `apply_chat_template`
//! renders, the ids its tokenizer gives without special tokens, and the assistant weights
//! transformers' `return_assistant_tokens_mask` gives (fixtures/sft/make_reference.py).
use anyhow::Result;
use data::sft::{chat_row, chat_rows, read_conversations, ChatFormat};
use data::{Dataset, Tokenizer};
use std::path::Path;

fn format() -> ChatFormat {
    let template = std::fs::read_to_string(testkit::fixtures("sft").join("chat_template.jinja")).unwrap();
    ChatFormat { template: Some(template), bos: "<bos>".into(), eos: "<eos>".into(), end_of_turn: "<end_of_turn>".into(), pad_id: 0 }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::load(Some(&testkit::fixtures("generate").join("tokenizer.json"))).unwrap()
}

fn hf(t: &Tokenizer) -> &data::tokenizers::Tokenizer {
    match t {
        Tokenizer::Hf(t, _) => t,
        Tokenizer::Bytes => panic!("an HF tokenizer"),
    }
}

#[test]
fn rows_and_weights_equal_transformers() -> Result<()> {
    let dir = testkit::fixtures("sft");
    let want: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("rows.json"))?)?;
    let conversations = read_conversations(&dir.join("conversations.jsonl"))?;
    assert_eq!(conversations.len(), want.len());
    let tok = tokenizer();
    for (c, w) in conversations.iter().zip(&want) {
        let row = chat_row(c, &format(), hf(&tok))?;
        assert_eq!(row.text, w["text"].as_str().unwrap(), "{}", c.at);
        let ids: Vec<i32> = w["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
        let weights: Vec<u8> = w["weights"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        assert_eq!(row.ids, ids, "{}", c.at);
        assert_eq!(row.weights, weights, "{}", c.at);
    }
    // As a dataset: right-padded with the pad id to the longest, weights 0 there.
    let ds = Dataset::load_chat(&dir.join("conversations.jsonl"), &format(), &tok, None, 512)?;
    let longest = want.iter().map(|w| w["ids"].as_array().unwrap().len()).max().unwrap();
    assert_eq!((ds.rows(), ds.seq()), (want.len(), longest));
    let first = ds.row(0).unwrap();
    let n = want[0]["ids"].as_array().unwrap().len();
    assert!(first[n..].iter().all(|&t| t == 0));
    let w = ds.batch_weights(0, 1, None)?.to_vec::<f32>()?;
    assert!(w[n..].iter().all(|&x| x == 0.0));
    assert_eq!(w.iter().sum::<f32>(), want[0]["weights"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).sum::<f32>());
    Ok(())
}

fn write(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn bad_conversations_are_errors_naming_the_line() {
    let dir = testkit::scratch("sft-bad");
    let tok = tokenizer();
    let ok = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let err = |lines: &[&str], seq: Option<usize>| -> String {
        let p = write(dir.path(), "c.jsonl", lines);
        chat_rows(&p, &format(), hf(&tok), seq, 512).unwrap_err().to_string()
    };
    let e = err(&[ok, r#"{"text": "plain"}"#], None);
    assert!(e.contains("c.jsonl:2") && e.contains("a `text` line"), "{e}");
    let e = err(&[ok, r#"{"messages": [{"role": "user", "content": "hi"}]}"#], None);
    assert!(e.contains("c.jsonl:2") && e.contains("no assistant turn"), "{e}");
    let e = err(&[r#"{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}"#], None);
    assert!(e.contains("c.jsonl:1") && e.contains("\"robot\""), "{e}");
    // The template raises on roles out of order: its message, with the line.
    let e = err(
        &[
            ok,
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}"#,
        ],
        None,
    );
    assert!(e.contains("c.jsonl:2") && e.contains("roles must alternate"), "{e}");
    let e = err(&[ok], Some(8));
    assert!(e.contains("c.jsonl:1") && e.contains("longer than --seq 8"), "{e}");
    let e = err(&[ok, "not json"], None);
    assert!(e.contains("c.jsonl:2") && e.contains("not JSON"), "{e}");
    // A template that never ends or writes without bound is stopped.
    let mut looping = format();
    looping.template = Some("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}".into());
    let p = write(dir.path(), "c.jsonl", &[ok]);
    let e = chat_rows(&p, &looping, hf(&tok), None, 512).unwrap_err().to_string();
    assert!(e.contains("without finishing") || e.contains("exceeds"), "{e}");
    // A vocabulary smaller than the tokenizer's ids.
    let e = chat_rows(&p, &format(), hf(&tok), None, 100).unwrap_err().to_string();
    assert!(e.contains("outside the model's vocabulary of 100"), "{e}");
    // Chat data needs an HF tokenizer.
    let e = Dataset::load_chat(&p, &format(), &Tokenizer::Bytes, None, 512).unwrap_err().to_string();
    assert!(e.contains("HF tokenizer"), "{e}");
}
