//! Gemma configuration: from an HF `config.json` (old and new key spellings) or a preset.
use crate::Error;
use serde::Deserialize;
use std::path::Path;

/// Which generation of Gemma a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Gemma 1 (`model_type` "gemma").
    Gemma,
    /// Gemma 2 (`gemma2`): pre- and post-norms, soft-capping, local and global layers.
    Gemma2,
    /// Gemma 3 text (`gemma3_text`, or the language model of `gemma3`): Gemma 2's norms,
    /// QK-norm, local layers with their own RoPE base, no soft-capping.
    Gemma3,
}

/// The attention of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Every earlier position (`full_attention`).
    Full,
    /// Only the last `sliding_window` positions, the query's own included (`sliding_attention`).
    Sliding,
}

/// The sizes and constants of a Gemma model, named as in HF `config.json`. `from_json`
/// refuses values that cannot describe one (see the checks there).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size V: rows of the (tied) embedding.
    pub vocab_size: i64,
    /// d_model
    pub hidden_size: i64,
    /// MLP width
    pub intermediate_size: i64,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads N per layer.
    pub num_attention_heads: i64,
    /// Key/value heads K per layer; N is a multiple of K (K = 1 is multi-query attention, as in 2B).
    pub num_key_value_heads: i64,
    /// Width H of one attention head (even, for RoPE); need not be D / N.
    pub head_dim: i64,
    /// The epsilon added to the mean square in each RMSNorm.
    pub rms_norm_eps: f64,
    /// The RoPE base frequency theta (of global layers).
    pub rope_theta: f64,
    /// Gemma 1, 2 or 3.
    pub family: Family,
    /// Each layer's attention (all `Full` for Gemma 1).
    pub layer_types: Vec<LayerKind>,
    /// Keys a sliding layer's query sees, itself included (0 when no layer slides).
    pub sliding_window: i64,
    /// Scores are scaled by `query_pre_attn_scalar^-0.5` (head_dim for Gemma 1).
    pub query_pre_attn_scalar: f64,
    /// Gemma 2: attention scores become cap * tanh(s / cap) before the mask.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: logits become cap * tanh(l / cap).
    pub final_logit_softcapping: Option<f64>,
    /// The RoPE base of sliding layers (Gemma 3's `rope_local_base_freq`; `rope_theta` otherwise).
    pub rope_local_theta: f64,
    /// Linear RoPE scaling of global layers: positions divided by this (1: none).
    pub rope_scaling_factor: f64,
}

/// The fields of an HF Gemma config.json that matter here; the rest is ignored.
#[derive(Deserialize)]
struct HfConfig {
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: usize,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    model_type: Option<String>,
    layer_types: Option<Vec<String>>,
    sliding_window: Option<i64>,
    sliding_window_pattern: Option<i64>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    rope_local_base_freq: Option<f64>,
    rope_scaling: Option<RopeParameters>,
}

#[derive(Deserialize, Clone)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    factor: Option<f64>,
}

/// The preset names [`Config::preset`] knows.
pub const PRESETS: [&str; 11] =
    ["tiny", "2b", "7b", "gemma2-2b", "gemma2-9b", "gemma2-27b", "gemma3-270m", "gemma3-1b", "gemma3-4b", "gemma3-12b", "gemma3-27b"];

/// The `model_type`s this project runs.
pub const MODEL_TYPES: [&str; 4] = ["gemma", "gemma2", "gemma3_text", "gemma3"];

