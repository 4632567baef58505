//! `gemma-xla plan` as a user runs it: bytes per device for Gemma 2B and 7B against the
//! checkpoints' parameter counts, FSDP, and every bad mesh or batch refused with a clear error.
use serde_json::Value;
use std::process::Output;

fn gemma_xla(args: &[&str]) -> Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).args(args).output().expect("spawn gemma-xla")
}

/// Runs `plan ARGS --json` and parses the object it prints.
fn plan_json(args: &[&str]) -> Value {
    let mut all = vec!["plan", "--json"];
    all.extend(args);
    let o = gemma_xla(&all);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{all:?}: {err}");
    serde_json::from_slice(&o.stdout).expect("plan --json prints one JSON object")
}

/// Runs a plan that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let mut all = vec!["plan"];
    all.extend(args);
    let o = gemma_xla(&all);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "expected exit 1 for {all:?}\nstdout: {}\nstderr: {err}", String::from_utf8_lossy(&o.stdout));
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn int(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for key in path {
        v = &v[key];
    }
    v.as_u64().unwrap_or_else(|| panic!("{path:?} is not an integer: {v}"))
}

const PARAMS_2B: u64 = 2_506_172_416;
const PARAMS_7B: u64 = 8_537_680_896;

#[test]
fn one_device_holds_every_parameter_once() {
    for (config, params) in [("2b", PARAMS_2B), ("7b", PARAMS_7B)] {
        for (dtype, size) in [("bf16", 2), ("f32", 4)] {
            let p = plan_json(&["--config", config, "--mesh", "data=1,model=1", "--dtype", dtype]);
            assert_eq!(int(&p, &["parameters"]), params);
            assert_eq!(int(&p, &["per_device", "weights"]), params * size, "{config} {dtype}");
            assert_eq!(int(&p, &["per_device", "gradients"]), params * 4);
            assert_eq!(int(&p, &["per_device", "adam_m"]), params * 4);
            assert_eq!(int(&p, &["per_device", "master_weights"]), if size == 4 { 0 } else { params * 4 });
        }
    }
}

#[test]
fn weights_per_device_are_the_sum_of_the_shards() {
    for config in ["2b", "7b"] {
        let p = plan_json(&["--config", config, "--mesh", "data=2,model=4"]);
        let tensors = p["tensors"].as_array().unwrap();
        let shards: u64 = tensors.iter().map(|t| int(t, &["bytes_per_device"])).sum();
        assert_eq!(int(&p, &["per_device", "weights"]), shards);
        let total: u64 = ["weights", "master_weights", "gradients", "adam_m", "adam_v", "activations", "fsdp_gather"]
            .iter()
            .map(|k| int(&p, &["per_device", k]))
            .sum();
        assert_eq!(int(&p, &["per_device", "total"]), total);
        assert_eq!(p["fits"].as_bool(), Some(total <= int(&p, &["budget"])));
        assert_eq!(int(&p, &["budget"]), 16 << 30);
        let q = tensors.iter().find(|t| t["name"] == "model.layers.0.self_attn.q_proj.weight").unwrap();
        assert_eq!(q["spec"], serde_json::json!([["model"], []]));
        let k = tensors.iter().find(|t| t["name"] == "model.layers.0.self_attn.k_proj.weight").unwrap();
        let kv_spec = if config == "2b" { serde_json::json!([[], []]) } else { serde_json::json!([["model"], []]) };
        assert_eq!(k["spec"], kv_spec, "{config}: a single kv head stays replicated over model");
    }
}

#[test]
fn fsdp_divides_the_weights_over_data() {
    let plain = plan_json(&["--config", "7b", "--mesh", "data=4,model=2"]);
    let fsdp = plan_json(&["--config", "7b", "--mesh", "data=4,model=2", "--fsdp"]);
    let (a, b) = (int(&plain, &["per_device", "weights"]), int(&fsdp, &["per_device", "weights"]));
    // Every 7B matrix splits over all 8 devices, the 57 norms [3072] over data=4 only.
    let norms = 57 * 3072;
    assert_eq!(b, ((PARAMS_7B - norms) / 8 + norms / 4) * 2);
    assert!(a > b * 3 && a < b * 5, "fsdp should divide weights by ~data=4: {a} vs {b}");
    assert!(int(&fsdp, &["per_device", "fsdp_gather"]) > 0);
    assert_eq!(fsdp["fsdp"].as_bool(), Some(true));
}

