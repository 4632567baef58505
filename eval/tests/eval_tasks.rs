//! scripts/make_eval_tasks.py on the committed sample rows writes exactly the committed task
//! files (checked against lm-eval 0.4.13's own task rendering when they were made), and every
//! item of every task parses as `gemma-xla eval` reads it, with its scoring keys.
use decode::text::TextTokenizer;
use eval::{self, Kind};
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    testkit::repo()
}

#[test]
fn the_converter_reproduces_the_committed_task_files() {
    testkit::require_tool("python3", "it runs scripts/make_eval_tasks.py");
    let scratch = testkit::scratch("eval-tasks");
    let out = scratch.path().join("tasks");
    let o = Command::new("python3")
        .args(["scripts/make_eval_tasks.py", "--rows", "scripts/eval_rows", "--out"])
        .arg(&out)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = repo().join("scripts/eval_rows/expected");
    let mut names: Vec<String> =
        std::fs::read_dir(&expected).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names.len(), 14, "{names:?}");
    for name in &names {
        let want = std::fs::read_to_string(expected.join(name)).unwrap();
        let got = std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn every_converted_item_parses() {
    let tok = TextTokenizer::load(&repo().join("fixtures/generate"), None).unwrap().unwrap();
    let expected = repo().join("scripts/eval_rows/expected");
    let (mut choice, mut partial, mut gen) = (0, 0, 0);
    for entry in std::fs::read_dir(&expected).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let items = eval::parse(&path.display().to_string(), &text, Some(&tok), 512, 1 << 20).unwrap();
        for item in items {
            match &item.kind {
                Kind::Choice { contexts, .. } if contexts.windows(2).any(|w| w[0] != w[1]) => partial += 1,
                Kind::Choice { .. } => choice += 1,
                Kind::Generate { .. } => gen += 1,
            }
        }
    }
    assert!(choice >= 20 && partial >= 2 && gen >= 8, "{choice} {partial} {gen}");
}
