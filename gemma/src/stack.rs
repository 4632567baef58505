//! Layer weights stacked `[groups, ...]`, as a train state holds them when the layers run as
//! a loop (`--scan-layers`): the program then reads each layer's weights by slicing, and
//! the optimizer updates one tensor per weight kind instead of one per layer.
//!
//! Layers repeat with the period of their kinds (`layer_period`: 1 for Gemma 1, 2 for
//! Gemma 2, 6 for Gemma 3). Weight `name` of position `j` in the period is stacked over the
//! `groups` whole periods as `model.stacked.<j>.<name>`: entry `g` is
//! `model.layers.<g * period + j>.<name>`. The layers after the last whole period keep their
//! checkpoint names, as do the embedding and the final norm. Checkpoints always use the
//! per-layer (HF) names; the stacked ones exist only on the devices and in the programs.
use crate::config::Config;

/// The prefix of stacked weights.
pub const STACKED: &str = "model.stacked";

/// How a config's layers stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stacking {
    /// Layers per step of the loop (the period of the layer kinds).
    pub period: usize,
    /// Whole periods: the leading dimension of every stacked weight.
    pub groups: usize,
    /// All layers.
    pub layers: usize,
}

impl Stacking {
    /// The stacking of `cfg`'s layers.
    pub fn of(cfg: &Config) -> Stacking {
        let period = crate::model::layer_period(cfg);
        Stacking { period, groups: cfg.num_hidden_layers / period, layers: cfg.num_hidden_layers }
    }

    /// Whether any layer is stacked (at least one whole period).
    pub fn any(&self) -> bool {
        self.groups > 0
    }

    /// `model.stacked.<j>.<name>` -> (j, name), for `j` in the period.
    pub fn parse<'a>(&self, stacked: &'a str) -> Option<(usize, &'a str)> {
        let (j, name) = stacked.strip_prefix(STACKED)?.strip_prefix('.')?.split_once('.')?;
        let j: usize = j.parse().ok()?;
        (j < self.period && self.any()).then_some((j, name))
    }

    /// The checkpoint name of entry `g` of the stacked weight `stacked`
    /// (`model.layers.<g * period + j>.<name>`), None for other names or `g` out of range.
    pub fn layer_name(&self, stacked: &str, g: usize) -> Option<String> {
        let (j, name) = self.parse(stacked)?;
        (g < self.groups).then(|| format!("model.layers.{}.{name}", g * self.period + j))
    }

    /// The stacked name holding checkpoint tensor `name` and its index there, None for a
    /// tensor that is not stacked (outside the layers, or in a layer after the last period).
    pub fn stacked_name(&self, name: &str) -> Option<(String, usize)> {
        let (layer, rest) = name.strip_prefix("model.layers.")?.split_once('.')?;
        let i: usize = layer.parse().ok()?;
        (i < self.groups * self.period && layer == i.to_string())
            .then(|| (format!("{STACKED}.{}.{rest}", i % self.period), i / self.period))
    }

    /// The state's tensors with the layers stacked, in checkpoint order of their first layer:
    /// names and shapes (`[groups, ...]` for stacked ones).
    pub fn shapes(&self, cfg: &Config) -> Vec<(String, Vec<i64>)> {
        self.stack_shapes(crate::model::param_shapes(cfg))
    }

    /// Per-layer tensors (checkpoint names and shapes, in layer order, e.g. a LoRA adapter's
    /// `lora::Lora::shapes`) with the layers stacked as `shapes` stacks the weights.
    pub fn stack_shapes(&self, per_layer: Vec<(String, Vec<i64>)>) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        for (name, dims) in per_layer {
            match self.stacked_name(&name) {
                Some((stacked, 0)) => {
                    let mut d = vec![self.groups as i64];
                    d.extend(dims);
                    out.push((stacked, d));
                }
                Some(_) => {}
                None => out.push((name, dims)),
            }
        }
        out
    }

    /// The checkpoint tensors a state tensor holds, in stacking order: one for an unstacked
    /// name, `groups` for a stacked one.
    pub fn members(&self, name: &str) -> Vec<String> {
        match self.parse(name) {
            Some(_) => (0..self.groups).filter_map(|g| self.layer_name(name, g)).collect(),
            None => vec![name.to_string()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LayerKind;

    #[test]
    fn names_map_both_ways() {
        let mut cfg = Config::preset("gemma2-2b").unwrap();
        cfg.num_hidden_layers = 5;
        cfg.layer_types.truncate(5);
        let s = Stacking::of(&cfg);
        assert_eq!(s, Stacking { period: 2, groups: 2, layers: 5 });
        assert_eq!(s.stacked_name("model.layers.3.mlp.up_proj.weight"), Some(("model.stacked.1.mlp.up_proj.weight".into(), 1)));
        assert_eq!(s.stacked_name("model.layers.4.mlp.up_proj.weight"), None, "after the last whole period");
        assert_eq!(s.stacked_name("model.norm.weight"), None);
        assert_eq!(s.layer_name("model.stacked.1.mlp.up_proj.weight", 1).as_deref(), Some("model.layers.3.mlp.up_proj.weight"));
        assert_eq!(s.layer_name("model.stacked.2.mlp.up_proj.weight", 0), None, "j beyond the period");
        let shapes = s.shapes(&cfg);
        // The embedding, 2 stacked layer kinds' weights, layer 4's, the final norm.
        let per_layer = crate::model::param_shapes(&cfg).iter().filter(|(n, _)| n.starts_with("model.layers.0.")).count();
        assert_eq!(shapes.len(), 2 + 3 * per_layer);
        let up = shapes.iter().find(|(n, _)| n == "model.stacked.0.mlp.up_proj.weight").unwrap();
        assert_eq!(up.1, vec![2, 9216, 2304]);
        assert_eq!(
            s.members("model.stacked.0.mlp.up_proj.weight"),
            ["model.layers.0.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"]
        );
        assert_eq!(cfg.layer_types[4], LayerKind::Sliding);
        // LoRA adapters stack like their weights; layer 4's keep their names.
        let lora = crate::lora::Lora::new(&cfg, 4, 8.0, &["q_proj".to_string()]).unwrap();
        let stacked = s.stack_shapes(lora.shapes(&cfg));
        let names: Vec<&str> = stacked.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "model.stacked.0.self_attn.q_proj.lora_A.weight",
                "model.stacked.0.self_attn.q_proj.lora_B.weight",
                "model.stacked.1.self_attn.q_proj.lora_A.weight",
                "model.stacked.1.self_attn.q_proj.lora_B.weight",
                "model.layers.4.self_attn.q_proj.lora_A.weight",
                "model.layers.4.self_attn.q_proj.lora_B.weight",
            ]
        );
        assert_eq!(stacked[0].1, vec![2, 4, 2304]);
        assert_eq!(stacked[4].1, vec![4, 2304]);
    }
}
