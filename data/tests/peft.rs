//! PEFT adapter directories: the one PEFT wrote (fixtures/lora/init) reads back with its
//! settings; a tensor name the model does not have, a missing tensor and unsupported
//! settings are errors naming them.
use data::peft::{read_config, read_weights};
use gemma::{Config, SaveTensor};
use graph::DType;

fn cfg() -> Config {
    Config::from_json_file(&testkit::fixtures("generate").join("config.json")).unwrap()
}

#[test]
fn peft_s_own_adapter_reads_back() {
    let dir = testkit::fixtures("lora").join("init");
    let lora = read_config(&dir, &cfg()).unwrap();
    assert_eq!((lora.rank, lora.alpha), (4, 8.0));
    assert_eq!(lora.targets, vec!["q_proj", "v_proj", "down_proj"]);
    let w = read_weights(&dir, &cfg(), &lora).unwrap();
    assert_eq!(w.len(), 2 * 3 * 2);
    assert_eq!(w[0].0, "model.layers.0.self_attn.q_proj.lora_A.weight");
}

#[test]
fn adapters_that_do_not_fit_the_model_are_refused() {
    let src = testkit::fixtures("lora").join("init");
    let dir = testkit::scratch("peft-bad");
    let lora = read_config(&src, &cfg()).unwrap();
    let tensors = read_weights(&src, &cfg(), &lora).unwrap();
    std::fs::copy(src.join("adapter_config.json"), dir.path().join("adapter_config.json")).unwrap();
    let write = |rename: Option<(&str, &str)>, drop_last: bool| {
        let mut list: Vec<SaveTensor> = tensors
            .iter()
            .map(|(n, a)| {
                let mut name = format!("base_model.model.{n}");
                if let Some((from, to)) = rename {
                    name = name.replace(from, to);
                }
                SaveTensor { name, dtype: DType::F32, shape: a.dims().to_vec(), bytes: a.bytes() }
            })
            .collect();
        if drop_last {
            list.pop();
        }
        gemma::save_safetensors(&dir.path().join("adapter_model.safetensors"), &list).unwrap();
    };
    write(Some(("layers.1.mlp", "layers.7.mlp")), false);
    let e = read_weights(dir.path(), &cfg(), &lora).unwrap_err().to_string();
    assert!(e.contains("base_model.model.model.layers.7.mlp.down_proj") && e.contains("not an adapter of this model"), "{e}");
    write(None, true);
    let e = read_weights(dir.path(), &cfg(), &lora).unwrap_err().to_string();
    assert!(e.contains("no tensor base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"), "{e}");
    // Settings this project does not compute.
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    config["use_rslora"] = true.into();
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    assert!(read_config(dir.path(), &cfg()).unwrap_err().to_string().contains("use_rslora is set"));
    config["use_rslora"] = false.into();
    config["target_modules"] = "q_proj|v_proj".into();
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    assert!(read_config(dir.path(), &cfg()).unwrap_err().to_string().contains("must be a list"));
}