impl Config {
    /// Reads an HF `config.json`. Older files say `"hidden_act": "gelu"` and `rope_theta`
    /// at top level; newer ones `hidden_activation` and `rope_parameters`. Like transformers,
    /// Gemma 1 uses tanh-approximate GELU for any GELU spelling.
    pub fn from_json_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Config::from_json(&text).map_err(|e| match e {
            Error::Config { message, .. } => Error::Config { path: path.display().to_string(), message },
            other => other,
        })
    }

    /// Parses the text of an HF `config.json` and validates it: sizes positive and within
    /// bounds, N a multiple of K, H even, a GELU activation and default RoPE. Errors name
    /// `config.json` as the path.
    pub fn from_json(text: &str) -> Result<Config, Error> {
        Ok(Config::from_json_noting(text)?.0)
    }

    /// [`Config::from_json`], also saying what was left out of the file, if anything (a
    /// multimodal Gemma 3's vision tower: only its `text_config` is read).
    pub fn from_json_noting(text: &str) -> Result<(Config, Option<String>), Error> {
        let bad = |message: String| Error::Config { path: "config.json".into(), message };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        // Gemma3ForConditionalGeneration: the language model is `text_config`.
        if value.get("model_type").and_then(|t| t.as_str()) == Some("gemma3") {
            let Some(text_config) = value.get("text_config") else {
                return Err(bad("model_type \"gemma3\" without a text_config: no language model to load".into()));
            };
            let mut tc = text_config.clone();
            if tc.get("model_type").is_none() {
                tc["model_type"] = "gemma3_text".into();
            }
            // Multimodal configs often leave the text model's defaults out: transformers' are used.
            let cfg = Config::parse(&tc).map_err(|e| bad(format!("text_config: {e}")))?;
            let note = value
                .get("vision_config")
                .map(|_| "a Gemma 3 multimodal checkpoint: its language model is loaded, the vision tower is ignored".to_string());
            return Ok((cfg, note));
        }
        Ok((Config::parse(&value).map_err(bad)?, None))
    }

    fn parse(value: &serde_json::Value) -> Result<Config, String> {
        let hf: HfConfig = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let family = match hf.model_type.as_deref().unwrap_or("gemma") {
            "gemma" => Family::Gemma,
            "gemma2" => Family::Gemma2,
            "gemma3_text" => Family::Gemma3,
            other => return Err(format!("model_type is {other:?}; supported: {}", MODEL_TYPES.join(", "))),
        };
        Config::parse_family(&hf, family, value)
    }

    fn parse_family(hf: &HfConfig, family: Family, value: &serde_json::Value) -> Result<Config, String> {
        let act = hf.hidden_activation.as_deref().or(hf.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh");
        // The GELU spellings transformers knows; Gemma 1 runs every one of them as tanh GELU.
        const GELUS: [&str; 6] = ["gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_python", "gelu_accurate"];
        if !GELUS.contains(&act) {
            return Err(format!(
                "activation {act:?} is not a GELU transformers knows ({}); Gemma uses tanh-approximate GELU",
                GELUS.join(", ")
            ));
        }
        // RoPE: transformers 5 writes `rope_parameters`, per layer type for Gemma 3
        // ({"full_attention": {...}, "sliding_attention": {...}}); released checkpoints
        // `rope_theta`, `rope_local_base_freq` and `rope_scaling`.
        let per_type = |kind: &str| -> Result<Option<RopeParameters>, String> {
            match value.get("rope_parameters").and_then(|r| r.get(kind)) {
                Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| format!("rope_parameters.{kind}: {e}")),
                None => Ok(None),
            }
        };
        let global = per_type("full_attention")?.or_else(|| hf.rope_parameters.clone()).or_else(|| hf.rope_scaling.clone());
        let local = per_type("sliding_attention")?;
        for r in [&global, &local].into_iter().flatten() {
            match r.rope_type.as_deref().unwrap_or("default") {
                "default" => {}
                "linear" if family == Family::Gemma3 => {}
                kind => {
                    return Err(format!("rope_type {kind:?} is not supported for {family:?} (default; linear on Gemma 3's global layers)"))
                }
            }
        }
        if local.as_ref().is_some_and(|l| l.rope_type.as_deref().unwrap_or("default") != "default") {
            return Err("RoPE scaling on sliding layers is not supported".into());
        }
        let scaling = match global.as_ref().filter(|g| g.rope_type.as_deref() == Some("linear")) {
            Some(g) => g.factor.ok_or("linear RoPE scaling without a factor")?,
            None => 1.0,
        };
        let rope_theta = per_type("full_attention")?
            .and_then(|g| g.rope_theta)
            .or(hf.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .or(hf.rope_theta)
            .unwrap_or(if family == Family::Gemma3 { 1_000_000.0 } else { 10000.0 });
        let rope_local_theta = local.and_then(|l| l.rope_theta).or(hf.rope_local_base_freq).unwrap_or(if family == Family::Gemma3 {
            10000.0
        } else {
            rope_theta
        });
        let layers = hf.num_hidden_layers;
        let layer_types = match (&hf.layer_types, family) {
            (Some(types), _) => {
                if types.len() != layers {
                    return Err(format!("layer_types has {} entries for num_hidden_layers {layers}", types.len()));
                }
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| match t.as_str() {
                        "full_attention" => Ok(LayerKind::Full),
                        "sliding_attention" => Ok(LayerKind::Sliding),
                        other => Err(format!("layer_types[{i}] is {other:?}: expected \"full_attention\" or \"sliding_attention\"")),
                    })
                    .collect::<Result<Vec<_>, String>>()?
            }
            (None, Family::Gemma) => vec![LayerKind::Full; layers],
            // Gemma 2 alternates, layer 0 sliding.
            (None, Family::Gemma2) => (0..layers).map(|i| if i % 2 == 0 { LayerKind::Sliding } else { LayerKind::Full }).collect(),
            // Gemma 3: every `sliding_window_pattern`-th layer is global (5 local, 1 global).
            (None, Family::Gemma3) => {
                let p = hf.sliding_window_pattern.unwrap_or(6);
                if p < 1 {
                    return Err(format!("sliding_window_pattern must be positive, got {p}"));
                }
                (0..layers).map(|i| if (i as i64 + 1) % p == 0 { LayerKind::Full } else { LayerKind::Sliding }).collect()
            }
        };
        if family == Family::Gemma && layer_types.contains(&LayerKind::Sliding) {
            return Err("Gemma 1 has no sliding-window layers".into());
        }
        let sliding_window = if layer_types.contains(&LayerKind::Sliding) {
            let w = hf.sliding_window.unwrap_or(if family == Family::Gemma2 { 4096 } else { 512 });
            if w <= 0 {
                return Err(format!("sliding_window must be positive, got {w}"));
            }
            w
        } else {
            0
        };
        let (attn_cap, final_cap) = match family {
            Family::Gemma2 => (Some(hf.attn_logit_softcapping.unwrap_or(50.0)), Some(hf.final_logit_softcapping.unwrap_or(30.0))),
            // transformers' Gemma 3 never passes the attention cap to its attention function.
            Family::Gemma3 => (None, hf.final_logit_softcapping),
            Family::Gemma => (None, None),
        };
        let attn_cap = if value.get("attn_logit_softcapping").is_some_and(|v| v.is_null()) { None } else { attn_cap };
        let final_cap = if value.get("final_logit_softcapping").is_some_and(|v| v.is_null()) { None } else { final_cap };
        for (name, cap) in [("attn_logit_softcapping", attn_cap), ("final_logit_softcapping", final_cap)] {
            if let Some(c) = cap.filter(|c| !(c.is_finite() && *c > 0.0)) {
                return Err(format!("{name} must be a positive number, got {c}"));
            }
        }
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
        let cfg = Config {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            family,
            layer_types,
            sliding_window,
            query_pre_attn_scalar: hf.query_pre_attn_scalar.unwrap_or(if family == Family::Gemma2 { 256.0 } else { head_dim as f64 }),
            attn_logit_softcapping: attn_cap,
            final_logit_softcapping: final_cap,
            rope_local_theta,
            rope_scaling_factor: scaling,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v < 1) {
            return Err(format!("{name} must be positive, got {v}"));
        }
        // Upper bounds far above any Gemma (7B: vocab 256000, width 3072, MLP 24576, 28
        // layers), so that a typo cannot make the process try to allocate the impossible.
        let bounds = [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers as i64, 1024),
            ("num_attention_heads", self.num_attention_heads, 1024),
            ("head_dim", self.head_dim, 1 << 13),
        ];
        if let Some((name, v, max)) = bounds.iter().find(|(_, v, max)| v > max) {
            return Err(format!("{name} is {v}, above the supported maximum of {max}"));
        }
        if self.num_hidden_layers == 0 {
            return Err("num_hidden_layers must be positive, got 0".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta must be a positive number, got {}", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(format!("rms_norm_eps must be a non-negative number, got {}", self.rms_norm_eps));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!("head_dim must be even for RoPE, got {}", self.head_dim));
        }
        if self.layer_types.len() != self.num_hidden_layers {
            return Err(format!("{} layer types for {} layers", self.layer_types.len(), self.num_hidden_layers));
        }
        for (name, v) in [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("rope_local_base_freq", self.rope_local_theta),
            ("rope factor", self.rope_scaling_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, got {v}"));
            }
        }
        Ok(())
    }

    /// An HF `config.json` for this config, in transformers 5's spelling (transformers'
    /// GemmaForCausalLM, Gemma2ForCausalLM or Gemma3ForCausalLM loads it; tied embeddings,
    /// tanh GELU, float32 weights).
    pub fn to_hf_json(&self) -> String {
        let (arch, model_type) = match self.family {
            Family::Gemma => ("GemmaForCausalLM", "gemma"),
            Family::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
            Family::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 8192,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
        });
        if self.family != Family::Gemma {
            let kinds: Vec<&str> =
                self.layer_types.iter().map(|k| if *k == LayerKind::Full { "full_attention" } else { "sliding_attention" }).collect();
            v["layer_types"] = kinds.into();
            v["sliding_window"] = self.sliding_window.into();
            v["query_pre_attn_scalar"] = self.query_pre_attn_scalar.into();
            v["attn_logit_softcapping"] = self.attn_logit_softcapping.into();
            v["final_logit_softcapping"] = self.final_logit_softcapping.into();
            let global = if self.rope_scaling_factor != 1.0 {
                serde_json::json!({"rope_type": "linear", "factor": self.rope_scaling_factor, "rope_theta": self.rope_theta})
            } else {
                serde_json::json!({"rope_type": "default", "rope_theta": self.rope_theta})
            };
            v["rope_parameters"] = match self.family {
                Family::Gemma3 => serde_json::json!({
                    "full_attention": global,
                    "sliding_attention": {"rope_type": "default", "rope_theta": self.rope_local_theta},
                }),
                _ => global,
            };
            v.as_object_mut().expect("internal: an object").remove("rope_theta");
            v.as_object_mut().expect("internal: an object").remove("hidden_act");
        }
        serde_json::to_string_pretty(&v).expect("internal: a json! value serializes") + "\n"
    }

    /// `tiny` (for tests and the CPU demo), `2b` and `7b` (Gemma 1 model card).
    pub fn preset(name: &str) -> Result<Config, Error> {
        let c = |v, d, f, l, n, k, h| Config {
            vocab_size: v,
            hidden_size: d,
            intermediate_size: f,
            num_hidden_layers: l,
            num_attention_heads: n,
            num_key_value_heads: k,
            head_dim: h,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            family: Family::Gemma,
            layer_types: vec![LayerKind::Full; l],
            sliding_window: 0,
            query_pre_attn_scalar: h as f64,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            rope_local_theta: 10000.0,
            rope_scaling_factor: 1.0,
        };
        // Gemma 2: layers alternate local (layer 0) and global; soft-capping 50 and 30.
        let gemma2 = |v, d, f, l, n, k, h, scalar: f64| Config {
            family: Family::Gemma2,
            layer_types: (0..l).map(|i| if i % 2 == 0 { LayerKind::Sliding } else { LayerKind::Full }).collect(),
            sliding_window: 4096,
            query_pre_attn_scalar: scalar,
            attn_logit_softcapping: Some(50.0),
            final_logit_softcapping: Some(30.0),
            ..c(v, d, f, l, n, k, h)
        };
        // Gemma 3: five local layers then a global one; RoPE bases 1e4 (local) and 1e6
        // (global, linearly scaled by 8 from 4B up).
        let gemma3 = |v, d, f, l, n, k, h, scalar: f64, window, factor| Config {
            family: Family::Gemma3,
            layer_types: (0..l).map(|i| if (i + 1) % 6 == 0 { LayerKind::Full } else { LayerKind::Sliding }).collect(),
            sliding_window: window,
            query_pre_attn_scalar: scalar,
            rope_theta: 1_000_000.0,
            rope_local_theta: 10000.0,
            rope_scaling_factor: factor,
            ..c(v, d, f, l, n, k, h)
        };
        match name {
            "tiny" => Ok(c(256, 64, 128, 2, 4, 1, 16)),
            "2b" => Ok(c(256000, 2048, 16384, 18, 8, 1, 256)),
            "7b" => Ok(c(256000, 3072, 24576, 28, 16, 16, 256)),
            "gemma2-2b" => Ok(gemma2(256000, 2304, 9216, 26, 8, 4, 256, 256.0)),
            "gemma2-9b" => Ok(gemma2(256000, 3584, 14336, 42, 16, 8, 256, 256.0)),
            "gemma2-27b" => Ok(gemma2(256000, 4608, 36864, 46, 32, 16, 128, 144.0)),
            "gemma3-270m" => Ok(gemma3(262144, 640, 2048, 18, 4, 1, 256, 256.0, 512, 1.0)),
            "gemma3-1b" => Ok(gemma3(262144, 1152, 6912, 26, 4, 1, 256, 256.0, 512, 1.0)),
            // The multimodal checkpoints' language models (their embedding has 64 image-token rows more).
            "gemma3-4b" => Ok(gemma3(262208, 2560, 10240, 34, 8, 4, 256, 256.0, 1024, 8.0)),
            "gemma3-12b" => Ok(gemma3(262208, 3840, 15360, 48, 16, 8, 256, 256.0, 1024, 8.0)),
            "gemma3-27b" => Ok(gemma3(262208, 5376, 21504, 62, 32, 16, 128, 168.0, 1024, 8.0)),
            other => Err(Error::Config { path: "preset".into(), message: format!("unknown preset {other:?} ({})", PRESETS.join(", ")) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As older Gemma checkpoints ship it (e.g. gemma-2b on the Hub).
    const OLD: &str = r#"{"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_act": "gelu",
        "hidden_size": 2048, "intermediate_size": 16384, "num_attention_heads": 8, "num_hidden_layers": 18,
        "num_key_value_heads": 1, "head_dim": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "vocab_size": 256000, "torch_dtype": "bfloat16", "max_position_embeddings": 8192}"#;
    // As transformers 5 writes it.
    const NEW: &str = r#"{"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh", "hidden_size": 32,
        "intermediate_size": 48, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "head_dim": 8, "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"},
        "vocab_size": 64, "dtype": "float32"}"#;

    #[test]
    fn impossible_values_are_errors() {
        let with = |k: &str, v: &str| NEW.replace(&format!("\"{k}\": "), &format!("\"{k}\": {v}, \"_old_{k}\": "));
        for (k, v, want) in [
            ("num_hidden_layers", "100000000", "num_hidden_layers is 100000000, above the supported maximum of 1024"),
            ("vocab_size", "1000000000", "vocab_size is 1000000000"),
            ("rms_norm_eps", "-1.0", "rms_norm_eps must be a non-negative number"),
            ("hidden_act", "\"gelu_banana\"", "activation \"gelu_banana\" is not a GELU"),
            ("num_hidden_layers", "0", "num_hidden_layers must be positive"),
        ] {
            let err = Config::from_json(&with(k, v)).unwrap_err().to_string();
            assert!(err.contains(want), "{k}={v}: {err}");
        }
        let bad_theta = NEW.replace("\"rope_theta\": 500.0", "\"rope_theta\": 0.0");
        assert!(Config::from_json(&bad_theta).unwrap_err().to_string().contains("rope_theta must be a positive number"));
    }

    #[test]
    fn presets_have_the_released_parameter_counts() {
        // Language-model parameters of the released checkpoints (tied embeddings once; Gemma 3
        // 4B-27B: their text model, embedding with the 64 image-token rows), as keras-hub's
        // presets and llama.cpp count them.
        for (name, want) in [
            ("gemma2-2b", 2_614_341_888),
            ("gemma2-9b", 9_241_705_984),
            ("gemma2-27b", 27_227_128_320),
            ("gemma3-270m", 268_098_176),
            ("gemma3-1b", 999_885_952),
            ("gemma3-4b", 3_880_263_168),
            ("gemma3-12b", 11_766_034_176),
            ("gemma3-27b", 27_009_346_304),
        ] {
            assert_eq!(crate::rules::param_count(&Config::preset(name).unwrap()), want, "{name}");
        }
    }

    #[test]
    fn hf_json_round_trips() {
        for name in PRESETS {
            let c = Config::preset(name).unwrap();
            assert_eq!(Config::from_json(&c.to_hf_json()).unwrap(), c);
        }
    }

    #[test]
    fn old_and_new_config_spellings() {
        assert_eq!(Config::from_json(OLD).unwrap(), Config::preset("2b").unwrap());
        let new = Config::from_json(NEW).unwrap();
        assert_eq!(new.rope_theta, 500.0);
        assert_eq!((new.num_attention_heads, new.num_key_value_heads, new.head_dim), (4, 1, 8));
        let with_activation = NEW.replace("\"hidden_act\"", "\"hidden_activation\"");
        assert!(Config::from_json(&with_activation).is_ok());
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let relu = NEW.replace("gelu_pytorch_tanh", "relu");
        assert!(Config::from_json(&relu).unwrap_err().to_string().contains("activation \"relu\" is not a GELU"));
        let llama = NEW.replace("\"model_type\": \"gemma\"", "\"model_type\": \"llama\"");
        let err = Config::from_json(&llama).unwrap_err().to_string();
        assert!(err.contains("model_type is \"llama\"; supported: gemma, gemma2, gemma3_text, gemma3"), "{err}");
        let heads = NEW.replace("\"num_key_value_heads\": 1", "\"num_key_value_heads\": 3");
        assert!(Config::from_json(&heads).unwrap_err().to_string().contains("must be a multiple of num_key_value_heads (3)"));
        assert!(Config::from_json("{").unwrap_err().to_string().starts_with("config.json: "));
        assert!(Config::preset("13b").is_err());
    }

    // Gemma 2 and 3 in transformers 5's spelling, with what can be wrong in them.
    const GEMMA2: &str = r#"{"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 64, "sliding_window": 3,
        "layer_types": ["sliding_attention", "full_attention"], "query_pre_attn_scalar": 20,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}"#;

    #[test]
    fn gemma2_and_3_configs_are_checked() {
        let c = Config::from_json(GEMMA2).unwrap();
        assert_eq!(c.family, Family::Gemma2);
        assert_eq!(c.layer_types, vec![LayerKind::Sliding, LayerKind::Full]);
        assert_eq!((c.sliding_window, c.query_pre_attn_scalar), (3, 20.0));
        let cases = [
            (
                "\"layer_types\": [\"sliding_attention\", \"full_attention\"]",
                "\"layer_types\": [\"sliding_attention\"]",
                "layer_types has 1 entries for num_hidden_layers 2",
            ),
            ("\"full_attention\"]", "\"global\"]", "layer_types[1] is \"global\""),
            ("\"sliding_window\": 3", "\"sliding_window\": 0", "sliding_window must be positive"),
            ("\"attn_logit_softcapping\": 50.0", "\"attn_logit_softcapping\": -1.0", "attn_logit_softcapping must be a positive number"),
            ("\"final_logit_softcapping\": 30.0", "\"final_logit_softcapping\": 0.0", "final_logit_softcapping must be a positive number"),
        ];
        for (from, to, want) in cases {
            let err = Config::from_json(&GEMMA2.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(want), "{to}: {err}");
        }
        // A multimodal Gemma 3: the language model of its text_config, the rest noted.
        let mm = r#"{"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "vision_config": {"hidden_size": 1152},
            "text_config": {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_hidden_layers": 6,
            "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 64, "sliding_window": 4, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}}"#;
        let (c, note) = Config::from_json_noting(mm).unwrap();
        assert_eq!(c.family, Family::Gemma3);
        assert_eq!(c.layer_types.iter().filter(|k| **k == LayerKind::Full).count(), 1, "5 local, 1 global");
        assert_eq!((c.rope_theta, c.rope_local_theta, c.rope_scaling_factor), (1_000_000.0, 10000.0, 8.0));
        assert!(note.unwrap().contains("vision tower is ignored"));
        let err = Config::from_json(r#"{"model_type": "gemma3", "vision_config": {}}"#).unwrap_err().to_string();
        assert!(err.contains("without a text_config"), "{err}");
    }
}
