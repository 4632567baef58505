//! Multi-host training, end to end, with N `gemma-xla train` processes on this machine joined
//! by the coordination service, as `gemma-xla launch` starts them on the hosts of a TPU slice.
//!
//! What is real: N processes, the coordination service over TCP with its run token, each
//! process's host index from PJRT (the CPU plugin's `process_id`), the rows each process reads
//! from the data (only those its devices hold), the pieces each process writes into each
//! checkpoint (only its own devices', once each), host 0's index and commit, a host killed
//! with SIGKILL mid-run, and resuming on another host count and mesh.
//! What is simulated: XLA's CPU backend cannot run one program across processes, so each
//! process computes the whole step on stand-ins for the other hosts' devices, which receive
//! the other hosts' rows through the coordination service.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tiny model with every dimension divisible by 3 and 2, so that --fsdp splits every
/// weight over 3 hosts (each then writes a third of each checkpoint).
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("c3.json");
    let json = r#"{"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "head_dim": 12, "hidden_size": 48,
        "intermediate_size": 96, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "vocab_size": 264, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 8192,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "hidden_activation": "gelu_pytorch_tanh"}"#;
    std::fs::write(&path, json).unwrap();
    path
}

fn train_args(cfg: &Path, out: &Path, devices: usize, mesh: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--config", cfg.to_str().unwrap(), "--devices", &devices.to_string(), "--mesh", mesh, "--fsdp"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(
        ["--batch", "6", "--steps", "20", "--save-every", "10", "--log-every", "10", "--sample", "0", "--out"]
            .iter()
            .map(|s| s.to_string()),
    );
    a.push(out.to_str().unwrap().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    if !extra.contains(&"--coordination-timeout") {
        a.extend(["--coordination-timeout".to_string(), "60".to_string()]);
    }
    a
}

