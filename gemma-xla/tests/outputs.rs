//! Outputs never destroy: one run per output directory (a lock the kernel releases), an
//! incomplete newest checkpoint skipped rather than trusted, device nodes and FIFOs written
//! into rather than replaced, and directories gemma-xla did not make left alone.
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> std::process::Command {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn gemma-xla")
}

fn ok(o: &Output) -> String {
    testkit::succeeded(o)
}

fn fails(o: &Output) -> String {
    testkit::failed(o)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const QUICK: [&str; 8] = ["--batch", "2", "--seq", "16", "--mesh", "data=1", "--sample", "0"];

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_second_run_into_an_active_output_directory_is_refused_naming_the_holder() {
    let root = testkit::scratch("lock");
    let out = root.path().join("run");
    let mut first = bin()
        .args(["train", "--steps", "100000", "--log-every", "100000", "--save-every", "0"])
        .args(QUICK)
        .args(["--out", s(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(".gemma-xla.lock");
    let began = Instant::now();
    // Locked, and metrics.jsonl opened: until its last step the run writes nothing more.
    while !(std::fs::read_to_string(&lock).unwrap_or_default().contains("pid") && out.join("metrics.jsonl").is_file()) {
        assert!(began.elapsed() < Duration::from_secs(120), "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = snapshot(&out);
    for extra in [&["--seed", "1"][..], &["--resume"][..]] {
        let err = fails(&run(&[&["train", "--steps", "2"][..], &QUICK, extra, &["--out", s(&out)]].concat()));
        assert!(err.contains(&format!("pid {}: gemma-xla train", first.id())) && err.contains("in use"), "{err}");
    }
    assert_eq!(snapshot(&out), before, "the refused runs touched the first run's directory");
    assert!(first.try_wait().unwrap().is_none(), "the first run died");
    first.kill().unwrap();
    first.wait().unwrap();
    // The kernel released the lock with the process: the directory can be used again.
    ok(&run(&[&["train", "--steps", "2"][..], &QUICK, &["--out", s(&out)]].concat()));
}

#[test]
fn an_incomplete_newest_checkpoint_is_skipped_and_the_newest_complete_one_resumed() {
    let root = testkit::scratch("incomplete");
    let out = root.path().join("run");
    ok(&run(&[&["train", "--steps", "4", "--save-every", "2"][..], &QUICK, &["--out", s(&out)]].concat()));
    std::fs::remove_file(out.join("checkpoints/step_4/optimizer.safetensors")).unwrap();
    let resume = ["train", "--steps", "6", "--save-every", "2", "--resume", "--resume-override", "steps"];
    let log = ok(&run(&[&resume[..], &QUICK, &["--out", s(&out)]].concat()));
    assert!(log.contains("skipping the incomplete checkpoint") && log.contains("optimizer.safetensors"), "{log}");
    assert!(log.contains("step_2"), "{log}");
    assert!(out.join("checkpoints/step_6/optimizer.safetensors").is_file());
}

#[test]
fn device_nodes_and_fifos_are_written_into_never_replaced() {
    let model = testkit::fixtures("gemma").join("mqa");
    let tokens = model.join("tokens.npy");
    ok(&run(&["forward", "--model", s(&model), "--tokens", s(&tokens), "--out", "/dev/null"]));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device(), "/dev/null was replaced");
    // eval's scores into /dev/null: no summary file appears in /dev.
    let generate = testkit::fixtures("generate");
    let tasks = testkit::fixtures("eval").join("tasks.jsonl");
    let log = ok(&run(&["eval", "--model", s(&generate), "--tasks", s(&tasks), "--out", "/dev/null"]));
    assert!(log.contains("a stream"), "{log}");
    assert!(!Path::new("/dev/null.summary.json").exists());
    // A named pipe receives the generated tokens.
    let dir = testkit::scratch("fifo");
    let fifo = dir.path().join("tokens.npy");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("this test needs mkfifo").success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let prompts = testkit::fixtures("generate").join("prompts.npy");
    ok(&run(&["generate", "--model", s(&generate), "--tokens", s(&prompts), "--max-new-tokens", "2", "--out", s(&fifo)]));
    let bytes = reader.join().unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"), "{} bytes", bytes.len());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
}

#[test]
fn directories_gemma_xla_did_not_make_are_left_alone() {
    let root = testkit::scratch("foreign");
    // A model directory (no checkpoints): train refuses it and changes nothing.
    let model = root.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokens.npy"] {
        std::fs::copy(testkit::fixtures("gemma").join("mqa").join(f), model.join(f)).unwrap();
    }
    let before = snapshot(&model);
    let err = fails(&run(&[&["train", "--steps", "2"][..], &QUICK, &["--out", s(&model)]].concat()));
    assert!(err.contains("did not write") && err.contains("config.json") && err.contains("model.safetensors"), "{err}");
    assert_eq!(snapshot(&model).iter().filter(|(p, _)| !p.ends_with(".gemma-xla.lock")).cloned().collect::<Vec<_>>(), before);
    // dump over a directory with a file of its own: refused, the file kept; over an earlier
    // dump: replaced.
    let dump = root.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    std::fs::write(dump.join("summary.txt"), "my notes").unwrap();
    std::fs::create_dir(dump.join("xla")).unwrap();
    std::fs::write(dump.join("xla").join("keep"), "mine").unwrap();
    std::fs::write(dump.join("notes.md"), "mine").unwrap();
    let args = ["dump", "--config", "tiny", "--what", "forward", "--mesh", "data=1", "--out", s(&dump)];
    let err = fails(&run(&args));
    assert!(err.contains("notes.md") && err.contains("did not write"), "{err}");
    assert_eq!(std::fs::read_to_string(dump.join("summary.txt")).unwrap(), "my notes");
    assert_eq!(std::fs::read_to_string(dump.join("xla").join("keep")).unwrap(), "mine");
    // Names alone do not make a dump: a directory of a summary.txt and an xla/ of the user's.
    std::fs::remove_file(dump.join("notes.md")).unwrap();
    let err = fails(&run(&args));
    assert!(err.contains("summary.txt") && err.contains("xla") && err.contains("did not write"), "{err}");
    assert_eq!(std::fs::read_to_string(dump.join("xla").join("keep")).unwrap(), "mine");
    let fresh = root.path().join("fresh");
    ok(&run(&["dump", "--config", "tiny", "--what", "forward", "--mesh", "data=1", "--out", s(&fresh)]));
    ok(&run(&["dump", "--config", "tiny", "--what", "forward", "--mesh", "data=1", "--out", s(&fresh)]));
    assert!(fresh.join(".gemma-xla-output").is_file() && fresh.join("summary.txt").is_file());
    // An output directory inside the data it reads.
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.txt"), "some text to train on. ".repeat(20)).unwrap();
    let inside = data.join("run");
    let err = fails(&run(&[&["train", "--steps", "2", "--data", s(&data)][..], &QUICK, &["--out", s(&inside)]].concat()));
    assert!(err.contains("--data") && err.contains("inside"), "{err}");
    assert!(!inside.exists());
}

#[test]
fn token_ids_past_the_byte_tokenizer_train_without_writing_a_tokenizer_that_cannot_decode_them() {
    use npyz::WriterBuilder;
    let root = testkit::scratch("ids");
    let config = root.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"model_type": "gemma", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}"#,
    )
    .unwrap();
    let tokens = root.path().join("tokens.npy");
    let values: Vec<i32> = (0..4 * 16).map(|i| 200 + (i * 7) % 300).collect();
    let f = std::fs::File::create(&tokens).unwrap();
    let mut w = npyz::WriteOptions::<i32>::new().default_dtype().shape(&[4, 16]).writer(f).begin_nd().unwrap();
    w.extend(values).unwrap();
    w.finish().unwrap();
    let out = root.path().join("run");
    let log = ok(&run(&[
        "train",
        "--config",
        s(&config),
        "--data",
        s(&tokens),
        "--steps",
        "2",
        "--batch",
        "2",
        "--mesh",
        "data=1",
        "--sample",
        "8",
        "--out",
        s(&out),
    ]));
    assert!(log.contains("sample (token ids"), "{log}");
    assert!(out.join("model.safetensors").is_file());
    assert!(!out.join("tokenizer.json").exists(), "a byte tokenizer was written beside a 512-token model");
}

#[test]
fn a_run_stopped_after_its_last_checkpoint_writes_its_final_files_on_resume() {
    let root = testkit::scratch("last");
    let out = root.path().join("run");
    ok(&run(&[&["train", "--steps", "2", "--save-every", "2"][..], &QUICK, &["--out", s(&out)]].concat()));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let log = ok(&run(&[&["train", "--steps", "2", "--resume"][..], &QUICK, &["--out", s(&out)]].concat()));
    assert!(log.contains("is at the last step"), "{log}");
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let err = fails(&run(&[&["train", "--steps", "1", "--resume"][..], &QUICK, &["--out", s(&out)]].concat()));
    assert!(err.contains("past --steps 1"), "{err}");
}

#[test]
fn an_input_inside_the_checkpoints_the_run_rotates_is_refused() {
    // --resume keeps --keep checkpoints and deletes older ones: an --init taken from among
    // them would be deleted under the run.
    let root = testkit::scratch("init-in-checkpoints");
    let out = root.path().join("run");
    ok(&run(&[&["train", "--steps", "2", "--save-every", "1", "--keep", "1"][..], &QUICK, &["--out", s(&out)]].concat()));
    let ckpt = std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    let before = snapshot(&out);
    let err = fails(&run(&[&["train", "--steps", "4", "--resume", "--init", s(&ckpt)][..], &QUICK, &["--out", s(&out)]].concat()));
    assert!(
        err.contains("where this run keeps and deletes its checkpoints") && err.contains(&format!("--init {}", ckpt.display())),
        "{err}"
    );
    assert_eq!(snapshot(&out), before, "the refused run touched the directory");
}
