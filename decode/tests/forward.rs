//! `decode::forward` against HF transformers' GemmaForCausalLM (fixtures/gemma, written by
//! make_fixtures.py): logits, loss, every gradient and per-layer values of MQA, MHA, GQA and
//! heads*head_dim != d_model configs, sharded and bf16 checkpoints, and the padding mask.
use decode::forward::{forward, ForwardOptions};
use gemma::Config;
use graph::DType;
use runtime::HostArray;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    testkit::fixtures("gemma")
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// The model in `dir` run on `tokens` (and `mask`), every output as f64.
fn run(dir: &Path, tokens: &HostArray, mask: Option<&HostArray>, opts: ForwardOptions) -> Tensors {
    let cfg = Config::from_json_file(&dir.join("config.json")).unwrap();
    let ck = data::checkpoint::open(dir).unwrap();
    ck.validate(&cfg).unwrap();
    let params = data::checkpoint::param_views(&ck, &cfg).unwrap();
    let (client, _cache) = testkit::cpu_client(1);
    let out = forward(&client, &cfg, &params, tokens, mask, opts).unwrap();
    assert_eq!(client.live_buffers(), 0, "every device buffer is freed");
    out.into_iter().map(|(name, a)| (name, (a.dims().iter().map(|&d| d as usize).collect(), a.to_f64_vec()))).collect()
}

fn tokens_of(dir: &Path) -> HostArray {
    data::npy::read_token_ids(&dir.join("tokens.npy"), 1 << 20, 2).unwrap()
}

/// All tensors of a safetensors file as f64 vectors.
fn load(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    testkit::safetensors_f64(path)
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
    let got = run(&dir, &tokens_of(&dir), None, ForwardOptions { grads: true, layers: true, dtype: DType::F32, scan: false });
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
    // bf16 weights computed in f32: the weights are rounded, so the loss moves a little.
    let dir = fixtures().join("gqa_bf16");
    let got = run(&dir, &tokens_of(&dir), None, ForwardOptions::default());
    assert!(!got.contains_key("grad.model.norm.weight"));
    assert!((got["loss"].1[0] - want).abs() < 2e-2 * want, "{} vs {want}", got["loss"].1[0]);
    // f32 weights computed in bf16 (norms, softmax and loss in f32).
    let dir = fixtures().join("gqa");
    let got = run(&dir, &tokens_of(&dir), None, ForwardOptions { grads: true, layers: false, dtype: DType::Bf16, scan: false });
    assert!((got["loss"].1[0] - want).abs() < 3e-2 * want, "{} vs {want}", got["loss"].1[0]);
    assert_eq!(got["grad.model.embed_tokens.weight"].0, vec![64, 32]);
}

#[test]
fn a_padding_mask_gives_the_numbers_of_the_unpadded_sequence() {
    // Row 0 of mqa's tokens, padded at the end: the loss over the 5 real tokens must equal
    // the loss of the 5-token sequence, and so must their logits.
    let dir = fixtures().join("mqa");
    let row = [2i32, 27, 15, 13, 31, 30, 2];
    let padded = HostArray::from_vec(&[1, 7], row.to_vec()).unwrap();
    let mask = HostArray::from_vec(&[1, 7], vec![1i32, 1, 1, 1, 1, 0, 0]).unwrap();
    let short = HostArray::from_vec(&[1, 5], row[..5].to_vec()).unwrap();
    let p = run(&dir, &padded, Some(&mask), ForwardOptions::default());
    let s = run(&dir, &short, None, ForwardOptions::default());
    assert!((p["loss"].1[0] - s["loss"].1[0]).abs() < 1e-6, "{} vs {}", p["loss"].1[0], s["loss"].1[0]);
    let n = 5 * 64;
    check("masked logits", &(vec![n], p["logits"].1[..n].to_vec()), &(vec![n], s["logits"].1.clone()), 1e-6);
    // Without the mask the padded tokens count, and the loss differs.
    let u = run(&dir, &padded, None, ForwardOptions::default());
    assert!((u["loss"].1[0] - s["loss"].1[0]).abs() > 1e-3);
}
