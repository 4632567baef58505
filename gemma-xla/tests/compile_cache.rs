//! `--cache-dir`: the second run of the same train step loads it from the compilation cache
//! instead of compiling, and trains exactly as the first; `--no-compile-cache` neither reads
//! nor writes it.
use std::path::{Path, PathBuf};

fn train(args: &[&str]) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).arg("train").args(args).current_dir(repo).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {err}");
    err
}

fn losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loss"].to_string()
        })
        .collect()
}

#[test]
fn the_second_run_loads_the_train_step_from_the_cache() {
    let root: PathBuf = testkit::scratch_dir("cc-cli");
    let cache = root.join("cache");
    let run = |name: &str, extra: &[&str]| {
        let out = root.join(name);
        let mut args = vec!["--steps", "3", "--log-every", "1", "--sample", "0", "--out", out.to_str().unwrap()];
        args.extend(extra);
        (train(&args), losses(&out))
    };
    let (cold, l1) = run("a", &["--cache-dir", cache.to_str().unwrap()]);
    assert!(cold.contains("compiled; stored in the compilation cache"), "{cold}");
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert!(entries >= 1);
    let (warm, l2) = run("b", &["--cache-dir", cache.to_str().unwrap()]);
    assert!(warm.contains("loaded from the compilation cache"), "{warm}");
    assert_eq!(l1, l2, "the cached executable trains exactly as the compiled one");
    let (none, l3) = run("c", &["--no-compile-cache"]);
    assert!(!none.contains("compilation cache"), "{none}");
    assert_eq!(l1, l3);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), entries, "--no-compile-cache wrote nothing");
    std::fs::remove_dir_all(&root).unwrap();
}
