//! `gemma-xla eval`: its output files and table, and bad task files refused before anything
//! is compiled. The scores against lm-evaluation-harness are library tests (eval/tests).
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn fixtures() -> PathBuf {
    testkit::repo().join("fixtures")
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn gemma_xla(args: &[&str]) -> Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).args(args).output().expect("spawn gemma-xla")
}

fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("eval-{name}"))
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
fn the_command_writes_scores_and_a_summary_as_the_library_scores() {
    // The numbers themselves are checked against the harness in eval/tests/harness.rs; here:
    // the files, their keys, the table, and that --batch does not change the results.
    let dir = scratch("files");
    let (one, summary_one, stderr) = run_eval("1", &dir);
    let (eight, summary_eight, _) = run_eval("8", &dir);
    assert_eq!(one.len(), lines(&fixtures().join("eval/tasks.jsonl")).len());
    assert_eq!(summary_one["tasks"], summary_eight["tasks"]);
    for (a, b) in one.iter().zip(&eight) {
        assert_eq!(a.get("pred"), b.get("pred"));
    }
    assert!(summary_one["tokens_per_s"].as_f64().unwrap() > 0.0, "{summary_one}");
    assert!(stderr.contains("tokens through the model") && stderr.contains("wrote"), "{stderr}");
    // Progress on a non-terminal: plain lines, no bar.
    assert!(stderr.contains("eval: ") && stderr.contains("sequences to score"), "{stderr}");
    // The per-task metrics as TensorBoard scalars beside the scores: `<task>/<metric>`.
    let board = dir.join("tensorboard");
    let files: Vec<_> = std::fs::read_dir(&board).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 2, "one events file per eval run: {files:?}");
    let scalars = data::tensorboard::read_scalars(&files[0]).unwrap();
    for (task, m) in summary_one["tasks"].as_object().unwrap() {
        for metric in ["acc", "acc_norm", "exact_match"] {
            if let Some(v) = m.get(metric).and_then(|v| v.as_f64()) {
                let s = scalars.iter().find(|s| s.tag == format!("{task}/{metric}")).unwrap_or_else(|| panic!("no {task}/{metric}"));
                assert_eq!(s.value, v as f32);
            }
        }
    }
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
