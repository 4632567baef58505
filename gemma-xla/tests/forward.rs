//! `gemma-xla forward`: the file it writes, and bad models and tokens refused clearly. The
//! numbers against transformers are library tests (decode/tests/forward.rs).
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    testkit::fixtures("gemma")
}

fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("forward-{name}"))
}

/// Runs `gemma-xla forward`; returns (success, stdout, stderr).
fn forward(model: &Path, tokens: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["forward", "--model"])
        .arg(model)
        .arg("--tokens")
        .arg(tokens)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// All tensors of a safetensors file as f64 vectors.
fn load(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    testkit::safetensors_f64(path)
}

#[test]
fn the_command_writes_logits_loss_and_gradients() {
    // The numbers are checked against transformers in decode/tests/forward.rs; here: the file.
    let dir = fixtures().join("mqa");
    let tmp = scratch("cli");
    let out = tmp.join("out.safetensors");
    let (ok, stdout, stderr) = forward(&dir, &dir.join("tokens.npy"), &out, &["--grads", "--layers"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("loss") && stdout.contains(out.to_str().unwrap()), "{stdout}");
    let got = load(&out);
    let want = load(&fixtures().join("mqa/reference.safetensors"));
    let (gl, wl) = (got["loss"].1[0], want["loss"].1[0]);
    assert!((gl - wl).abs() <= 2e-6 * wl.abs(), "loss {gl} vs transformers {wl}");
    assert_eq!(got.keys().filter(|k| k.starts_with("grad.")).count(), 20);
    assert!(got.contains_key("layer.final_norm"));
    std::fs::remove_dir_all(tmp).unwrap();
}

/// Copies a fixture model into a scratch directory for breaking.
fn copy_model(name: &str, tag: &str) -> PathBuf {
    let tmp = scratch(tag);
    for f in ["config.json", "model.safetensors", "tokens.npy"] {
        std::fs::copy(fixtures().join(name).join(f), tmp.join(f)).unwrap();
    }
    tmp
}

fn fails(model: &Path, tokens: &Path, out: &Path) -> String {
    let (ok, _, stderr) = forward(model, tokens, out, &["--grads"]);
    assert!(!ok, "expected a failure");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "no output may be written on failure");
    stderr
}

#[test]
fn bad_models_and_tokens_are_clear_errors() {
    let m = copy_model("mqa", "bad");
    let tokens = m.join("tokens.npy");
    let out = m.join("out.safetensors");

    let empty = scratch("empty");
    let err = fails(&empty, &tokens, &out);
    assert!(err.contains(&format!("{}: no config.json in the model directory", empty.display())), "{err}");

    // A config whose hidden size disagrees with the tensors.
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    std::fs::write(m.join("config.json"), cfg.replace("\"hidden_size\": 32", "\"hidden_size\": 16")).unwrap();
    let err = fails(&m, &tokens, &out);
    assert!(err.contains("tensor model.embed_tokens.weight has shape [64, 32], but the config needs [64, 16]"), "{err}");
    std::fs::write(m.join("config.json"), &cfg).unwrap();

    // Token ids outside the vocabulary, and an empty token file.
    let bad_tokens = m.join("bad_tokens.npy");
    write_i64_npy(&bad_tokens, &[1, 3], &[5, 64, 2]);
    let err = fails(&m, &bad_tokens, &out);
    assert!(err.contains("token [0, 1] = 64 is outside the vocabulary [0, 64)"), "{err}");
    write_i64_npy(&bad_tokens, &[0, 7], &[]);
    let err = fails(&m, &bad_tokens, &out);
    assert!(err.contains("the token file is empty"), "{err}");

    // A corrupted safetensors header.
    let st = m.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    bytes[10] = b'#';
    bytes[11] = b'!';
    std::fs::write(&st, &bytes).unwrap();
    let err = fails(&m, &tokens, &out);
    assert!(err.contains(&format!("{}: bad safetensors header", st.display())), "{err}");
    // A truncated file.
    let good = std::fs::read(fixtures().join("mqa/model.safetensors")).unwrap();
    std::fs::write(&st, &good[..good.len() - 100]).unwrap();
    let err = fails(&m, &tokens, &out);
    assert!(err.contains(st.to_str().unwrap()), "{err}");
    std::fs::remove_dir_all(m).unwrap();
    std::fs::remove_dir_all(empty).unwrap();
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let m = copy_model("mqa", "tensors");
    let st = m.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let loaded = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, safetensors::tensor::TensorView)> =
        loaded.tensors().into_iter().filter(|(n, _)| n != "model.layers.1.mlp.up_proj.weight").collect();
    let extra = vec![0u8; 16];
    kept.push(("model.layers.9.extra".into(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap()));
    safetensors::serialize_to_file(kept, None, &st).unwrap();
    let err = fails(&m, &m.join("tokens.npy"), &m.join("out.safetensors"));
    assert!(err.contains("missing tensors: model.layers.1.mlp.up_proj.weight"), "{err}");
    std::fs::remove_dir_all(m).unwrap();
}

fn write_i64_npy(path: &Path, shape: &[usize], values: &[i64]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let header = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}", dims.join(", "));
    let mut padded = header;
    while (10 + padded.len() + 1) % 64 != 0 {
        padded.push(' ');
    }
    padded.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((padded.len() as u16).to_le_bytes());
    bytes.extend(padded.as_bytes());
    for v in values {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}
