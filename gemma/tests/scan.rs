//! Decoder layers as a loop (`ModelOptions::scan`) compute what the unrolled layers compute:
//! loss, logits, per-layer values and every gradient, in f64 through `graph::eval` (no
//! plugin), for Gemma 1, Gemma 2's alternating layers and Gemma 3's 5:1 pattern (whole
//! periods in the loop, the rest after it), under every remat policy and with LoRA adapters.
use gemma::lora::Lora;
use gemma::LayerKind;
use gemma::{Config, ModelOptions};
use graph::{DType, Remat, Tensor, TensorType, Tree};
use ndarray::{ArrayD, IxDyn};
use std::path::PathBuf;

fn values(dims: &[i64], seed: u64, scale: f64) -> ArrayD<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    ArrayD::from_shape_fn(IxDyn(&shape), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * scale
    })
}

fn fixture_config(name: &str) -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gemma23").join(name).join("config.json");
    Config::from_json_file(&path).unwrap()
}

/// `cfg` with `layers` layers, the kinds continuing its pattern.
fn deeper(mut cfg: Config, layers: usize) -> Config {
    let per = gemma::layer_period(&cfg);
    let kinds: Vec<LayerKind> = (0..layers).map(|i| cfg.layer_types[i % per]).collect();
    cfg.layer_types = kinds;
    cfg.num_hidden_layers = layers;
    cfg
}

/// Every output of value_and_grad(model) over random weights (and adapters), by name.
fn run(cfg: &Config, opts: ModelOptions, lora: Option<&Lora>) -> Vec<(String, ArrayD<f64>)> {
    let mut types = gemma::model_args(cfg, DType::F64, 2, 7, opts);
    if let Some(l) = lora {
        for (n, d) in l.shapes(cfg) {
            types.insert(format!("params.{n}"), TensorType::new(DType::F64, &d)).unwrap();
        }
    }
    let f = graph::trace_tree("model", &types, |a: &Tree<Tensor>| gemma::model_with_adapters(cfg, a, opts, None, lora).unwrap()).unwrap();
    let g = graph::value_and_grad_tree(&f, "loss", "params").unwrap();
    // The forward loop and its backward loop, or none.
    assert_eq!(g.count("scan"), if opts.scan { 2 } else { 0 }, "scan: {}", opts.scan);
    let args: Vec<ArrayD<f64>> = g
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.name == "tokens" {
                values(&p.ty.dims, 9, 1.0).mapv(|v| ((v + 1.0) * (cfg.vocab_size as f64 / 2.0 - 1.0)).floor())
            } else {
                values(&p.ty.dims, i as u64 + 1, 0.3)
            }
        })
        .collect();
    g.outputs.iter().map(|o| o.name.clone()).zip(graph::eval(&g, &args).unwrap()).collect()
}

fn assert_same(what: &str, got: &[(String, ArrayD<f64>)], want: &[(String, ArrayD<f64>)]) {
    let names = |v: &[(String, ArrayD<f64>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: outputs");
    for ((name, x), (_, y)) in got.iter().zip(want) {
        let worst = (x - y).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v));
        assert!(worst <= 1e-12, "{what}: {name} differs by {worst}");
    }
}

#[test]
fn scanned_layers_give_the_unrolled_values_and_gradients() {
    let cases = [
        ("gemma 1, 3 layers", deeper(Config::preset("tiny").unwrap(), 3)),
        ("gemma 2, 4 layers (2 periods)", fixture_config("gemma2")),
        ("gemma 2, 5 layers (2 periods and 1 more)", deeper(fixture_config("gemma2"), 5)),
        ("gemma 3, 8 layers (1 period and 2 more)", deeper(fixture_config("gemma3"), 8)),
    ];
    for (what, cfg) in &cases {
        for remat in [Remat::None, Remat::Full, Remat::SaveDots] {
            let opts = ModelOptions { layers: true, remat, ..ModelOptions::default() };
            let want = run(cfg, opts, None);
            let got = run(cfg, ModelOptions { scan: true, ..opts }, None);
            assert_same(&format!("{what}, remat {remat}"), &got, &want);
        }
    }
}

