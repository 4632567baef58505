//! `gemma-xla forward` against HF transformers' GemmaForCausalLM (fixtures/gemma, written
//! by make_fixtures.py): logits, loss, every gradient and per-layer values of MQA, MHA, GQA
//! and heads*head_dim != d_model configs, sharded and bf16 checkpoints, and bad input.
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    testkit::fixtures("gemma")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-xla-forward-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `gemma-xla forward`; returns (success, stdout, stderr).
fn forward(model: &Path, tokens: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gemma-xla"))
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
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let values: Vec<f64> = match t.dtype() {
                safetensors::Dtype::F64 => t.data().chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                safetensors::Dtype::F32 => t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (t.shape().to_vec(), values))
        })
        .collect()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// |got - want| <= tol * max(1, max|want|) elementwise; returns the worst relative error.
fn check(name: &str, got: &(Vec<usize>, Vec<f64>), want: &(Vec<usize>, Vec<f64>), tol: f64) -> f64 {
    assert_eq!(got.0, want.0, "{name}: shape");
    let scale = max_abs(&want.1).max(1.0);
    let worst = got.1.iter().zip(&want.1).map(|(g, w)| (g - w).abs() / scale).fold(0.0, f64::max);
    assert!(worst <= tol, "{name}: max error {worst:e} x max(1, max|ref|) exceeds {tol:e}");
    eprintln!("{name}: max error {worst:.2e} x max(1, max|ref|)");
    worst
}

fn compare_with_reference(config: &str, model_dir: &str) {
    let dir = fixtures().join(model_dir);
    let tmp = scratch(model_dir);
    let out = tmp.join("out.safetensors");
    let (ok, stdout, stderr) = forward(&dir, &dir.join("tokens.npy"), &out, &["--grads", "--layers"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("loss"), "{stdout}");
    let got = load(&out);
    let want = load(&fixtures().join(config).join("reference.safetensors"));
    check("logits", &got["logits"], &want["logits"], 1e-5);
    let (gl, wl) = (got["loss"].1[0], want["loss"].1[0]);
    assert!((gl - wl).abs() <= 2e-6 * wl.abs(), "loss {gl} vs transformers {wl}");
    let mut grads = 0;
    for (name, w) in &want {
        if let Some(param) = name.strip_prefix("grad.") {
            let g = got.get(name).unwrap_or_else(|| panic!("{model_dir}: no {name} in the output"));
            check(&format!("{model_dir} grad of {param}"), g, w, 5e-6);
            grads += 1;
        } else if name.starts_with("layer.") {
            check(&format!("{model_dir} {name}"), &got[name], w, 1e-5);
        }
    }
    assert_eq!(grads, 20, "every checkpoint tensor has a gradient");
    std::fs::remove_dir_all(tmp).unwrap();
}

#[test]
fn multi_query_attention_matches_transformers() {
    compare_with_reference("mqa", "mqa");
}

#[test]
fn multi_head_attention_matches_transformers() {
    compare_with_reference("mha", "mha");
}

#[test]
fn grouped_query_attention_matches_transformers() {
    compare_with_reference("gqa", "gqa");
}

#[test]
fn heads_wider_than_the_model_match_transformers() {
    compare_with_reference("wide_heads", "wide_heads");
}

#[test]
fn a_sharded_checkpoint_gives_the_same_numbers() {
    compare_with_reference("gqa", "gqa_sharded");
}

#[test]
fn bf16_checkpoints_and_bf16_compute() {
    let want = load(&fixtures().join("gqa/reference.safetensors"))["loss"].1[0];
    let tmp = scratch("bf16");
    // bf16 weights computed in f32: the weights are rounded, so the loss moves a little.
    let dir = fixtures().join("gqa_bf16");
    let (ok, _, stderr) = forward(&dir, &dir.join("tokens.npy"), &tmp.join("a.safetensors"), &[]);
    assert!(ok, "{stderr}");
    let got = load(&tmp.join("a.safetensors"));
    assert!(!got.contains_key("grad.model.norm.weight"));
    assert!((got["loss"].1[0] - want).abs() < 2e-2 * want, "{} vs {want}", got["loss"].1[0]);
    // f32 weights computed in bf16 (norms, softmax and loss in f32).
    let dir = fixtures().join("gqa");
    let (ok, _, stderr) = forward(&dir, &dir.join("tokens.npy"), &tmp.join("b.safetensors"), &["--dtype", "bf16", "--grads"]);
    assert!(ok, "{stderr}");
    let got = load(&tmp.join("b.safetensors"));
    assert!((got["loss"].1[0] - want).abs() < 3e-2 * want, "{} vs {want}", got["loss"].1[0]);
    assert_eq!(got["grad.model.embed_tokens.weight"].0, vec![64, 32]);
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

#[test]
fn a_padding_mask_gives_the_numbers_of_the_unpadded_sequence() {
    // Row 0 of mqa's tokens, padded at the end: the loss over the 5 real tokens must equal
    // the loss of the 5-token sequence, and so must their logits.
    let tmp = scratch("mask");
    let dir = fixtures().join("mqa");
    let row = [2i64, 27, 15, 13, 31, 30, 2];
    write_i64_npy(&tmp.join("padded.npy"), &[1, 7], &row);
    write_i64_npy(&tmp.join("mask.npy"), &[1, 7], &[1, 1, 1, 1, 1, 0, 0]);
    write_i64_npy(&tmp.join("short.npy"), &[1, 5], &row[..5]);
    let mask = tmp.join("mask.npy");
    let (ok, _, err) = forward(&dir, &tmp.join("padded.npy"), &tmp.join("p.safetensors"), &["--mask", mask.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = forward(&dir, &tmp.join("short.npy"), &tmp.join("s.safetensors"), &[]);
    assert!(ok, "{err}");
    let (p, s) = (load(&tmp.join("p.safetensors")), load(&tmp.join("s.safetensors")));
    assert!((p["loss"].1[0] - s["loss"].1[0]).abs() < 1e-6, "{} vs {}", p["loss"].1[0], s["loss"].1[0]);
    let n = 5 * 64;
    check("masked logits", &(vec![n], p["logits"].1[..n].to_vec()), &(vec![n], s["logits"].1.clone()), 1e-6);
    // Without the mask the padded tokens count, and the loss differs.
    let (ok, _, _) = forward(&dir, &tmp.join("padded.npy"), &tmp.join("u.safetensors"), &[]);
    assert!(ok);
    assert!((load(&tmp.join("u.safetensors"))["loss"].1[0] - s["loss"].1[0]).abs() > 1e-3);
    std::fs::remove_dir_all(tmp).unwrap();
}
