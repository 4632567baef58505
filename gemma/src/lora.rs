//! LoRA adapters as PEFT defines them: for a target weight W [out, in],
//! y = W x + (alpha / r) B (A x) with A [r, in] and B [out, r]; A starts uniform in
//! +-1/sqrt(in) (PEFT's kaiming-uniform with a = sqrt(5)) and B at zero, so training starts
//! from the base model exactly. Adapter tensors are named as PEFT names them under the model:
//! `model.layers.{i}.self_attn.q_proj.lora_A.weight` (PEFT's file adds `base_model.model.`).
use crate::config::Config;
use crate::Error;

/// The projections an adapter can target.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// What `--lora-targets` defaults to (PEFT's default for Gemma).
pub const DEFAULT_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// LoRA settings: rank, alpha and the targeted projections.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    /// r.
    pub rank: i64,
    /// alpha; the adapter's output is scaled by alpha / r.
    pub alpha: f64,
    /// Target projections (names of [`TARGETS`]), in [`TARGETS`] order, each once.
    pub targets: Vec<String>,
}

/// `q_proj` -> `self_attn.q_proj`, `up_proj` -> `mlp.up_proj`.
pub fn module_of(target: &str) -> String {
    match target {
        "gate_proj" | "up_proj" | "down_proj" => format!("mlp.{target}"),
        _ => format!("self_attn.{target}"),
    }
}

fn bad(message: String) -> Error {
    Error::Config { path: "LoRA".into(), message }
}

impl Lora {
    /// Checked settings for `cfg`: every target one of [`TARGETS`], rank in 1..=min(in, out)
    /// of every target, alpha finite and > 0. Targets are kept in [`TARGETS`] order.
    pub fn new(cfg: &Config, rank: i64, alpha: f64, targets: &[String]) -> Result<Lora, Error> {
        if targets.is_empty() {
            return Err(bad("--lora-targets is empty".into()));
        }
        if let Some(t) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(bad(format!("--lora-targets: {t:?} is not a projection (one of {})", TARGETS.join(", "))));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(bad(format!("--lora-alpha {alpha}: must be a finite number > 0")));
        }
        let ordered: Vec<String> = TARGETS.iter().filter(|t| targets.iter().any(|x| x == *t)).map(|t| t.to_string()).collect();
        let lora = Lora { rank, alpha, targets: ordered };
        for t in &lora.targets {
            let (out, inp) = lora.target_dims(cfg, t);
            if rank < 1 || rank > out.min(inp) {
                return Err(bad(format!("--lora-rank {rank}: must be in 1..={} for {t} ([{out}, {inp}])", out.min(inp))));
            }
        }
        Ok(lora)
    }

    /// alpha / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// [out, in] of a target's weight.
    pub fn target_dims(&self, cfg: &Config, target: &str) -> (i64, i64) {
        let (d, f, h) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (nh, kh) = (cfg.num_attention_heads * h, cfg.num_key_value_heads * h);
        match target {
            "q_proj" => (nh, d),
            "k_proj" | "v_proj" => (kh, d),
            "o_proj" => (d, nh),
            "gate_proj" | "up_proj" => (f, d),
            _ => (d, f),
        }
    }

    /// Whether `module` (`self_attn.q_proj`) has an adapter.
    pub fn targets_module(&self, module: &str) -> bool {
        self.targets.iter().any(|t| module_of(t) == module)
    }

    /// Adapter tensors and shapes, layer by layer, A then B of each target.
    pub fn shapes(&self, cfg: &Config) -> Vec<(String, Vec<i64>)> {
        let mut v = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            for t in &self.targets {
                let (out, inp) = self.target_dims(cfg, t);
                let m = module_of(t);
                v.push((format!("model.layers.{i}.{m}.lora_A.weight"), vec![self.rank, inp]));
                v.push((format!("model.layers.{i}.{m}.lora_B.weight"), vec![out, self.rank]));
            }
        }
        v
    }

    /// Fresh adapters as PEFT initialises them: A uniform in +-1/sqrt(in) (from `seed` and the
    /// tensor's name), B zero.
    pub fn init(&self, cfg: &Config, seed: u64) -> Vec<(String, Vec<i64>, Vec<f32>)> {
        self.shapes(cfg)
            .into_iter()
            .map(|(name, dims)| {
                let n = (dims[0] * dims[1]) as usize;
                let values = if name.ends_with(".lora_A.weight") {
                    let bound = 1.0 / (dims[1] as f64).sqrt();
                    let mut rng = crate::rng::SplitMix64(seed ^ 0x4c6f_5241 ^ crate::train::fnv1a(&name));
                    (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect()
                } else {
                    vec![0.0; n]
                };
                (name, dims, values)
            })
            .collect()
    }
}

/// For an adapter tensor name, its target weight's name (`...q_proj.lora_B.weight` ->
/// `...q_proj.weight`) and whether it is B.
pub fn adapter_base(name: &str) -> Option<(String, bool)> {
    if let Some(m) = name.strip_suffix(".lora_A.weight") {
        return Some((format!("{m}.weight"), false));
    }
    name.strip_suffix(".lora_B.weight").map(|m| (format!("{m}.weight"), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_named_as_peft_names_them() {
        let cfg = Config::preset("tiny").unwrap();
        let targets = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let l = Lora::new(&cfg, 4, 8.0, &targets(&["v_proj", "q_proj", "down_proj"])).unwrap();
        assert_eq!(l.targets, targets(&["q_proj", "v_proj", "down_proj"]));
        assert_eq!(l.scale(), 2.0);
        let shapes = l.shapes(&cfg);
        assert_eq!(shapes[0], ("model.layers.0.self_attn.q_proj.lora_A.weight".to_string(), vec![4, 64]));
        assert_eq!(shapes[1], ("model.layers.0.self_attn.q_proj.lora_B.weight".to_string(), vec![64, 4]));
        assert_eq!(shapes[4].0, "model.layers.0.mlp.down_proj.lora_A.weight");
        assert_eq!(shapes[4].1, vec![4, 128]);
        assert_eq!(shapes.len(), 2 * 3 * 2);
        assert!(Lora::new(&cfg, 4, 8.0, &targets(&["embed_tokens"])).unwrap_err().to_string().contains("not a projection"));
        assert!(Lora::new(&cfg, 0, 8.0, &targets(&["q_proj"])).unwrap_err().to_string().contains("--lora-rank 0"));
        // tiny's k_proj is [16, 64]: rank 17 is too large.
        assert!(Lora::new(&cfg, 17, 8.0, &targets(&["k_proj"])).unwrap_err().to_string().contains("1..=16"));
        assert!(Lora::new(&cfg, 4, 0.0, &targets(&["q_proj"])).unwrap_err().to_string().contains("--lora-alpha 0"));
        let init = l.init(&cfg, 7);
        let a = &init[0].2;
        assert!(a.iter().all(|x| x.abs() <= 1.0 / 8.0) && a.iter().any(|&x| x != 0.0));
        assert!(init[1].2.iter().all(|&x| x == 0.0));
        assert_eq!(adapter_base("model.layers.1.mlp.up_proj.lora_B.weight"), Some(("model.layers.1.mlp.up_proj.weight".into(), true)));
    }
}
