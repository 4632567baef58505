//! `gemma-xla generate` on the fixture in fixtures/generate (made by its make_fixtures.py):
//! the command reproduces transformers' `generate(do_sample=False)`, refuses bad input
//! clearly, and chats turn by turn.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn dir() -> PathBuf {
    testkit::fixtures("generate")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i32> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()
}

fn gemma_xla(args: &[&str]) -> Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).args(args).output().expect("spawn gemma-xla")
}

fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("gen-{name}"))
}

fn read_i32(path: &Path) -> (Vec<i64>, Vec<i32>) {
    let a = data::npy::read(path).unwrap();
    (a.dims().to_vec(), a.to_vec::<i32>().unwrap())
}

#[test]
fn the_command_reproduces_transformers_generate() {
    let d = dir();
    let out = scratch("tokens").join("gen.npy");
    let o = gemma_xla(&[
        "generate",
        "--model",
        d.to_str().unwrap(),
        "--tokens",
        d.join("prompts.npy").to_str().unwrap(),
        "--max-new-tokens",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_i32(&out), read_i32(&d.join("greedy.npy")));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("prefill:") && stderr.contains("decode:") && stderr.contains("tokens/s"), "{stderr}");

    let mut checked = 0;
    for case in json("text_cases.json")["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let n = case["max_new_tokens"].as_u64().unwrap().to_string();
        let out = scratch("text").join("gen.npy");
        let args = ["generate", "--model", d.to_str().unwrap(), "--prompt", prompt, "--max-new-tokens", &n, "--out", out.to_str().unwrap()];
        let o = gemma_xla(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (_, got) = read_i32(&out);
        let mut want = ids(&case["prompt_ids"]);
        want.extend(ids(&case["new_ids"]));
        // Rows that stop early are padded with pad_token_id (0) to prompt + N.
        want.resize(got.len(), 0);
        assert_eq!(got, want, "{prompt:?}");
        // The streamed text is the decoded continuation, unless the model made invalid UTF-8
        // (a random model does): then a byte run that decoded as text while it came stays
        // printed although the whole run decodes as U+FFFD.
        let stdout = String::from_utf8_lossy(&o.stdout);
        let want = case["continuation_text"].as_str().unwrap();
        if !want.contains('\u{FFFD}') {
            assert_eq!(stdout.trim_end_matches('\n'), want, "{prompt:?}");
            checked += 1;
        }
    }
    assert!(checked >= 1, "no text case with valid UTF-8 to compare");
}

fn fails(args: &[&str]) -> String {
    let o = gemma_xla(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_input_is_refused_clearly() {
    let d = dir();
    let model = d.to_str().unwrap();
    let s = scratch("bad");
    // A prompt longer than the context (128 tokens).
    let long = "word ".repeat(200);
    let e = fails(&["generate", "--model", model, "--prompt", &long]);
    assert!(e.contains("context is 128") && e.contains("tokens"), "{e}");
    let e = fails(&["generate", "--model", model, "--prompt", "hi", "--max-new-tokens", "500"]);
    assert!(e.contains("--max-new-tokens"), "{e}");
    // No tokenizer with --prompt: say what to pass instead.
    let bare = testkit::fixtures("gemma").join("mqa");
    let e = fails(&["generate", "--model", bare.to_str().unwrap(), "--prompt", "hi"]);
    assert!(e.contains("no tokenizer.json") && e.contains("--tokens") && e.contains("--tokenizer"), "{e}");
    // Token ids outside the vocabulary (512).
    let bad = s.join("bad.npy");
    std::fs::write(&bad, data::npy::encode_array(&runtime::HostArray::from_vec(&[1, 3], vec![2i32, 600, 5]).unwrap()).unwrap()).unwrap();
    let e = fails(&["generate", "--model", model, "--tokens", bad.to_str().unwrap()]);
    assert!(e.contains("600") && e.contains("[0, 512)") && e.contains("bad.npy"), "{e}");
    // --top-p outside (0, 1].
    for p in ["0", "1.5"] {
        let e = fails(&["generate", "--model", model, "--prompt", "hi", "--top-p", p]);
        assert!(e.contains("--top-p"), "{e}");
    }
    // None of --prompt, --tokens, --chat.
    let e = fails(&["generate", "--model", model]);
    assert!(e.contains("--prompt") || e.contains("required"), "{e}");
    // A config whose context is absurd: refused before a cache is sized from it.
    let huge = s.join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(d.join(f), huge.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 1000000000000");
    std::fs::write(huge.join("config.json"), config).unwrap();
    let e = fails(&["generate", "--model", huge.to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "18446744073709551615"]);
    assert!(e.contains("max_position_embeddings") && e.contains("config.json"), "{e}");
    // --out over an input.
    let e = fails(&[
        "generate",
        "--model",
        model,
        "--tokens",
        d.join("prompts.npy").to_str().unwrap(),
        "--out",
        d.join("prompts.npy").to_str().unwrap(),
    ]);
    assert!(e.contains("prompts.npy"), "{e}");
}

#[test]
fn chat_answers_each_line_and_stops_at_end_of_turn() {
    let d = dir();
    let mut child = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["generate", "--model", d.to_str().unwrap(), "--chat", "--max-new-tokens", "8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"Hi there!\nTell me a joke.\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // One reply line per user line, each followed by a timing report on stderr; the second
    // turn only prefills what the cache does not hold yet.
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    assert_eq!(stderr.matches("prefill:").count(), 2, "{stderr}");
}