#[test]
fn scanned_layers_train_lora_adapters_like_unrolled_ones() {
    let cfg = deeper(Config::preset("tiny").unwrap(), 3);
    let targets: Vec<String> = ["q_proj", "v_proj", "down_proj"].iter().map(|s| s.to_string()).collect();
    let lora = Lora::new(&cfg, 2, 4.0, &targets).unwrap();
    let opts = ModelOptions::default();
    assert_same("lora", &run(&cfg, ModelOptions { scan: true, ..opts }, Some(&lora)), &run(&cfg, opts, Some(&lora)));
}

#[test]
fn the_scanned_program_does_not_grow_with_depth() {
    let size = |layers: usize, scan: bool| {
        let cfg = deeper(Config::preset("tiny").unwrap(), layers);
        let f = gemma::trace_model(&cfg, DType::F32, 2, 8, ModelOptions { scan, ..ModelOptions::default() }).unwrap();
        let g = graph::value_and_grad_tree(&f, "loss", "params").unwrap();
        let text = g.to_stablehlo().unwrap();
        text.matches("stablehlo.dot_general").count()
    };
    // Unrolled: each layer adds its matmuls and their gradients; scanned: the loop bodies
    // hold one layer's, whatever the depth.
    assert!(size(8, false) > size(2, false));
    assert_eq!(size(8, true), size(2, true));
    assert!(size(8, true) < size(8, false));
}

/// Values for a train-step argument by its path: weights and moments random (v positive),
/// the step count 3, tokens in the vocabulary.
fn state_value(cfg: &Config, path: &str, dims: &[i64]) -> ArrayD<f64> {
    let seed = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    match path {
        "state.step" => ArrayD::from_elem(IxDyn(&[]), 3.0),
        "batch.tokens" => values(dims, 9, 1.0).mapv(|v| ((v + 1.0) * (cfg.vocab_size as f64 / 2.0 - 1.0)).floor()),
        p if p.starts_with("state.opt.v.") => values(dims, seed, 0.01).mapv(f64::abs),
        _ => values(dims, seed, 0.05),
    }
}

#[test]
fn a_stacked_train_state_steps_like_the_per_layer_one() {
    // Gemma 2 with 5 layers: layers 0-3 stacked as 2 periods of 2, layer 4 per layer.
    let cfg = deeper(fixture_config("gemma2"), 5);
    let stacking = gemma::stack::Stacking::of(&cfg);
    let hp = gemma::Hyper { compute: DType::F32, ..gemma::Hyper::default() };
    let step = |stacked: bool| {
        let types = gemma::train_args_with(&cfg, 2, 7, false, stacked);
        graph::trace_tree("step", &types, |a: &Tree<Tensor>| gemma::train_step(&cfg, &hp, None, a).unwrap()).unwrap()
    };
    let (plain, stacked) = (step(false), step(true));
    assert!(stacked.params.iter().any(|p| p.name == "state.params.model.stacked.1.mlp.up_proj.weight"));
    let arg = |name: &str, dims: &[i64]| -> ArrayD<f64> {
        // A stacked tensor: its layers' values stacked, so both programs start alike.
        let (prefix, rest) = name.split_at(name.find("model.").unwrap_or(0));
        match stacking.parse(rest) {
            Some(_) => {
                let layers: Vec<ArrayD<f64>> =
                    stacking.members(rest).iter().map(|m| state_value(&cfg, &format!("{prefix}{m}"), &dims[1..])).collect();
                let views: Vec<_> = layers.iter().map(|a| a.view()).collect();
                ndarray::stack(ndarray::Axis(0), &views).unwrap()
            }
            None => state_value(&cfg, name, dims),
        }
    };
    let run = |f: &graph::Function| {
        let args: Vec<ArrayD<f64>> = f.params.iter().map(|p| arg(&p.name, &p.ty.dims)).collect();
        f.outputs.iter().map(|o| o.name.clone()).zip(graph::eval(f, &args).unwrap()).collect::<std::collections::BTreeMap<_, _>>()
    };
    let (want, got) = (run(&plain), run(&stacked));
    let mut checked = 0;
    for (name, w) in &want {
        let (prefix, rest) = name.split_at(name.find("model.").unwrap_or(0));
        let g = match stacking.stacked_name(rest) {
            Some((s, g)) => got[&format!("{prefix}{s}")].index_axis(ndarray::Axis(0), g).to_owned(),
            None => got[name].clone(),
        };
        let worst = (&g - w).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v)) / w.mapv(f64::abs).fold(1.0, |m: f64, &v| m.max(v));
        assert!(worst <= 2e-6, "{name} differs by {worst}");
        checked += 1;
    }
    // Every state tensor (3 per checkpoint tensor), the step and the 3 metrics.
    assert_eq!(checked, 3 * gemma::param_shapes(&cfg).len() + 4);
}

