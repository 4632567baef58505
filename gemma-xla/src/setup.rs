//! What `train` and `dump` share: the config and mesh flags, the specs of the train state
//! and batch over the mesh, and the train step as `jit` compiles it (one definition, so a
//! dump shows exactly the program `train` runs).
use anyhow::{bail, Result};
use gemma::rules::Layout;
use gemma::{Config, Hyper};
use graph::{Tensor, TensorType, Tree};
use jit::Jit;
use runtime::{Client, Mesh, NamedSharding, PartitionSpec};
use std::path::Path;

/// `--config`: a preset (`tiny`, `2b`, `7b`) or the path of an HF config.json.
pub(crate) fn load_config(name: &str) -> Result<Config> {
    if name.ends_with(".json") {
        Ok(Config::from_json_file(Path::new(name))?)
    } else {
        Ok(Config::preset(name)?)
    }
}

/// `--mesh`, else `data=N` with `--devices N`, else `data=2,model=2`; the mesh must have
/// `--devices` devices when both are given.
pub(crate) fn resolve_mesh(mesh: Option<&str>, devices: Option<usize>) -> Result<Mesh> {
    let mesh = match (mesh, devices) {
        (Some(m), _) => Mesh::parse(m)?,
        (None, Some(n)) => Mesh::parse(&format!("data={n}"))?,
        (None, None) => Mesh::parse("data=2,model=2")?,
    };
    if let Some(n) = devices {
        if mesh.num_devices() as usize != n {
            bail!("the mesh {mesh} has {} devices but --devices is {n}", mesh.num_devices());
        }
    }
    Ok(mesh)
}

/// Everything fixed for a run.
pub(crate) struct Setup {
    pub(crate) cfg: Config,
    pub(crate) mesh: Mesh,
    pub(crate) fsdp: bool,
    pub(crate) batch: usize,
    pub(crate) seq: usize,
}

impl Setup {
    /// The spec of a state or batch path (`state.params.<name>`, `state.opt.m.<name>`, ...).
    pub(crate) fn spec(&self, path: &str) -> Option<PartitionSpec> {
        if path == "batch.tokens" {
            return Some(gemma::rules::batch_spec(&self.mesh));
        }
        let name = ["state.params.", "state.opt.m.", "state.opt.v."].iter().find_map(|p| path.strip_prefix(p))?;
        gemma::rules::param_spec(&self.cfg, name, &self.mesh, self.fsdp).ok()
    }

    pub(crate) fn sharding(&self, path: &str, rank: usize) -> NamedSharding {
        let spec = self.spec(path).unwrap_or_else(|| PartitionSpec::replicated(rank));
        NamedSharding { mesh: self.mesh.clone(), spec }
    }

    /// The activation layout of the model on this mesh.
    pub(crate) fn layout(&self) -> Layout {
        Layout { mesh: self.mesh.clone(), fsdp: self.fsdp }
    }

    /// The argument types of the train step with their specs (unlisted paths replicated).
    pub(crate) fn train_args(&self) -> Result<Tree<(TensorType, PartitionSpec)>> {
        let types = gemma::train_args(&self.cfg, self.batch as i64, self.seq as i64);
        Ok(types.map(|path, ty| (ty.clone(), self.sharding(path, ty.rank()).spec)))
    }
}

/// The compiled train step: `state` donated, every state tensor and the batch split as the
/// rules say (the new state keeps its arguments' specs). No client: only for `Jit::lower`.
pub(crate) fn train_step_jit<'a>(
    client: Option<&'a Client>,
    setup: &'a Setup,
    hp: &'a Hyper,
    layout: &'a Layout,
) -> Jit<'a, impl Fn(&Tree<Tensor>) -> Result<Tree<Tensor>, graph::Error> + 'a> {
    Jit::with_client("train_step", client, move |args: &Tree<Tensor>| gemma::train_step(&setup.cfg, hp, Some(layout), args))
        .with_mesh(setup.mesh.clone())
        .donate("state")
        .with_rule(|path, _| setup.spec(path))
}
