//! `gemma-xla train` as users run it: AdamW steps against an independent JAX + optax
//! reference (on one device and on a data=2,model=2 mesh), exact resume, a save killed with
//! SIGKILL, and the bad inputs the issue lists.
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn train(args: &[&str]) -> Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).arg("train").args(args).current_dir(repo()).output().expect("spawn gemma-xla")
}

fn ok(o: &Output) -> String {
    testkit::succeeded(o)
}

fn fails(o: &Output) -> String {
    testkit::failed(o)
}

fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("train-{name}"))
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// (step, loss, grad_norm, lr) of every line of metrics.jsonl.
fn metrics(out: &Path) -> Vec<(u64, f64, f64, f64)> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {l}"));
            for k in ["tokens_per_s", "elapsed_s"] {
                assert!(v[k].as_f64().is_some(), "{k} in {l}");
            }
            (v["step"].as_u64().unwrap(), f("loss"), f("grad_norm"), f("lr"))
        })
        .collect()
}

fn f64s(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    match t.dtype() {
        safetensors::Dtype::F64 => t.data().chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        safetensors::Dtype::F32 => t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        other => panic!("{name}: {other:?}"),
    }
}

fn write_tokens(path: &Path, shape: &[u64], values: &[i32]) {
    use npyz::WriterBuilder;
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::<i32>::new().default_dtype().shape(shape).writer(f).begin_nd().unwrap();
    w.extend(values.iter().cloned()).unwrap();
    w.finish().unwrap();
}

const REF: &str = "fixtures/train";

fn reference_run(out: &Path, mesh: &str) {
    let o = train(&[
        "--init",
        "fixtures/gemma/mqa",
        "--data",
        &format!("{REF}/tokens.npy"),
        "--mesh",
        mesh,
        "--batch",
        "4",
        "--steps",
        "6",
        "--lr",
        "1e-2",
        "--warmup",
        "2",
        "--min-lr",
        "1e-3",
        "--weight-decay",
        "0.1",
        "--clip",
        "0.5",
        "--b1",
        "0.9",
        "--b2",
        "0.95",
        "--eps",
        "1e-8",
        "--log-every",
        "1",
        "--sample",
        "0",
        "--out",
        &s(out),
    ]);
    ok(&o);
}

#[test]
fn a_run_from_an_hf_checkpoint_writes_metrics_checkpoints_and_the_final_weights() {
    // The numbers against JAX + optax are library tests (train/tests/optax.rs); here: what the
    // command writes for them.
    let out = scratch("files");
    reference_run(&out, "data=1");
    let got = metrics(&out);
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    let model = std::fs::read(out.join("model.safetensors")).unwrap();
    let model = SafeTensors::deserialize(&model).unwrap();
    assert_eq!(f64s(&model, "model.norm.weight").len(), 32);
    let opt = std::fs::read(out.join("checkpoints/step_6/optimizer.safetensors")).unwrap();
    let opt = SafeTensors::deserialize(&opt).unwrap();
    assert!(opt.names().iter().any(|n| n.starts_with("m.")) && opt.names().iter().any(|n| n.starts_with("v.")));
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "loss.png", "loss.svg", "checkpoints/step_6/trainer_state.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    std::fs::remove_dir_all(out).unwrap();
}