#[test]
fn the_table_names_layers_once_and_gives_a_verdict() {
    let o = gemma_xla(&["plan", "--config", "7b", "--mesh", "data=32,model=8", "--fsdp", "--batch", "256", "--memory", "16GiB"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("model.layers.*.self_attn.q_proj.weight"), "{out}");
    assert!(out.contains("x28"), "{out}");
    assert!(!out.contains("model.layers.1."), "{out}");
    assert!(out.contains("fits in 16.00 GiB per device") || out.contains("does NOT fit"), "{out}");
    assert!(out.contains("activations = "), "{out}");
}

#[test]
fn remat_shrinks_the_activation_estimate() {
    let bytes = |remat: &str| -> i64 {
        let o = gemma_xla(&[
            "plan",
            "--config",
            "7b",
            "--mesh",
            "data=32,model=8",
            "--fsdp",
            "--batch",
            "256",
            "--seq",
            "2048",
            "--json",
            "--remat",
            remat,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["remat"], remat);
        v["per_device"]["activations"].as_i64().unwrap()
    };
    let (none, full, dots) = (bytes("none"), bytes("full"), bytes("save-dots"));
    assert!(full < dots && dots < none, "{full} {dots} {none}");
    assert!(full * 4 < none, "full keeps one value per layer: {full} vs {none}");
}

#[test]
fn bad_meshes_and_batches_are_refused() {
    let heads = fails(&["--config", "7b", "--mesh", "model=3"]);
    assert!(heads.contains("is split over mesh axis model=3"), "{heads}");
    assert!(heads.contains("model.layers.0.self_attn.q_proj.weight dimension 0 (16 heads)"), "{heads}");
    assert!(heads.contains("meshes of 3 devices that work: data=3,model=1"), "{heads}");

    let axis = fails(&["--config", "2b", "--mesh", "data=2,tensor=4"]);
    assert!(axis.contains("mesh axis \"tensor\" has no sharding rule (known axes: data, model)"), "{axis}");
    let twice = fails(&["--config", "2b", "--mesh", "data=2,data=4"]);
    assert!(twice.contains("axis \"data\" is listed twice"), "{twice}");
    let batch = fails(&["--config", "2b", "--mesh", "data=4,model=2", "--batch", "6"]);
    assert!(batch.contains("batch 6 cannot be split over data=4"), "{batch}");
    let devices = fails(&["--config", "7b", "--mesh", "data=2,model=4", "--devices", "4"]);
    assert!(devices.contains("has 8 devices but there are 4"), "{devices}");
    assert!(devices.contains("meshes of 4 devices that work: data=1,model=4, data=2,model=2, data=4,model=1"), "{devices}");
    let preset = fails(&["--config", "13b", "--mesh", "data=1"]);
    assert!(preset.contains("unknown preset \"13b\""), "{preset}");
    let missing = fails(&["--config", "/nonexistent/config.json", "--mesh", "data=1"]);
    assert!(missing.contains("/nonexistent/config.json"), "{missing}");
}

#[test]
fn an_hf_config_file_is_read() {
    let dir = testkit::scratch_dir("plan");
    let path = dir.join("config.json");
    let config = r#"{"model_type": "gemma", "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 64}"#;
    std::fs::write(&path, config).unwrap();
    let p = plan_json(&["--config", path.to_str().unwrap(), "--mesh", "model=2", "--batch", "3", "--dtype", "f32"]);
    let params = 64 * 32 + 2 * (32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 32 + 3 * 48 * 32) + 32;
    assert_eq!(int(&p, &["parameters"]), params);
    assert_eq!(p["batch_spec"], serde_json::json!([[], []]), "no data axis: the batch is not split");
    let _ = std::fs::remove_dir_all(&dir);
}