/// A value for a per-layer `extend` argument by path (weights, caches, tokens, start, lengths).
fn extend_value(cfg: &Config, path: &str, dims: &[i64]) -> ArrayD<f64> {
    let seed = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    match path {
        "tokens" => values(dims, 9, 1.0).mapv(|v| ((v + 1.0) * (cfg.vocab_size as f64 / 2.0 - 1.0)).floor()),
        // Row 0 fills an empty cache; row 1 continues after 3 cached positions with 2 real tokens.
        "start" => ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.0, 3.0]).unwrap(),
        "lengths" => ArrayD::from_shape_vec(IxDyn(&[2]), vec![5.0, 2.0]).unwrap(),
        _ => values(dims, seed, 0.3),
    }
}

#[test]
fn a_stacked_cache_extends_like_the_per_layer_one() {
    // Prefill into stacked weights and a stacked cache (the layers as a loop) against the
    // unrolled layers with a cache per layer: the same logits and the same new caches, for
    // whole periods only and with layers after the last period, global and sliding layers.
    let cases = [
        ("gemma 1, 3 layers", deeper(Config::preset("tiny").unwrap(), 3)),
        ("gemma 2, 5 layers", deeper(fixture_config("gemma2"), 5)),
        ("gemma 3, 8 layers", deeper(fixture_config("gemma3"), 8)),
    ];
    for (what, cfg) in &cases {
        let stacking = gemma::stack::Stacking::of(cfg);
        let trace = |stacked: bool| {
            let types = gemma::decode::extend_args_with(cfg, DType::F64, 2, 5, 12, stacked);
            graph::trace_tree("extend", &types, |a: &Tree<Tensor>| gemma::decode::extend(cfg, a, gemma::decode::Head::All, None).unwrap())
                .unwrap()
        };
        let (plain, stacked) = (trace(false), trace(true));
        assert_eq!(plain.count("scan"), 0, "{what}");
        assert_eq!(stacked.count("scan"), 1, "{what}");
        // The per-layer name of entry g of a stacked argument or output.
        let member = |name: &str, g: usize| -> Option<String> {
            if let Some(rest) = name.strip_prefix("params.") {
                return stacking.layer_name(rest, g).map(|n| format!("params.{n}"));
            }
            let (j, kv) = name.strip_prefix("cache.stacked.")?.split_once('.')?;
            Some(format!("cache.{}.{kv}", g * stacking.period + j.parse::<usize>().ok()?))
        };
        let arg = |name: &str, dims: &[i64]| -> ArrayD<f64> {
            match member(name, 0) {
                Some(_) => {
                    let parts: Vec<ArrayD<f64>> =
                        (0..stacking.groups).map(|g| extend_value(cfg, &member(name, g).unwrap(), &dims[1..])).collect();
                    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
                    ndarray::stack(ndarray::Axis(0), &views).unwrap()
                }
                None => extend_value(cfg, name, dims),
            }
        };
        let run = |f: &graph::Function| {
            let args: Vec<ArrayD<f64>> = f.params.iter().map(|p| arg(&p.name, &p.ty.dims)).collect();
            f.outputs.iter().map(|o| o.name.clone()).zip(graph::eval(f, &args).unwrap()).collect::<std::collections::BTreeMap<_, _>>()
        };
        let (want, got) = (run(&plain), run(&stacked));
        let mut unstacked = std::collections::BTreeMap::new();
        for (name, v) in &got {
            match member(name, 0) {
                Some(_) => {
                    for g in 0..stacking.groups {
                        unstacked.insert(member(name, g).unwrap(), v.index_axis(ndarray::Axis(0), g).to_owned());
                    }
                }
                None => {
                    unstacked.insert(name.clone(), v.clone());
                }
            }
        }
        assert_eq!(unstacked.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: outputs");
        for (name, w) in &want {
            let worst = (&unstacked[name] - w).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v));
            assert!(worst <= 1e-12, "{what}: {name} differs by {worst}");
        }
    }
}
