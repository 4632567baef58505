//! Gemma configuration: from an HF `config.json` (old and new key spellings) or a preset.
use crate::Error;
use serde::Deserialize;
use std::path::Path;

/// The sizes and constants of a Gemma 1 model, named as in HF `config.json`. `from_json`
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
    /// The RoPE base frequency theta.
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

    /// Parses the text of an HF `config.json` and validates it: sizes positive and within
    /// bounds, N a multiple of K, H even, a GELU activation and default RoPE. Errors name
    /// `config.json` as the path.
    pub fn from_json(text: &str) -> Result<Config, Error> {
        let bad = |message: String| Error::Config { path: "config.json".into(), message };
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = &hf.model_type {
            if t != "gemma" {
                return Err(bad(format!("model_type is {t:?}; only Gemma 1 (\"gemma\") is supported")));
            }
        }
        let act = hf.hidden_activation.as_deref().or(hf.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh");
        // The GELU spellings transformers knows; Gemma 1 runs every one of them as tanh GELU.
        const GELUS: [&str; 6] = ["gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_python", "gelu_accurate"];
        if !GELUS.contains(&act) {
            return Err(bad(format!(
                "activation {act:?} is not a GELU transformers knows ({}); Gemma 1 uses tanh-approximate GELU",
                GELUS.join(", ")
            )));
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
        Ok(())
    }

    /// An HF `config.json` for this config (transformers' GemmaForCausalLM loads it; tied
    /// embeddings, tanh GELU, float32 weights).
    pub fn to_hf_json(&self) -> String {
        let v = serde_json::json!({
            "architectures": ["GemmaForCausalLM"],
            "model_type": "gemma",
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
        };
        match name {
            "tiny" => Ok(c(256, 64, 128, 2, 4, 1, 16)),
            "2b" => Ok(c(256000, 2048, 16384, 18, 8, 1, 256)),
            "7b" => Ok(c(256000, 3072, 24576, 28, 16, 16, 256)),
            other => Err(Error::Config { path: "preset".into(), message: format!("unknown preset {other:?} (tiny, 2b, 7b)") }),
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
    fn hf_json_round_trips() {
        for name in ["tiny", "2b", "7b"] {
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
        let gemma2 = NEW.replace("\"model_type\": \"gemma\"", "\"model_type\": \"gemma2\"");
        assert!(Config::from_json(&gemma2).unwrap_err().to_string().contains("only Gemma 1"));
        let heads = NEW.replace("\"num_key_value_heads\": 1", "\"num_key_value_heads\": 3");
        assert!(Config::from_json(&heads).unwrap_err().to_string().contains("must be a multiple of num_key_value_heads (3)"));
        assert!(Config::from_json("{").unwrap_err().to_string().starts_with("config.json: "));
        assert!(Config::preset("13b").is_err());
    }
}
