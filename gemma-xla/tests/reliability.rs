//! Inputs are never destroyed and bad files fail clearly: an output that is an input, a mask
//! with no target, a truncated .npy, a checkpoint truncated while mapped, writes that go
//! through symlinks and keep file modes, and temporary files of killed writers.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gemma_xla(args: &[&str]) -> Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).args(args).current_dir(repo()).output().unwrap()
}

fn fails(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    err
}

fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("rel-{name}"))
}

fn copy_model(to: &Path) {
    let from = repo().join("fixtures/gemma/mqa");
    for f in ["config.json", "model.safetensors", "tokens.npy"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_survives() {
    let d = scratch("same");
    copy_model(&d);
    let s = |f: &str| d.join(f).to_str().unwrap().to_string();
    let before = std::fs::read(d.join("model.safetensors")).unwrap();
    for out in [
        s("model.safetensors"),
        s("tokens.npy"),
        format!("{}/../{}/model.safetensors", d.display(), d.file_name().unwrap().to_str().unwrap()),
    ] {
        let err = fails(&gemma_xla(&["forward", "--model", &s(""), "--tokens", &s("tokens.npy"), "--out", &out]));
        assert!(err.contains("refusing to write") && err.contains("it is the input"), "{err}");
    }
    // A hard link to the weights is the same file.
    std::fs::hard_link(d.join("model.safetensors"), d.join("link.safetensors")).unwrap();
    let err = fails(&gemma_xla(&["forward", "--model", &s(""), "--tokens", &s("tokens.npy"), "--out", &s("link.safetensors")]));
    assert!(err.contains("it is the input"), "{err}");
    assert!(std::fs::read(d.join("model.safetensors")).unwrap() == before, "the input changed");
    // train: --data inside --out under a name train writes.
    let out = d.join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "some text to train on ".repeat(100)).unwrap();
    let err = fails(&gemma_xla(&["train", "--steps", "1", "--mesh", "data=1", "--data", &s("run/metrics.jsonl"), "--out", &s("run")]));
    assert!(err.contains("it is the input"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_mask_without_a_target_token_is_an_error() {
    let d = scratch("mask");
    copy_model(&d);
    let mask = d.join("mask.npy");
    // tokens are [2, 7]: only position 0 of each row is real, so nothing is predicted.
    let values: Vec<i32> = (0..14).map(|i| i32::from(i % 7 == 0)).collect();
    {
        use npyz::WriterBuilder;
        let f = std::fs::File::create(&mask).unwrap();
        let mut w = npyz::WriteOptions::<i32>::new().default_dtype().shape(&[2, 7]).writer(f).begin_nd().unwrap();
        w.extend(values).unwrap();
        w.finish().unwrap();
    }
    let s = |f: &str| d.join(f).to_str().unwrap().to_string();
    let err = fails(&gemma_xla(&[
        "forward",
        "--model",
        &s(""),
        "--tokens",
        &s("tokens.npy"),
        "--mask",
        &s("mask.npy"),
        "--out",
        &s("o.safetensors"),
    ]));
    assert!(err.contains("mask.npy: the mask leaves no target token"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_truncated_npy_says_which_file_and_how_many_bytes() {
    let d = scratch("npy");
    let full = std::fs::read(repo().join("fixtures/gemma/mqa/tokens.npy")).unwrap();
    std::fs::write(d.join("cut.npy"), &full[..full.len() - 5]).unwrap();
    let cut = d.join("cut.npy");
    let err = gemma_xla_lib_read(&cut);
    assert!(err.contains("cut.npy") && err.contains("needs 112 bytes of data, but the file holds 107"), "{err}");
    // A header whose shape overflows 64 bits is an error, not a panic.
    let mut bomb = full.clone();
    let text = String::from_utf8_lossy(&bomb[10..]).into_owned();
    let at = text.find("(2, 7)").unwrap() + 10;
    bomb.splice(at..at + 6, b"(9999999999, 9999999999)".iter().copied());
    bomb[8] = (u16::from_le_bytes([bomb[8], bomb[9]]) + 18) as u8;
    std::fs::write(d.join("bomb.npy"), &bomb).unwrap();
    let err = gemma_xla_lib_read(&d.join("bomb.npy"));
    assert!(err.contains("bomb.npy"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

fn gemma_xla_lib_read(p: &Path) -> String {
    data::npy::read(p).unwrap_err().to_string()
}

#[test]
fn a_checkpoint_truncated_while_mapped_is_reported_not_faulted_on() {
    struct Mapped(runtime::MappedFile);
    impl gemma::FileBytes for Mapped {
        fn bytes(&self) -> &[u8] {
            self.0.bytes()
        }
    }
    let d = scratch("shrink");
    copy_model(&d);
    let ck = gemma::Checkpoint::open_with(&d, &|p: &Path| Ok(Box::new(Mapped(runtime::MappedFile::open(p)?)) as Box<dyn gemma::FileBytes>))
        .unwrap();
    ck.check_unchanged().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(d.join("model.safetensors")).unwrap();
    f.set_len(100).unwrap();
    let err = ck.check_unchanged().unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("shrank"), "{err}");
    drop(ck);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn atomic_writes_go_through_symlinks_keep_modes_and_clean_up_after_killed_writers() {
    let d = scratch("atomic");
    let real = d.join("real.txt");
    std::fs::write(&real, "old").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("real.txt", d.join("link.txt")).unwrap();
    // A temporary file of a writer that no longer runs (pid 2^22 + 1 is above Linux's limit).
    std::fs::write(d.join(".real.txt.tmp-4194305"), "stale").unwrap();
    gemma::write_atomic(&d.join("link.txt"), b"new").unwrap();
    assert!(std::fs::symlink_metadata(d.join("link.txt")).unwrap().file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
    assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o640);
    assert!(!d.join(".real.txt.tmp-4194305").exists(), "the stale temporary file is still there");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn run_refuses_an_out_directory_whose_outputs_are_its_arguments() {
    let d = scratch("runout");
    let ex = repo().join("examples");
    for f in ["x.npy", "w.npy", "b.npy"] {
        std::fs::copy(ex.join(f), d.join(f)).unwrap();
    }
    // An earlier run's output used as this run's argument, in the same --out directory.
    std::fs::copy(ex.join("x.npy"), d.join("out_0.npy")).unwrap();
    let s = |f: &str| d.join(f).to_str().unwrap().to_string();
    let o = gemma_xla(&[
        "run",
        "examples/spmd_matmul.mlir",
        "--arg",
        &s("out_0.npy"),
        "--arg",
        &s("w.npy"),
        "--arg",
        &s("b.npy"),
        "--out",
        &s(""),
    ]);
    let err = fails(&o);
    assert!(err.contains("out_0.npy") && err.contains("it is the input"), "{err}");
    assert!(d.join("out_0.npy").exists());
    std::fs::remove_dir_all(d).unwrap();
}
