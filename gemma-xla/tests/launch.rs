//! `gemma-xla launch` with a fake `gcloud` on PATH: `describe` lists two workers at
//! 127.0.0.1 and `ssh --worker=i --command=...` runs the command here, so the launch starts
//! a real two-host training run on this machine through the same commands it would send to
//! a TPU VM slice.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const FAKE_GCLOUD: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$GCLOUD_LOG"
if [ "$4" = describe ]; then
  printf '{"networkEndpoints": [{"ipAddress": "127.0.0.1", "port": 8470}, {"ipAddress": "127.0.0.1", "port": 8470}]}\n'
  exit 0
fi
for a in "$@"; do
  case "$a" in
    --command=*) cmd="${a#--command=}" ;;
    --worker=*) worker="${a#--worker=}" ;;
  esac
done
if [ "$worker" = all ]; then
  sh -c "$cmd" && sh -c "$cmd"
  exit $?
fi
exec sh -c "$cmd"
"#;

fn fake_gcloud(dir: &Path) -> (String, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join("gcloud");
    std::fs::write(&path, FAKE_GCLOUD).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let search = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    (search, dir.join("gcloud.log"))
}

fn launch(dir: &Path, extra: &[&str], command: &[&str]) -> std::process::Output {
    let (path, log) = fake_gcloud(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let bin = env!("CARGO_BIN_EXE_gemma-xla");
    let mut c = testkit::gemma_xla(bin);
    c.args(["launch", "--tpu", "my-v5e-16", "--zone", "us-west4-a", "--project", "proj", "--port", &port, "--binary", bin]);
    c.args(extra).arg("--").args(command).env("PATH", path).env("GCLOUD_LOG", log);
    testkit::single_host(&mut c);
    c.output().unwrap()
}

#[test]
fn launch_runs_train_on_every_worker() {
    let dir = testkit::scratch_dir("launch");
    let out = dir.join("out");
    let o = launch(
        &dir,
        &[],
        &[
            "train",
            "--devices",
            "4",
            "--mesh",
            "data=2,model=2",
            "--batch",
            "4",
            "--steps",
            "4",
            "--save-every",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let text = testkit::succeeded(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("[0] ") && l.contains("done at step 4")), "{text}");
    assert!(String::from_utf8_lossy(&o.stderr).lines().any(|l| l.starts_with("[1] host 1 of 2")), "{text}");
    assert!(out.join("model.safetensors").is_file() && out.join("checkpoints/step_4/shards.json").is_file());
    let log = std::fs::read_to_string(dir.join("gcloud.log")).unwrap();
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 4, "describe, the check on all workers, one ssh per worker: {log}");
    assert!(calls[0].starts_with("compute tpus tpu-vm describe my-v5e-16 --zone us-west4-a --project proj --format=json"));
    assert!(calls[1].contains("ssh my-v5e-16") && calls[1].contains("--worker=all"), "{log}");
    for w in 0..2 {
        let call = calls.iter().find(|c| c.contains(&format!("--worker={w} "))).unwrap_or_else(|| panic!("no ssh to worker {w}: {log}"));
        assert!(call.contains(&format!("GEMMA_XLA_PROCESS_ID={w} GEMMA_XLA_NUM_PROCESSES=2 GEMMA_XLA_COORDINATOR=127.0.0.1:")), "{call}");
        assert!(call.contains("GEMMA_XLA_RUN_TOKEN=") && !call.contains("<fresh run token>"), "{call}");
    }
}

#[test]
fn dry_run_prints_the_commands_and_runs_nothing_else() {
    let dir = testkit::scratch_dir("launch-dry");
    let o = launch(&dir, &["--dry-run", "--workdir", "/home/me/run dir"], &["train", "--config", "7b", "--out", "gs-fuse/out"]);
    let text = testkit::succeeded(&o);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("gcloud compute tpus tpu-vm describe my-v5e-16 --zone us-west4-a --project proj"), "{text}");
    assert!(lines[1].contains("--worker=all") && lines[1].contains("command -v"), "{text}");
    assert!(lines[2].contains("--worker=0") && lines[3].contains("--worker=1"), "{text}");
    assert!(lines[3].contains("cd '\\''/home/me/run dir'\\'' && GEMMA_XLA_PROCESS_ID=1 GEMMA_XLA_NUM_PROCESSES=2"), "{text}");
    assert!(lines[3].contains("train --config 7b --out gs-fuse/out"), "{text}");
    let log = std::fs::read_to_string(dir.join("gcloud.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "only describe ran: {log}");
}

#[test]
fn a_missing_binary_or_a_failing_worker_fails_the_launch() {
    let dir = testkit::scratch_dir("launch-fail");
    let (path, log) = fake_gcloud(&dir);
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["launch", "--tpu", "t", "--zone", "z", "--binary", "/nonexistent/gemma-xla", "--", "train"])
        .env("PATH", &path)
        .env("GCLOUD_LOG", &log)
        .output()
        .unwrap();
    let err = testkit::failed(&o);
    assert!(err.contains("/nonexistent/gemma-xla is not on every worker of t"), "{err}");
    // A worker whose train fails (a bad flag) fails the launch, named.
    let o = launch(&dir, &[], &["train", "--steps", "0"]);
    let err = testkit::failed(&o);
    assert!(err.contains("the run failed on worker 0") && err.contains("worker 1"), "{err}");
    let o = launch(&dir, &[], &["devices"]);
    assert!(testkit::failed(&o).contains("launch runs `gemma-xla train ...`"));
}
