//! Gemma 2 and Gemma 3 (text) against HF transformers' Gemma2ForCausalLM and
//! Gemma3ForCausalLM in float64 (fixtures/gemma23, written by make_fixtures.py): logits, loss,
//! every gradient and per-layer values, in f64 and in f32; both config spellings describe the
//! same model.
use decode::forward::{forward, ForwardOptions};
use gemma::Config;
use graph::DType;
use std::collections::BTreeMap;
use std::path::PathBuf;

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

fn dir(name: &str) -> PathBuf {
    testkit::fixtures("gemma23").join(name)
}

fn run(name: &str, dtype: DType, scan: bool) -> Tensors {
    run_scan(name, dtype, scan, |_| {})
}

/// The fixture model run with its config changed by `change`.
fn run_with(name: &str, dtype: DType, change: impl Fn(&mut Config)) -> Tensors {
    run_scan(name, dtype, false, change)
}

/// `run_with`, the layers unrolled or (`scan`) run as a loop.
fn run_scan(name: &str, dtype: DType, scan: bool, change: impl Fn(&mut Config)) -> Tensors {
    let d = dir(name);
    let mut cfg = Config::from_json_file(&d.join("config.json")).unwrap();
    change(&mut cfg);
    let ck = data::checkpoint::open(&d).unwrap();
    ck.validate(&cfg).unwrap();
    let params = data::checkpoint::param_views(&ck, &cfg).unwrap();
    let tokens = data::npy::read_token_ids(&d.join("tokens.npy"), cfg.vocab_size, 2).unwrap();
    let (client, _cache) = testkit::cpu_client(1);
    let out = forward(&client, &cfg, &params, &tokens, None, ForwardOptions { grads: true, layers: true, dtype, scan }).unwrap();
    out.into_iter().map(|(n, a)| (n, (a.dims().iter().map(|&x| x as usize).collect(), a.to_f64_vec()))).collect()
}

/// The worst |got - want| / max(1, max|want|).
fn err(got: &(Vec<usize>, Vec<f64>), want: &(Vec<usize>, Vec<f64>)) -> f64 {
    assert_eq!(got.0, want.0);
    let scale = want.1.iter().fold(1f64, |m, x| m.max(x.abs()));
    got.1.iter().zip(&want.1).map(|(g, w)| (g - w).abs() / scale).fold(0.0, f64::max)
}

fn compare(name: &str, dtype: DType, tol: f64) {
    compare_scan(name, dtype, tol, false);
}

fn compare_scan(name: &str, dtype: DType, tol: f64, scan: bool) {
    let got = run(name, dtype, scan);
    let want = testkit::safetensors_f64(&dir(name).join("reference.safetensors"));
    let mut checked = 0;
    let mut worst = (0f64, String::new());
    for (key, w) in want.iter().filter(|(k, _)| !k.starts_with("f32.")) {
        let out_key = key.clone();
        let g = got.get(&out_key).unwrap_or_else(|| panic!("{name}: no {key} in the output"));
        let e = err(g, w);
        if e > worst.0 {
            worst = (e, key.clone());
        }
        checked += 1;
    }
    eprintln!("{name} {dtype} (scan {scan}): {checked} tensors, worst {:.2e} ({})", worst.0, worst.1);
    assert!(worst.0 <= tol, "{name} {dtype}: {} differs by {:e} x max(1, max|ref|)", worst.1, worst.0);
}

#[test]
fn gemma2_matches_transformers_in_f64_and_f32() {
    compare("gemma2", DType::F64, 1e-10);
    compare("gemma2", DType::F32, 2e-5);
}

#[test]
fn gemma3_matches_transformers_in_f64_and_f32() {
    compare("gemma3", DType::F64, 1e-10);
    compare("gemma3", DType::F32, 2e-5);
}

#[test]
fn scanned_layers_match_transformers_too() {
    // Gemma 2's 4 layers loop as 2 periods of (sliding, global); Gemma 3's 6 as one period.
    for name in ["gemma2", "gemma3"] {
        compare_scan(name, DType::F64, 1e-10, true);
        compare_scan(name, DType::F32, 2e-5, true);
    }
}

#[test]
fn both_config_spellings_give_the_same_model() {
    for name in ["gemma2", "gemma3"] {
        let new = Config::from_json_file(&dir(name).join("config.json")).unwrap();
        let old = Config::from_json_file(&dir(name).join("config_released.json")).unwrap();
        assert_eq!(new, old, "{name}");
        // And our own config.json for it reads back the same.
        assert_eq!(Config::from_json(&new.to_hf_json()).unwrap(), new, "{name}");
    }
}

