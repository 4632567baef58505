//! LoRA adapters in PEFT's format: `adapter_model.safetensors` (tensors named
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, ...) and
//! `adapter_config.json` (`peft_type` "LORA", `r`, `lora_alpha`, `target_modules`, ...), as
//! `peft.PeftModel.from_pretrained` loads them and `save_pretrained` writes them.
use crate::{Error, Result};
use gemma::lora::Lora;
use gemma::{Config, TensorMeta};
use graph::DType;
use runtime::HostArray;
use std::path::Path;

/// The adapter weights file.
pub const WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config file.
pub const CONFIG: &str = "adapter_config.json";
/// What PEFT puts before a model tensor's name.
pub const PREFIX: &str = "base_model.model.";

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Data { path: path.display().to_string(), message: message.into() }
}

/// `adapter_config.json` for `lora` (`base`: the base model's path, when known).
pub fn config_json(lora: &Lora, base: Option<&str>) -> String {
    let json = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": lora.targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "base_model_name_or_path": base,
    });
    serde_json::to_string_pretty(&json).expect("internal: a JSON value serializes") + "\n"
}

/// Reads the LoRA settings of a PEFT adapter directory, checked against `cfg`. Only what this
/// project computes is accepted: plain LoRA (no rsLoRA, DoRA, bias or fan-in-fan-out) on
/// Gemma's projections, `target_modules` as a list.
pub fn read_config(dir: &Path, cfg: &Config) -> Result<Lora> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Read { path: path.display().to_string(), message: e.to_string() })?;
    let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&path, format!("not JSON: {e}")))?;
    if j.get("peft_type").and_then(|v| v.as_str()) != Some("LORA") {
        return Err(bad(&path, "peft_type is not \"LORA\""));
    }
    for (key, ok) in [("use_rslora", false), ("use_dora", false), ("fan_in_fan_out", false)] {
        if j.get(key).and_then(|v| v.as_bool()).unwrap_or(ok) != ok {
            return Err(bad(&path, format!("{key} is set; only plain LoRA is supported")));
        }
    }
    if j.get("bias").and_then(|v| v.as_str()).unwrap_or("none") != "none" {
        return Err(bad(&path, "bias is not \"none\"; adapter biases are not supported"));
    }
    let rank = j.get("r").and_then(|v| v.as_i64()).ok_or_else(|| bad(&path, "no integer `r`"))?;
    let alpha = j.get("lora_alpha").and_then(|v| v.as_f64()).ok_or_else(|| bad(&path, "no number `lora_alpha`"))?;
    let targets: Vec<String> = j
        .get("target_modules")
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().map(|t| t.as_str().map(str::to_string)).collect())
        .ok_or_else(|| bad(&path, "`target_modules` must be a list of projection names"))?;
    Lora::new(cfg, rank, alpha, &targets).map_err(|e| bad(&path, e.to_string()))
}

/// The adapter tensors of a PEFT directory for `lora` on `cfg`, as f32, by model name
/// (`model.layers.0.self_attn.q_proj.lora_A.weight`), in `lora.shapes` order. A missing
/// tensor, one of another shape, or an extra tensor is an error naming it.
pub fn read_weights(dir: &Path, cfg: &Config, lora: &Lora) -> Result<Vec<(String, HostArray)>> {
    let path = dir.join(WEIGHTS);
    let file = crate::checkpoint::map_file(&path).map_err(|e| Error::Read { path: path.display().to_string(), message: e.to_string() })?;
    let st = safetensors::SafeTensors::deserialize(file.bytes()).map_err(|e| bad(&path, format!("bad safetensors file: {e}")))?;
    let shapes = lora.shapes(cfg);
    if let Some(extra) = st.names().into_iter().find(|n| !n.strip_prefix(PREFIX).is_some_and(|m| shapes.iter().any(|(s, _)| s == m))) {
        return Err(bad(
            &path,
            format!("tensor {extra} is not an adapter of this model (rank {}, targets {})", lora.rank, lora.targets.join(",")),
        ));
    }
    shapes
        .into_iter()
        .map(|(name, dims)| {
            let full = format!("{PREFIX}{name}");
            let t = st.tensor(&full).map_err(|_| bad(&path, format!("no tensor {full}")))?;
            let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            if shape != dims {
                return Err(bad(&path, format!("{full} is {shape:?}, this model needs {dims:?}")));
            }
            let dtype = match t.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::BF16 => DType::Bf16,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::F64 => DType::F64,
                other => return Err(bad(&path, format!("{full} has dtype {other:?}"))),
            };
            let a = runtime::HostView { dtype, dims: &shape, bytes: t.data() };
            let a = a.convert_float(DType::F32)?;
            if let Some(v) = a.to_f64_vec().into_iter().find(|v| !v.is_finite()) {
                return Err(bad(&path, format!("{full} holds {v}")));
            }
            Ok((name, a))
        })
        .collect()
}

/// Writes `dir/adapter_model.safetensors` (f32, PEFT names) from `tensors` (model names and
/// their bytes, fetched one at a time by `bytes_of`) and `dir/adapter_config.json`, each
/// atomically.
pub fn write(
    dir: &Path,
    lora: &Lora,
    base: Option<&str>,
    shapes: &[(String, Vec<i64>)],
    bytes_of: impl FnMut(usize) -> std::result::Result<Vec<u8>, gemma::Error>,
) -> Result<()> {
    let metas: Vec<TensorMeta> =
        shapes.iter().map(|(n, d)| TensorMeta { name: format!("{PREFIX}{n}"), dtype: DType::F32, shape: d.clone() }).collect();
    gemma::save_safetensors_streaming(&dir.join(WEIGHTS), &metas, bytes_of)?;
    gemma::write_atomic(&dir.join(CONFIG), config_json(lora, base).as_bytes())?;
    Ok(())
}