fn command(args: &[String]) -> Command {
    let mut c = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"));
    c.args(args);
    testkit::single_host(&mut c);
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `n` processes of the same command, host i with GEMMA_XLA_PROCESS_ID=i; `args_of` may
/// change one host's flags.
fn start_hosts(n: usize, token: &str, args_of: impl Fn(usize) -> Vec<String>) -> Vec<Child> {
    let port = free_port();
    (0..n)
        .map(|i| {
            command(&args_of(i))
                .env("GEMMA_XLA_PROCESS_ID", i.to_string())
                .env("GEMMA_XLA_NUM_PROCESSES", n.to_string())
                .env("GEMMA_XLA_COORDINATOR", format!("127.0.0.1:{port}"))
                .env("GEMMA_XLA_RUN_TOKEN", token)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn finish(children: Vec<Child>) -> Vec<std::process::Output> {
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn weights(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    testkit::safetensors_f64(path)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn three_hosts_one_killed_resumed_on_three_and_on_two_hosts() {
    let dir = testkit::scratch_dir("multihost");
    let cfg = config(&dir);
    let mesh = "data=3,model=2";
    // The reference: one process over the same global mesh.
    let reference = dir.join("one");
    testkit::succeeded(&command(&train_args(&cfg, &reference, 6, mesh, &[])).output().unwrap());

    // Three hosts; host 1 is killed once the checkpoint of step 10 is committed (the others
    // cannot get far without it: every step needs its rows).
    let out = dir.join("three");
    let mut hosts = start_hosts(3, "run-a", |_| train_args(&cfg, &out, 6, mesh, &[]));
    let started = Instant::now();
    while !out.join("checkpoints/step_10/trainer_state.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        if let Some(status) = hosts[1].try_wait().unwrap() {
            panic!("host 1 ended early: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    hosts[1].kill().unwrap();
    let killed = Instant::now();
    let outputs = finish(hosts);
    assert!(killed.elapsed() < Duration::from_secs(30), "the others took {:?} to stop", killed.elapsed());
    for h in [0, 2] {
        let err = testkit::failed(&outputs[h]);
        assert!(err.contains("host 1 failed"), "host {h} does not name host 1:\n{err}");
    }
    assert!(!out.join("model.safetensors").exists(), "the run did not finish");
    // The last committed checkpoint is whole; each host wrote its own third of it.
    let found = train::checkpoints::list(&out.join("checkpoints")).unwrap();
    let last = found.iter().find(|f| f.missing.is_empty()).expect("a complete checkpoint");
    assert_eq!(last.step, 10, "{found:?}");
    let sizes: Vec<u64> =
        (0..3).map(|h| std::fs::metadata(last.path.join(format!("shards-{h:05}-of-00003.safetensors"))).unwrap().len()).collect();
    assert!(sizes.iter().all(|&s| s > 100_000 && s * 2 > sizes[0] && s < sizes[0] * 2), "pieces per host: {sizes:?}");
    let two = dir.join("two");
    copy_dir(&out, &two);

    // Resumed on three hosts: the same weights as one process, bit for bit.
    let outputs = finish(start_hosts(3, "run-b", |_| train_args(&cfg, &out, 6, mesh, &["--resume"])));
    for o in &outputs {
        testkit::succeeded(o);
    }
    let want = weights(&reference.join("model.safetensors"));
    assert_eq!(weights(&out.join("model.safetensors")), want, "3 hosts resumed differ from one process");
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() == std::fs::read(reference.join("model.safetensors")).unwrap());

    // Resumed on two hosts over another mesh: the checkpoint is cut as the new mesh says.
    let outputs =
        finish(start_hosts(2, "run-c", |_| train_args(&cfg, &two, 4, "data=2,model=2", &["--resume", "--resume-override", "mesh"])));
    for o in &outputs {
        testkit::succeeded(o);
    }
    let got = weights(&two.join("model.safetensors"));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let mut worst = 0f64;
    for (name, (shape, w)) in &want {
        let (s, g) = &got[name];
        assert_eq!(s, shape, "{name}");
        for (a, b) in w.iter().zip(g) {
            worst = worst.max((a - b).abs() / a.abs().max(1.0));
        }
    }
    eprintln!("2 hosts on data=2,model=2 against one process on data=3,model=2: worst scaled difference {worst:e}");
    assert!(worst <= 1e-5, "2 hosts on data=2,model=2 differ from one process by {worst:e} (scaled)");
}

#[test]
fn hosts_that_disagree_on_the_program_stop_naming_the_host() {
    let dir = testkit::scratch_dir("multihost-disagree");
    let cfg = config(&dir);
    let out = dir.join("out");
    let outputs = finish(start_hosts(2, "run", |h| {
        let dtype = if h == 1 { "bf16" } else { "f32" };
        train_args(&cfg, &out, 4, "data=2,model=2", &["--dtype", dtype])
    }));
    for o in &outputs {
        let err = testkit::failed(o);
        assert!(err.contains("do not agree on the program") && err.contains("host 1 has"), "{err}");
    }
    assert!(!out.join("checkpoints").exists());
}

#[test]
fn a_run_needs_its_token_and_the_right_one() {
    let dir = testkit::scratch_dir("multihost-token");
    let cfg = config(&dir);
    let out = dir.join("out");
    let o = command(&train_args(&cfg, &out, 4, "data=2,model=2", &[]))
        .env("GEMMA_XLA_PROCESS_ID", "1")
        .env("GEMMA_XLA_NUM_PROCESSES", "2")
        .env("GEMMA_XLA_COORDINATOR", "127.0.0.1:1")
        .output()
        .unwrap();
    let err = testkit::failed(&o);
    assert!(err.contains("GEMMA_XLA_RUN_TOKEN"), "{err}");
    // A stray process with another token is refused by host 0's service; host 0 then waits
    // for its host 1 until the timeout and names it.
    let port = free_port();
    let host0 = command(&train_args(&cfg, &out, 4, "data=2,model=2", &["--coordination-timeout", "6"]))
        .env("GEMMA_XLA_PROCESS_ID", "0")
        .env("GEMMA_XLA_NUM_PROCESSES", "2")
        .env("GEMMA_XLA_COORDINATOR", format!("127.0.0.1:{port}"))
        .env("GEMMA_XLA_RUN_TOKEN", "right")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stray = command(&train_args(&cfg, &dir.join("stray"), 4, "data=2,model=2", &[]))
        .env("GEMMA_XLA_PROCESS_ID", "1")
        .env("GEMMA_XLA_NUM_PROCESSES", "2")
        .env("GEMMA_XLA_COORDINATOR", format!("127.0.0.1:{port}"))
        .env("GEMMA_XLA_RUN_TOKEN", "wrong")
        .output()
        .unwrap();
    let err = testkit::failed(&stray);
    assert!(err.contains("refused process 1") && err.contains("wrong run token"), "{err}");
    let err = testkit::failed(&host0.wait_with_output().unwrap());
    assert!(err.contains("hosts 1 did not arrive") || err.contains("the key"), "{err}");
}

#[test]
fn a_single_host_tpu_vm_is_one_host() {
    let role = train::hosts::HostRole::from_env(|k| match k {
        "TPU_WORKER_ID" => Some("0".into()),
        "TPU_WORKER_HOSTNAMES" => Some("t1v-0".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!((role.index, role.count), (0, 1));
}

#[test]
fn chat_fine_tuning_on_two_hosts_equals_one_process() {
    // Conversations carry per-token loss weights: each host reads and places its rows' tokens
    // and weights alike.
    let dir = testkit::scratch_dir("multihost-sft");
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--init",
            "fixtures/generate",
            "--data",
            "fixtures/sft/conversations.jsonl",
            "--chat-template",
            "fixtures/sft/chat_template.jinja",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            ["--devices", "2", "--mesh", "data=2", "--batch", "2", "--steps", "4", "--save-every", "2", "--sample", "0"]
                .iter()
                .map(|s| s.to_string()),
        )
        .chain(["--coordination-timeout".to_string(), "60".to_string(), "--out".to_string(), out.to_str().unwrap().to_string()])
        .collect()
    };
    let one = dir.join("one");
    testkit::succeeded(&command(&args(&one)).output().unwrap());
    let two = dir.join("two");
    for o in finish(start_hosts(2, "sft", |_| args(&two))) {
        testkit::succeeded(&o);
    }
    assert!(std::fs::read(one.join("model.safetensors")).unwrap() == std::fs::read(two.join("model.safetensors")).unwrap());
}
