//! `train` writes its metrics for TensorBoard too: OUT/tensorboard/events.out.tfevents.*, the
//! scalars `loss`, `lr`, `grad_norm` and `tokens_per_s` at every logged step, equal to
//! metrics.jsonl; a resumed run adds a new file.
use std::path::{Path, PathBuf};

fn train(out: &Path, steps: &str, resume: bool) {
    let mut c = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"));
    // A constant schedule: a resume may then run longer than the first run.
    c.args(["train", "--steps", steps, "--schedule", "constant", "--log-every", "2", "--save-every", "4", "--sample", "0"]);
    c.args(["--out", out.to_str().unwrap()]);
    if resume {
        c.arg("--resume");
    }
    testkit::succeeded(&c.output().unwrap());
}

fn event_files(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn train_writes_its_metrics_as_tensorboard_events() {
    let out = testkit::scratch_dir("tensorboard").join("out");
    train(&out, "4", false);
    train(&out, "8", true);
    let files = event_files(&out);
    assert_eq!(files.len(), 2, "one events file per run: {files:?}");
    let mut scalars = Vec::new();
    for f in &files {
        assert!(f.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
        scalars.extend(data::tensorboard::read_scalars(f).unwrap());
    }
    let metrics = testkit::json_lines(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 4, "steps 2, 4, 6, 8");
    for m in &metrics {
        let step = m["step"].as_i64().unwrap();
        for tag in ["loss", "lr", "grad_norm", "tokens_per_s"] {
            let s = scalars.iter().find(|s| s.step == step && s.tag == tag).unwrap_or_else(|| panic!("no {tag} at step {step}"));
            assert_eq!(s.value, m[tag].as_f64().unwrap() as f32, "{tag} at step {step}");
        }
    }
}

/// TensorBoard's own reader (EventAccumulator) loads what `train` wrote. Needs Python with the
/// `tensorboard` package: GEMMA_XLA_TENSORBOARD_PYTHON=/path/to/python.
#[test]
#[ignore = "needs Python with the tensorboard package (pip install tensorboard): set GEMMA_XLA_TENSORBOARD_PYTHON"]
fn tensorboard_reads_what_train_wrote() {
    let python = std::env::var("GEMMA_XLA_TENSORBOARD_PYTHON").expect("GEMMA_XLA_TENSORBOARD_PYTHON");
    let out = testkit::scratch_dir("tensorboard-py").join("out");
    train(&out, "6", false);
    let file = event_files(&out).remove(0);
    let o = std::process::Command::new(python)
        .arg(testkit::fixtures("tensorboard").join("make_fixture.py"))
        .args(["--read", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = testkit::succeeded(&o);
    let read: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let metrics = testkit::json_lines(&out.join("metrics.jsonl"));
    for m in &metrics {
        for tag in ["loss", "lr", "grad_norm", "tokens_per_s"] {
            let r = read
                .iter()
                .find(|r| r["tag"] == tag && r["step"] == m["step"])
                .unwrap_or_else(|| panic!("TensorBoard has no {tag}: {text}"));
            assert_eq!(r["value"].as_f64().unwrap() as f32, m[tag].as_f64().unwrap() as f32, "{tag}");
        }
    }
    assert_eq!(read.len(), 4 * metrics.len(), "{text}");
}
