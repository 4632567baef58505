//! `gemma-xla tokenize` as a command, and `train --data DIR` on what it wrote.
use std::path::Path;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).args(args).output().expect("spawn gemma-xla")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tokenize_then_train_on_the_shards() {
    let root = testkit::scratch("tokenize-cli");
    let corpus = root.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let lines: String =
        (0..40).map(|i| serde_json::json!({"text": format!("Document {i} says the river is cold today.")}).to_string() + "\n").collect();
    std::fs::write(corpus.join("part.jsonl"), lines).unwrap();
    let tokenizer = testkit::fixtures("generate").join("tokenizer.json");
    let out = root.path().join("tokens");
    let log = testkit::succeeded(&run(&[
        "tokenize",
        "--data",
        s(&corpus),
        "--tokenizer",
        s(&tokenizer),
        "--out",
        s(&out),
        "--workers",
        "2",
        "--shard-tokens",
        "100",
    ]));
    assert!(log.contains("40 documents") && log.contains("uint16") && log.contains("MB/s"), "{log}");
    assert!(out.join("index.json").is_file() && out.join("shard_00000.npy").is_file());
    let log = testkit::succeeded(&run(&["tokenize", "--verify", s(&out)]));
    assert!(log.contains("shards match their sha256"), "{log}");
    // The same directory again: refused, nothing touched.
    let index = std::fs::read(out.join("index.json")).unwrap();
    let err = testkit::failed(&run(&["tokenize", "--data", s(&corpus), "--tokenizer", s(&tokenizer), "--out", s(&out)]));
    assert!(err.contains("holds a tokenized set already"), "{err}");
    assert_eq!(std::fs::read(out.join("index.json")).unwrap(), index);
    // An output inside the corpus.
    let inside = corpus.join("tokens");
    let err = testkit::failed(&run(&["tokenize", "--data", s(&corpus), "--tokenizer", s(&tokenizer), "--out", s(&inside)]));
    assert!(err.contains("inside"), "{err}");

    // train streams the shards with the tokenizer they were made with, and refuses another.
    let model = testkit::fixtures("generate");
    let run_dir = root.path().join("run");
    let common = [
        "train",
        "--init",
        s(&model),
        "--data",
        s(&out),
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq",
        "16",
        "--mesh",
        "data=1",
        "--sample",
        "0",
    ];
    let err = testkit::failed(&run(&[&common[..], &["--out", s(&run_dir)]].concat()));
    assert!(err.contains("was tokenized with the tokenizer of sha256") && err.contains("--tokenizer"), "{err}");
    let log = testkit::succeeded(&run(&[&common[..], &["--tokenizer", s(&tokenizer), "--out", s(&run_dir)]].concat()));
    assert!(log.contains("memory-mapped shards"), "{log}");
    // A shard changed in place at its size: train cannot tell without reading it; --verify can.
    let shard = out.join("shard_00000.npy");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let err = testkit::failed(&run(&["tokenize", "--verify", s(&out)]));
    assert!(err.contains("shard_00000.npy") && err.contains("the index says"), "{err}");
}
