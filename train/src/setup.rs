//! What is fixed for a training run (config, mesh, batch, sequence length) and the train step
//! as `jit` compiles it: one definition, so `train`, `dump`, `compile` and the bench run and
//! show exactly the same program.
use crate::{bail, Result};
use gemma::rules::Layout;
use gemma::{Config, Hyper};
use graph::{Tensor, TensorType, Tree};
use jit::Jit;
use runtime::{Client, Mesh, NamedSharding, PartitionSpec};

/// `mesh`, else `data=N` with `devices` N, else `data=2,model=2`; the mesh must have
/// `devices` devices when both are given (the `--mesh` and `--devices` flags).
pub fn resolve_mesh(mesh: Option<&str>, devices: Option<usize>) -> Result<Mesh> {
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
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// The model.
    pub cfg: Config,
    /// The device mesh (`data`, `model` axes).
    pub mesh: Mesh,
    /// Also split every weight and optimizer state over `data` (ZeRO-3 style).
    pub fsdp: bool,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// The batch carries per-token loss weights (`batch.weights`: conversations).
    pub weights: bool,
    /// LoRA: only these adapters train; the base weights are frozen (`frozen.*`, in
    /// `base_dtype`, without optimizer state).
    pub lora: Option<gemma::lora::Lora>,
    /// The dtype the frozen base weights are held in (LoRA only; the compute dtype).
    pub base_dtype: graph::DType,
    /// The state holds the layer weights stacked `[groups, ...]` (`gemma::stack`; the layers
    /// run as a loop, `--scan-layers`); checkpoints keep the per-layer names. Not with LoRA.
    pub stacked: bool,
}

impl Setup {
    /// The spec of a state or batch path (`state.params.<name>`, `state.opt.m.<name>`,
    /// `batch.tokens`, ...) as `gemma::rules::state_spec` says; None: replicated.
    pub fn spec(&self, path: &str) -> Option<PartitionSpec> {
        gemma::rules::state_spec(&self.cfg, path, &self.mesh, self.fsdp)
    }

    /// The sharding of the array at `path` of rank `rank` (replicated where no rule applies).
    pub fn sharding(&self, path: &str, rank: usize) -> NamedSharding {
        let spec = self.spec(path).unwrap_or_else(|| PartitionSpec::replicated(rank));
        NamedSharding { mesh: self.mesh.clone(), spec }
    }

    /// The activation layout of the model on this mesh.
    pub fn layout(&self) -> Layout {
        Layout { mesh: self.mesh.clone(), fsdp: self.fsdp }
    }

    /// The tensors that train, by name, with their shapes: the model's weights, or with LoRA
    /// the adapters.
    pub fn trainable(&self) -> Vec<(String, Vec<i64>)> {
        match &self.lora {
            Some(l) => l.shapes(&self.cfg),
            None if self.stacks() => gemma::stack::Stacking::of(&self.cfg).shapes(&self.cfg),
            None => gemma::param_shapes(&self.cfg),
        }
    }

    /// Whether the state stacks layer weights: `stacked`, without LoRA, and at least one
    /// whole period of layers to stack.
    pub fn stacks(&self) -> bool {
        self.stacked && self.lora.is_none() && gemma::stack::Stacking::of(&self.cfg).any()
    }

    /// The argument types of the train step with their specs (unlisted paths replicated).
    pub fn train_args(&self) -> Tree<(TensorType, PartitionSpec)> {
        let (b, t) = (self.batch as i64, self.seq as i64);
        let types = match &self.lora {
            Some(l) => gemma::lora_train_args(&self.cfg, l, self.base_dtype, b, t, self.weights),
            None => gemma::train_args_with(&self.cfg, b, t, self.weights, self.stacks()),
        };
        types.map(|path, ty| (ty.clone(), self.sharding(path, ty.rank()).spec))
    }
}

/// The traced train step's closure type.
pub type StepFn = Box<dyn Fn(&Tree<Tensor>) -> Result<Tree<Tensor>, graph::Error>>;

/// The compiled train step: `state` donated, every state tensor and the batch split as the
/// rules say (the new state keeps its arguments' specs). With no client it can only be
/// lowered (`Jit::lower`, for ahead-of-time compilation).
pub fn train_step_jit(client: Option<&Client>, setup: &Setup, hp: &Hyper) -> Jit<'static, StepFn> {
    let (cfg, hp, layout, lora) = (setup.cfg.clone(), *hp, setup.layout(), setup.lora.clone());
    let step: StepFn = Box::new(move |args: &Tree<Tensor>| gemma::train_step_with(&cfg, &hp, lora.as_ref(), Some(&layout), args));
    let rules = setup.clone();
    Jit::with_client("train_step", client, step).with_mesh(setup.mesh.clone()).donate("state").with_rule(move |path, _| rules.spec(path))
}
