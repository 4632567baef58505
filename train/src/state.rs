//! The training state as typed fields: `params`, AdamW's `opt.m` and `opt.v` (each a tree by
//! checkpoint name), and `step`. It flattens to the train step's argument paths
//! (`state.params.<name>`, `state.opt.m.<name>`, `state.opt.v.<name>`, `state.step`), which
//! are also the paths `gemma::rules::state_spec` shards and checkpoints are written from.
use crate::{bail, Result};
use graph::Tree;

/// AdamW's moments, each by checkpoint name.
#[derive(Debug)]
pub struct AdamState<A> {
    /// First moments.
    pub m: Tree<A>,
    /// Second moments.
    pub v: Tree<A>,
}

/// The state a train step reads and returns (on the devices: `TrainState<DeviceArray>`).
#[derive(Debug)]
pub struct TrainState<A> {
    /// The f32 master weights by checkpoint name (`model.layers.0.mlp.up_proj.weight`, ...).
    pub params: Tree<A>,
    /// The optimizer's state.
    pub opt: AdamState<A>,
    /// Updates applied so far (an s32 scalar).
    pub step: A,
}

impl<A> TrainState<A> {
    /// The state as one tree with the train step's paths (`state.params.<name>`, ...).
    pub fn flatten(self) -> Result<Tree<A>> {
        let mut tree = self.params.prefixed("state.params")?;
        tree = tree.merge(self.opt.m.prefixed("state.opt.m")?)?;
        tree = tree.merge(self.opt.v.prefixed("state.opt.v")?)?;
        tree.insert("state.step", self.step)?;
        Ok(tree)
    }

    /// The state from a tree with the train step's paths; other paths are an error.
    pub fn unflatten(mut tree: Tree<A>) -> Result<TrainState<A>> {
        let mut state = tree.take_subtree("state");
        let params = state.take_subtree("params");
        let m = state.take_subtree("opt.m");
        let v = state.take_subtree("opt.v");
        let Some(step) = state.remove("step") else { bail!("the train state has no state.step") };
        if let Some(path) = state.paths().next().or_else(|| tree.paths().next()) {
            bail!("the train state has an unexpected entry {path}");
        }
        if params.len() != m.len() || params.len() != v.len() {
            bail!("the train state has {} params but {} and {} optimizer moments", params.len(), m.len(), v.len());
        }
        Ok(TrainState { params, opt: AdamState { m, v }, step })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_and_unflatten_keep_the_step_paths() {
        let names = ["model.norm.weight", "model.embed_tokens.weight"];
        let tree = |tag: i32| Tree::from_leaves(names.iter().enumerate().map(|(i, n)| (n.to_string(), tag * 10 + i as i32))).unwrap();
        let state = TrainState { params: tree(1), opt: AdamState { m: tree(2), v: tree(3) }, step: 7 };
        let flat = state.flatten().unwrap();
        assert_eq!(flat.get("state.params.model.norm.weight"), Some(&10));
        assert_eq!(flat.get("state.opt.m.model.embed_tokens.weight"), Some(&21));
        assert_eq!(flat.get("state.opt.v.model.norm.weight"), Some(&30));
        assert_eq!(flat.get("state.step"), Some(&7));
        assert_eq!(flat.len(), 7);
        let back = TrainState::unflatten(flat).unwrap();
        assert_eq!(back.params.get("model.embed_tokens.weight"), Some(&11));
        assert_eq!(back.opt.v.len(), 2);
        assert_eq!(back.step, 7);
        let mut extra = TrainState::unflatten(back.flatten().unwrap()).unwrap().flatten().unwrap();
        extra.insert("metrics.loss", 0).unwrap();
        assert!(TrainState::unflatten(extra).unwrap_err().to_string().contains("metrics.loss"));
    }
}
