//! Task files are untrusted: a context that encodes to no tokens, and a scoring regex that
//! backtracks past fancy-regex's limit, are errors naming the item's line, never panics.
use anyhow::Result;
use decode::text::{ModelText, TextTokenizer};
use decode::{Generator, Placement};
use gemma::Config;
use graph::DType;

/// The fixture model's directory copied with `add_bos_token` as given.
fn model(add_bos: bool) -> Result<tempfile::TempDir> {
    let dir = testkit::scratch("untrusted-model");
    for entry in std::fs::read_dir(testkit::fixtures("generate"))? {
        let p = entry?.path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap()))?;
    }
    let config = dir.path().join("tokenizer_config.json");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text.replace("\"add_bos_token\": true", &format!("\"add_bos_token\": {add_bos}")))?;
    Ok(dir)
}

#[test]
fn contexts_that_encode_to_nothing_are_item_errors() -> Result<()> {
    let dir = model(false)?;
    let tok = TextTokenizer::load(dir.path(), None)?.unwrap();
    let cases = [
        ("{\"context\": \"   \", \"choices\": [\" b\"], \"gold\": 0}", "nothing to condition on"),
        ("{\"contexts\": [\"x\", \"  \"], \"continuation\": \" b\", \"gold\": 0}", "nothing to condition on"),
    ];
    for (i, (line, want)) in cases.iter().enumerate() {
        let text = format!("{{\"context\": \"ok\", \"choices\": [\" b\"], \"gold\": 0}}\n{line}\n");
        let err = eval::parse("tasks.jsonl", &text, Some(&tok), 512, 128).unwrap_err().to_string();
        assert!(err.contains("tasks.jsonl:2") && err.contains("encodes to no tokens") && err.contains(want), "case {i}: {err}");
    }
    // With BOS the same items are fine: the context is the BOS token.
    let dir = model(true)?;
    let tok = TextTokenizer::load(dir.path(), None)?.unwrap();
    assert_eq!(eval::parse("tasks.jsonl", cases[0].0, Some(&tok), 512, 128)?.len(), 1);
    Ok(())
}

#[test]
fn a_scoring_regex_that_backtracks_past_the_limit_fails_naming_the_line() -> Result<()> {
    let dir = testkit::fixtures("generate");
    let cfg = Config::from_json_file(&dir.join("config.json"))?;
    let info = ModelText::load(&dir)?;
    let tok = TextTokenizer::load(&dir, None)?.unwrap();
    // The item's generation is what the model writes; the regex makes any text of a few
    // dozen characters backtrack past the limit, so the answer_regex fails on it.
    let text = "{\"context\": \"ok\", \"choices\": [\" b\"], \"gold\": 0}\n\
                {\"context\": \"Once\", \"until\": [], \"answers\": [\"b\"], \"max_new_tokens\": 24, \"answer_regex\": \"(.+)+\\\\1x\"}\n";
    let items = eval::parse("tasks.jsonl", text, Some(&tok), cfg.vocab_size, info.context)?;
    let ck = data::checkpoint::open(&dir)?;
    let params = data::checkpoint::param_views(&ck, &cfg)?;
    let (client, _cache) = testkit::cpu_client(1);
    let mut g = Generator::new(&client, &cfg, &params, Placement::single(DType::F32), 2, eval::cache_len(&items, info.context))?;
    let err = eval::evaluate(&mut g, &items, Some(&tok), &info.eos, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("answer_regex"), "{err}");
    Ok(())
}
