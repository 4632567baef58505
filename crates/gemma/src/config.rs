//! Gemma configuration: from an HF `config.json` (old and new key spellings) or a preset.
use crate::Error;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: i64,
    /// d_model
    pub hidden_size: i64,
    /// MLP width
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
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
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

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

    pub fn from_json(text: &str) -> Result<Config, Error> {
        let bad = |message: String| Error::Config { path: "config.json".into(), message };
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = &hf.model_type {
            if t != "gemma" {
                return Err(bad(format!("model_type is {t:?}; only Gemma 1 (\"gemma\") is supported")));
            }
        }
        let act = hf.hidden_activation.as_deref().or(hf.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh");
        if !act.starts_with("gelu") {
            return Err(bad(format!("activation {act:?} is not GELU; Gemma 1 uses tanh-approximate GELU")));
        }
        let rope = hf.rope_parameters.as_ref();
        if let Some(kind) = rope.and_then(|r| r.rope_type.as_deref()) {
            if kind != "default" {
                return Err(bad(format!("rope_type {kind:?} is not supported (only \"default\")")));
            }
        }
        let cfg = Config {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope.and_then(|r| r.rope_theta).or(hf.rope_theta).unwrap_or(10000.0),
        };
        cfg.validate().map_err(bad)?;
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
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!("head_dim must be even for RoPE, got {}", self.head_dim));
        }
        Ok(())
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
        };
        match name {
            "tiny" => Ok(c(256, 64, 128, 2, 4, 1, 16)),
            "2b" => Ok(c(256000, 2048, 16384, 18, 8, 1, 256)),
            "7b" => Ok(c(256000, 3072, 24576, 28, 16, 16, 256)),
            other => Err(Error::Config { path: "preset".into(), message: format!("unknown preset {other:?} (tiny, 2b, 7b)") }),
        }
    }
}