fn resume_case(mesh: &str) {
    let base = [
        "--steps",
        "100",
        "--batch",
        "4",
        "--seq",
        "32",
        "--schedule",
        "constant",
        "--warmup",
        "60",
        "--log-every",
        "10",
        "--sample",
        "0",
        "--mesh",
        mesh,
    ];
    let straight = scratch(&format!("straight-{}", mesh.replace([',', '='], "_")));
    ok(&train(&[&base[..], &["--save-every", "50", "--out", &s(&straight)]].concat()));
    let split = scratch(&format!("split-{}", mesh.replace([',', '='], "_")));
    let mut first = base.to_vec();
    first[1] = "50";
    ok(&train(&[&first[..], &["--save-every", "50", "--out", &s(&split)]].concat()));
    assert!(split.join("checkpoints/step_50/trainer_state.json").is_file());
    let log = ok(&train(&[&base[..], &["--save-every", "50", "--resume", "--out", &s(&split)]].concat()));
    assert!(log.contains("resumed from"), "{log}");
    assert_eq!(metrics(&straight), metrics(&split), "losses differ between 100 steps straight and 2 x 50 with a resume ({mesh})");
    let a = std::fs::read(straight.join("model.safetensors")).unwrap();
    let b = std::fs::read(split.join("model.safetensors")).unwrap();
    assert!(a == b, "final weights differ ({mesh})");
    let opt = |d: &Path| std::fs::read(d.join("checkpoints/step_100/optimizer.safetensors")).unwrap();
    assert!(opt(&straight) == opt(&split), "final optimizer states differ ({mesh})");
    for d in [straight, split] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn two_times_fifty_steps_with_a_resume_equal_one_hundred_on_one_device() {
    resume_case("data=1");
}

#[test]
fn two_times_fifty_steps_with_a_resume_equal_one_hundred_on_a_mesh() {
    resume_case("data=2,model=2");
}

#[test]
fn a_run_killed_while_saving_leaves_a_loadable_checkpoint() {
    let out = scratch("kill");
    let small = ["--batch", "2", "--seq", "16", "--mesh", "data=1", "--sample", "0", "--out"];
    ok(&train(&[&["--steps", "3", "--save-every", "1"][..], &small, &[&s(&out)]].concat()));
    // Saving every step makes a kill during a save likely; each kill comes a bit later.
    for delay_ms in [1500u64, 2200, 2900, 3600] {
        let mut child = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
            .args(["train", "--steps", "100000", "--save-every", "1", "--keep", "2", "--log-every", "1000", "--resume"])
            .args(small)
            .arg(s(&out))
            .current_dir(repo())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Whatever the kills interrupted, the newest complete checkpoint loads and training goes on.
    let names: Vec<String> =
        std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n.starts_with("step_")), "{names:?}");
    let newest = names.iter().filter_map(|n| n.strip_prefix("step_")).filter_map(|n| n.parse::<u64>().ok()).max().unwrap();
    let target = (newest + 2).to_string();
    let log = ok(&train(&[
        "--steps",
        &target,
        "--batch",
        "2",
        "--seq",
        "16",
        "--mesh",
        "data=1",
        "--save-every",
        "0",
        "--sample",
        "0",
        "--resume",
        "--resume-override",
        "steps",
        "--out",
        &s(&out),
    ]));
    assert!(log.contains("resumed from"), "{log}");
    assert!(log.contains("resuming with --steps"), "{log}");
    let left: Vec<String> =
        std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.contains(".tmp-")), "temporary directories were not cleaned up: {left:?}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = scratch("bad");
    let o = s(&out);
    let quick = ["--steps", "2", "--sample", "0", "--mesh", "data=1"];
    let err = fails(&train(&[&quick[..], &["--resume", "--out", &o]].concat()));
    assert!(err.contains("--resume: there is no checkpoint in"), "{err}");
    let err = fails(&train(&[&quick[..], &["--init", "fixtures/gemma/mqa", "--config", "tiny", "--out", &o]].concat()));
    assert!(err.contains("has another config than --config tiny"), "{err}");
    let err = fails(&train(&["--steps", "2", "--mesh", "data=2", "--batch", "3", "--out", &o]));
    assert!(err.contains("batch") && err.contains('3'), "{err}");
    let err = fails(&train(&[&quick[..], &["--init", "fixtures/gemma/mqa", "--out", "fixtures/gemma/mqa"]].concat()));
    assert!(err.contains("is the --init directory"), "{err}");
    let short = out.join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let err = fails(&train(&[&quick[..], &["--data", &s(&short), "--seq", "64", "--out", &o]].concat()));
    assert!(err.contains(&s(&short)), "{err}");
    let big = out.join("big_ids.npy");
    write_tokens(&big, &[2, 8], &[5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 300, 4, 5, 6, 7]);
    let err = fails(&train(&[&quick[..], &["--data", &s(&big), "--batch", "2", "--out", &o]].concat()));
    assert!(err.contains("big_ids.npy") && err.contains("300"), "tiny's vocabulary is 256: {err}");
    // A corrupted checkpoint names the file.
    ok(&train(&[&quick[..], &["--batch", "2", "--seq", "16", "--out", &o]].concat()));
    // A fresh run does not overwrite an earlier run's checkpoints.
    let err = fails(&train(&[&quick[..], &["--batch", "2", "--seq", "16", "--out", &o]].concat()));
    assert!(err.contains("already holds checkpoints") && err.contains("--resume"), "{err}");
    let opt = out.join("checkpoints/step_2/optimizer.safetensors");
    let len = std::fs::metadata(&opt).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&opt).unwrap().set_len(len / 2).unwrap();
    let err = fails(&train(&["--steps", "4", "--sample", "0", "--mesh", "data=1", "--batch", "2", "--seq", "16", "--resume", "--out", &o]));
    assert!(err.contains("optimizer.safetensors"), "{err}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn bf16_compute_with_f32_master_weights_learns() {
    let out = scratch("bf16");
    ok(&train(&[
        "--dtype",
        "bf16",
        "--steps",
        "40",
        "--log-every",
        "10",
        "--mesh",
        "data=2,model=2",
        "--fsdp",
        "--sample",
        "0",
        "--out",
        &s(&out),
    ]));
    let m = metrics(&out);
    assert!(m.last().unwrap().1 < m.first().unwrap().1 - 0.5, "bf16 loss did not fall: {m:?}");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("model.norm.weight").unwrap().dtype(), safetensors::Dtype::F32, "master weights are saved in f32");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn ctrl_c_finishes_the_step_saves_and_exits_130() {
    let out = scratch("sigint");
    let child = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["train", "--steps", "100000", "--batch", "2", "--seq", "16", "--mesh", "data=1", "--save-every", "0", "--sample", "0"])
        .args(["--out", &s(&out)])
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: saved"), "{err}");
    let steps: Vec<u64> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_string_lossy().strip_prefix("step_").and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(steps.len(), 1, "{steps:?}");
    let last = metrics(&out).last().unwrap().0;
    assert_eq!(last, steps[0], "the last logged step is the saved one");
    let target = (steps[0] + 1).to_string();
    ok(&train(&[
        "--steps",
        &target,
        "--batch",
        "2",
        "--seq",
        "16",
        "--mesh",
        "data=1",
        "--sample",
        "0",
        "--resume",
        "--resume-override",
        "steps",
        "--out",
        &s(&out),
    ]));
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn a_full_disk_while_saving_keeps_the_previous_checkpoint() {
    // A 2.6 MB tmpfs (in a private mount namespace) holds two checkpoints of tiny (about
    // 1 MB each) but not a third.
    let out = scratch("full");
    let bin = env!("CARGO_BIN_EXE_gemma-xla");
    let o = Command::new("unshare")
        .args(["-rm", "sh", "-c", r#"mount -t tmpfs -o size=2600k tmpfs "$0" || exit 77; exec "$@""#])
        .arg(&out)
        .args([bin, "train", "--steps", "40", "--save-every", "5", "--keep", "5", "--batch", "2", "--seq", "16", "--mesh", "data=1"])
        .args(["--sample", "0", "--out"])
        .arg(&out)
        .current_dir(repo())
        .output()
        .unwrap();
    if o.status.code() == Some(77) || String::from_utf8_lossy(&o.stderr).contains("unshare failed") {
        panic!("this test needs unshare to mount a tmpfs in a private namespace, which this machine refuses");
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot save checkpoint") && err.contains("the previous checkpoint") && err.contains("is intact"), "{err}");
    // The tmpfs is gone with the namespace; what is left is the directory as it was before.
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn hyperparameters_that_cannot_train_are_refused_naming_the_flag_and_range() {
    let out = scratch("hyper").join("run");
    let quick = ["--steps", "2", "--sample", "0", "--mesh", "data=1", "--out"];
    for (flag, value, want) in [
        ("--b1", "1", "--b1 1: must be in [0, 1)"),
        ("--b2", "1.5", "--b2 1.5: must be in [0, 1)"),
        ("--lr", "nan", "--lr NaN: must be a finite number >= 0"),
        ("--lr", "-0.1", "--lr -0.1: must be a finite number >= 0"),
        ("--eps", "-1e-8", "must be a finite number > 0"),
        ("--clip", "-1", "--clip -1: must be a finite number >= 0"),
        ("--weight-decay", "inf", "--weight-decay inf"),
    ] {
        let arg = format!("{flag}={value}");
        let err = fails(&train(&[&quick[..], &[&s(&out), &arg]].concat()));
        assert!(err.contains(want), "{flag} {value}: {err}");
        assert!(!out.exists(), "{flag} {value}: the output directory was made before the check");
    }
}

#[test]
fn resume_refuses_settings_that_change_the_run_unless_overridden() {
    let out = scratch("settings");
    let common = ["--save-every", "2", "--batch", "2", "--seq", "16", "--mesh", "data=1", "--sample", "0", "--out"];
    let out_arg = s(&out);
    let first = [&common[..], &[out_arg.as_str()]].concat();
    ok(&train(&[&first[..], &["--steps", "2"]].concat()));
    // The checkpoint at step 2 was made by a 2-step cosine run; the resumes ask for 4 steps.
    let resume = |extra: &[&str]| train(&[&first[..], &["--steps", "4", "--resume"], extra].concat());
    for (flag, value, shown) in [
        ("--lr", "0.01", "--lr 0.003, this run has --lr 0.01"),
        ("--shuffle", "", "--shuffle false, this run has --shuffle true"),
        ("--dtype", "bf16", "--dtype f32, this run has --dtype bf16"),
        ("--clip", "0.5", "--clip 1, this run has --clip 0.5"),
    ] {
        let mut extra = vec![flag];
        if !value.is_empty() {
            extra.push(value);
        }
        extra.extend(["--resume-override", "steps"]);
        let err = fails(&resume(&extra));
        assert!(err.contains(shown) && err.contains(&format!("--resume-override {}", &flag[2..])), "{flag}: {err}");
    }
    // The schedule's length changed too (2 -> 4 steps, cosine): refused until overridden.
    let err = fails(&resume(&[]));
    assert!(err.contains("--steps 2, this run has --steps 4"), "{err}");
    // Other data: named by its sha256.
    let data = out.join("../other.txt");
    std::fs::write(&data, "other text to train on. ".repeat(40)).unwrap();
    let data_arg = s(&data);
    let err = fails(&resume(&["--data", &data_arg, "--resume-override", "steps"]));
    assert!(err.contains("was trained with data with sha256"), "{err}");
    let err = fails(&resume(&["--resume-override", "colour"]));
    assert!(err.contains("--resume-override colour: not a setting"), "{err}");
    // Overridden: it resumes, and says what changed.
    let log = ok(&resume(&["--lr", "0.01", "--resume-override", "steps", "--resume-override", "lr"]));
    assert!(log.contains("resuming with --lr 0.01") && log.contains("resuming with --steps 4"), "{log}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn the_main_job_prints_no_xla_warning() {
    // The main job's step on its mesh (data=2,model=2), as scripts/main.sh runs it.
    let out = testkit::scratch_dir("train-quiet").join("out");
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["train", "--steps", "3", "--sample", "8", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let text = testkit::succeeded(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(testkit::xla_log_lines(&stderr).is_empty(), "XLA printed:\n{text}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
}
