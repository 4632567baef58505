//! `generate` against transformers on the fixture in tests/fixtures/generate (made by its
//! make_fixtures.py): a Gemma-style tokenizer (BPE with byte fallback) and tokenizer_config
//! with Gemma's chat template, and a tiny GQA model. Checks greedy tokens and logits against
//! `generate(do_sample=False)`, tokenization and chat formatting against transformers, and the
//! command's errors.
use anyhow::Result;
use gemma::{Checkpoint, Config};
use gemma_xla::chat::Message;
use gemma_xla::generate::{Generator, Placement};
use gemma_xla::text::TextTokenizer;
use graph::{DType, Tree};
use runtime::{Client, HostView, PluginSpec};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generate")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i32> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()
}

fn gemma_xla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma-xla")).args(args).output().expect("spawn gemma-xla")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-xla-gen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read_i32(path: &Path) -> (Vec<i64>, Vec<i32>) {
    let a = gemma_xla::npy::read(path).unwrap();
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
    let want_logits = gemma_xla::npy::read(&d.join("greedy_logits.npy"))?.to_vec::<f32>()?;
    let (b, t, n) = (pdims[0] as usize, pdims[1] as usize, (gdims[1] - pdims[1]) as usize);
    let v = cfg.vocab_size as usize;
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
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
    let bare = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma/mqa");
    let e = fails(&["generate", "--model", bare.to_str().unwrap(), "--prompt", "hi"]);
    assert!(e.contains("no tokenizer.json") && e.contains("--tokens") && e.contains("--tokenizer"), "{e}");
    // Token ids outside the vocabulary (512).
    let bad = s.join("bad.npy");
    std::fs::write(&bad, gemma_xla::npy::encode_array(&runtime::HostArray::from_vec(&[1, 3], vec![2i32, 600, 5]).unwrap()).unwrap())
        .unwrap();
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma-xla"))
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