#[test]
fn the_checks_see_an_off_by_one_window_and_a_missing_cap() {
    // Mutations of the model the parity checks must catch: the logits move far beyond the
    // f64 tolerance (1e-10) and the f32 one (2e-5).
    let want = testkit::safetensors_f64(&dir("gemma2").join("reference.safetensors"));
    type Change = Box<dyn Fn(&mut Config)>;
    let mutations: [(&str, &str, Change); 4] = [
        ("gemma2", "a window one wider", Box::new(|c: &mut Config| c.sliding_window += 1)),
        ("gemma2", "no attention cap", Box::new(|c: &mut Config| c.attn_logit_softcapping = None)),
        ("gemma2", "no final cap", Box::new(|c: &mut Config| c.final_logit_softcapping = None)),
        ("gemma3", "no linear RoPE scaling", Box::new(|c: &mut Config| c.rope_scaling_factor = 1.0)),
    ];
    for (name, what, change) in mutations {
        let want = if name == "gemma2" { want.clone() } else { testkit::safetensors_f64(&dir(name).join("reference.safetensors")) };
        let got = run_with(name, DType::F64, change);
        let e = err(&got["logits"], &want["logits"]);
        assert!(e > 1e-3, "{name} with {what}: logits moved only {e:e}");
    }
}

/// Greedy generation with the KV cache against transformers' `generate(do_sample=False)`,
/// token for token, past twice the sliding window; on one device and on data=2,model=2, with
/// the layers as a loop over a stacked cache or unrolled over a cache per layer.
fn greedy_matches(name: &str, mesh: &str, scan: bool) {
    let d = dir(name);
    let cfg = Config::from_json_file(&d.join("config.json")).unwrap();
    let ck = data::checkpoint::open(&d).unwrap();
    let params = data::checkpoint::param_views(&ck, &cfg).unwrap();
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("greedy.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<Vec<i32>> {
        v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()).collect()
    };
    let (prompts, new_tokens) = (ids(&want["prompts"]), ids(&want["new_tokens"]));
    let mesh = runtime::Mesh::parse(mesh).unwrap();
    let (client, _cache) = testkit::cpu_client(mesh.num_devices() as usize);
    let placement = decode::Placement { dtype: DType::F32, mesh, fsdp: false, scan };
    let mut g = decode::Generator::new(&client, &cfg, &params, placement, 2, 32).unwrap();
    assert_eq!(g.scans_layers(), scan);
    let refs: Vec<&[i32]> = prompts.iter().map(Vec::as_slice).collect();
    let n = new_tokens[0].len();
    assert!(prompts[0].len() + n > 2 * cfg.sliding_window as usize);
    let out = decode::generate(&mut g, &refs, &[0, 0], n, &mut decode::Sampler::greedy(), &[], |_, _| Ok(false)).unwrap();
    assert_eq!(out.new_tokens, new_tokens, "{name} (scan {scan}): greedy tokens differ from transformers'");
}

#[test]
fn greedy_generation_matches_transformers_past_twice_the_window() {
    for name in ["gemma2", "gemma3"] {
        for scan in [true, false] {
            greedy_matches(name, "data=1", scan);
            greedy_matches(name, "data=2,model=2", scan);
        }
    }
}

#[test]
fn local_layers_keep_a_window_sized_ring_and_uneven_prefills_work() {
    let d = dir("gemma2");
    let cfg = Config::from_json_file(&d.join("config.json")).unwrap();
    // Sliding layers hold `window` slots whatever the cache length; global ones all of it.
    for (path, ty) in gemma::decode::cache_types(&cfg, DType::F32, 2, 64) {
        let layer: usize = path.split('.').nth(1).unwrap().parse().unwrap();
        let want = if cfg.layer_types[layer] == gemma::LayerKind::Sliding { 3 } else { 64 };
        assert_eq!(ty.dims[1], want, "{path}");
    }
    // Rows of different lengths (one longer than twice the window), generated with the cache,
    // against a full recomputation of every sequence at every step.
    let ck = data::checkpoint::open(&d).unwrap();
    let params = data::checkpoint::param_views(&ck, &cfg).unwrap();
    let (client, _cache) = testkit::cpu_client(1);
    let prompts: Vec<Vec<i32>> = vec![vec![2, 9, 17, 33, 8, 41, 12, 5], vec![2, 30]];
    let refs: Vec<&[i32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut g = decode::Generator::new(&client, &cfg, &params, decode::Placement::single(DType::F32), 2, 24).unwrap();
    let steps = 6;
    let out = decode::generate(&mut g, &refs, &[0, 0], steps, &mut decode::Sampler::greedy(), &[], |_, _| Ok(false)).unwrap();
    for (row, (prompt, new)) in prompts.iter().zip(&out.new_tokens).enumerate() {
        let mut seq = prompt.clone();
        for (step, &id) in new.iter().enumerate() {
            let tokens = runtime::HostArray::from_vec(&[1, seq.len() as i64], seq.clone()).unwrap();
            let logits = forward(&client, &cfg, &params, &tokens, None, ForwardOptions::default()).unwrap();
            let logits = logits.iter().find(|(n, _)| n == "logits").unwrap().1.to_vec::<f32>().unwrap();
            let last = &logits[(seq.len() - 1) * 64..seq.len() * 64];
            let best = last.iter().enumerate().fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0 as i32;
            assert_eq!(id, best, "row {row} step {step}: the cached token differs from recomputation");
            seq.push(id);
        }
    }
}

/// LoRA adapters (random, so that B is not zero) applied unmerged while generating: with the
/// layers as a loop the adapters are stacked like their weights, and the greedy tokens and the
/// scored log-probabilities are those of the unrolled program; Gemma 2 whole (two periods of
/// two layers, also on data=2,model=2), cut to 3 layers (one period and a layer after it) and
/// Gemma 3 (one period of 6).
#[test]
fn adapters_are_applied_inside_the_layer_loop() {
    for (name, layers) in [("gemma2", 4), ("gemma2", 3), ("gemma3", 6)] {
        let d = dir(name);
        let mut cfg = Config::from_json_file(&d.join("config.json")).unwrap();
        cfg.num_hidden_layers = layers;
        cfg.layer_types.truncate(layers);
        let ck = data::checkpoint::open(&d).unwrap();
        let targets: Vec<String> = ["q_proj", "v_proj", "down_proj"].iter().map(|s| s.to_string()).collect();
        let lora = gemma::lora::Lora::new(&cfg, 4, 8.0, &targets).unwrap();
        let mut seed = 7u64;
        let adapters: Vec<(String, runtime::HostArray)> = lora
            .shapes(&cfg)
            .into_iter()
            .map(|(n, dims)| {
                let count = dims.iter().product::<i64>() as usize;
                let v: Vec<f32> = (0..count)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32 * 0.2
                    })
                    .collect();
                (n, runtime::HostArray::from_vec(&dims, v).unwrap())
            })
            .collect();
        let base = data::checkpoint::param_views(&ck, &cfg).unwrap();
        let mut params = data::checkpoint::param_views(&ck, &cfg).unwrap();
        for (n, a) in &adapters {
            params.insert(n.clone(), runtime::AsHostView::host_view(a)).unwrap();
        }
        let rows: Vec<Vec<i32>> = vec![vec![2, 9, 17, 33, 8, 41, 12, 5], vec![2, 30, 7]];
        let refs: Vec<&[i32]> = rows.iter().map(Vec::as_slice).collect();
        // Each position's target: the next token (and 1 after the last).
        let next: Vec<Vec<i32>> = rows.iter().map(|r| r[1..].iter().copied().chain([1]).collect()).collect();
        let next_refs: Vec<&[i32]> = next.iter().map(Vec::as_slice).collect();
        let meshes: &[&str] = if layers == 4 { &["data=1", "data=2,model=2"] } else { &["data=1"] };
        for &mesh in meshes {
            let run = |scan: bool, with: bool| {
                let mesh = runtime::Mesh::parse(mesh).unwrap();
                let (client, _cache) = testkit::cpu_client(mesh.num_devices() as usize);
                let placement = decode::Placement { dtype: DType::F32, mesh, fsdp: false, scan };
                let (p, l) = if with { (&params, Some(&lora)) } else { (&base, None) };
                let mut g = decode::Generator::with_adapters(&client, &cfg, p, placement, 2, 24, l).unwrap();
                assert_eq!(g.scans_layers(), scan);
                let scores = g.score(&refs, &[0, 0], &next_refs).unwrap();
                let out = decode::generate(&mut g, &refs, &[0, 0], 6, &mut decode::Sampler::greedy(), &[], |_, _| Ok(false)).unwrap();
                (out.new_tokens, scores.into_iter().flat_map(|(lp, _)| lp).collect::<Vec<f32>>())
            };
            let (looped, unrolled, plain) = (run(true, true), run(false, true), run(true, false));
            let what = format!("{name} with {layers} layers on {mesh}");
            assert_eq!(looped.0, unrolled.0, "{what}: greedy tokens differ");
            assert_eq!(looped.1.len(), unrolled.1.len());
            for (a, b) in looped.1.iter().zip(&unrolled.1) {
                assert!((a - b).abs() <= 2e-5 * b.abs().max(1.0), "{what}: log-prob {a} in the loop, {b} unrolled");
            }
            let moved = looped.1.iter().zip(&plain.1).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(moved > 1e-3, "{what}: the adapters change nothing ({moved:e})");
        }
    }
}
