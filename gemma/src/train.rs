//! The train step as one traced function: loss and gradients (the model's value_and_grad,
//! inlined with `Function::call`), the global gradient norm, clipping, the learning-rate
//! schedule and AdamW, over the state tree {params, opt.m, opt.v, step}. The semantics are
//! fixed so another framework can reproduce a run step for step:
//!
//! - grad_norm: global L2 norm of the unclipped gradient; clip C > 0 scales g by min(1, C / norm).
//! - lr(s), s = updates applied so far: s < W: lr (s+1)/W; then cosine
//!   min_lr + (lr - min_lr)/2 (1 + cos(pi (s-W) / max(1, S-W))); or constant lr.
//! - AdamW as optax.adamw / torch.optim.AdamW: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
//!   m^ = m/(1-b1^(s+1)), v^ = v/(1-b2^(s+1)), p -= lr (m^/(sqrt(v^) + eps) + wd p), the decay
//!   only on tensors of rank >= 2.
//! - Master weights and optimizer states are f32; `compute` may be bf16 (the forward and
//!   backward then run in bf16, the gradients arrive in f32 through the converts).
use crate::config::Config;
use crate::model::{model_args, model_with_adapters, param_types, ModelOptions};
use crate::rules::Layout;
use graph::{DType, Tensor, TensorType, Tree};

/// The learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// From `lr` down to `min_lr` along half a cosine over the S - W updates after warmup.
    Cosine,
    /// `lr` for every update after warmup.
    Constant,
}

/// Optimizer and schedule settings (the `train` flags of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    /// The peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// Warmup updates W: update `s` < W uses lr (s+1)/W; 0 turns warmup off.
    pub warmup: u64,
    /// Total steps S of the run (the cosine's length).
    pub steps: u64,
    /// What the learning rate does after warmup.
    pub schedule: Schedule,
    /// The learning rate the cosine schedule ends at.
    pub min_lr: f64,
    /// AdamW's decoupled weight decay, applied to tensors of rank >= 2 only; 0 turns it off.
    pub weight_decay: f64,
    /// Global-norm clipping threshold; 0 turns clipping off.
    pub clip: f64,
    /// AdamW's decay rate of the first moment m, in [0, 1).
    pub b1: f64,
    /// AdamW's decay rate of the second moment v, in [0, 1).
    pub b2: f64,
    /// AdamW's epsilon, added to `sqrt(v^)` (finite, > 0).
    pub eps: f64,
    /// The dtype of the forward and backward passes (f32 or bf16).
    pub compute: DType,
    /// Recompute each decoder layer in the backward pass (`--remat`): less memory, more FLOPs,
    /// the same values.
    pub remat: graph::Remat,
    /// Run the decoder layers as one loop over their stacked weights (`--scan-layers`, the
    /// default; `--no-scan-layers` unrolls them): the program's size and compile time do not
    /// grow with depth, the values are the same.
    pub scan_layers: bool,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            lr: 3e-3,
            warmup: 20,
            steps: 1000,
            schedule: Schedule::Cosine,
            min_lr: 3e-4,
            weight_decay: 0.1,
            clip: 1.0,
            b1: 0.9,
            b2: 0.95,
            eps: 1e-8,
            compute: DType::F32,
            remat: graph::Remat::None,
            scan_layers: true,
        }
    }
}

impl Hyper {
    /// Refuses settings that cannot train: each error names the `train` flag and the range it
    /// allows (`--lr` and `--min-lr` finite and >= 0, `--b1` and `--b2` in [0, 1), `--eps`
    /// finite and > 0, `--weight-decay` and `--clip` finite and >= 0, `--steps` >= 1).
    pub fn check(&self) -> Result<(), String> {
        let nonnegative = [("--lr", self.lr), ("--min-lr", self.min_lr), ("--weight-decay", self.weight_decay), ("--clip", self.clip)];
        for (flag, v) in nonnegative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{flag} {v}: must be a finite number >= 0"));
            }
        }
        for (flag, v) in [("--b1", self.b1), ("--b2", self.b2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{flag} {v}: must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("--eps {}: must be a finite number > 0", self.eps));
        }
        if self.steps == 0 {
            return Err("--steps must be at least 1".into());
        }
        Ok(())
    }

    /// The learning rate of update `s` (0-based), in f64: the formula the program computes.
    pub fn lr_at(&self, s: u64) -> f64 {
        let (s, w) = (s as f64, self.warmup as f64);
        if self.warmup > 0 && s < w {
            return self.lr * (s + 1.0) / w;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = (self.steps as f64 - w).max(1.0);
                self.min_lr + (self.lr - self.min_lr) / 2.0 * (1.0 + (std::f64::consts::PI * (s - w) / span).cos())
            }
        }
    }
}

/// The argument types of `train_step`: `state.params.<name>`, `state.opt.m.<name>`,
/// `state.opt.v.<name>` (f32, checkpoint names), `state.step` (s32 scalar: updates applied)
/// and `batch.tokens` (s32 [batch, seq]); `batch.weights` (f32 [batch, seq], optional) weights
/// each target's loss (see [`train_args_weighted`]).
pub fn train_args(cfg: &Config, batch: i64, seq: i64) -> Tree<TensorType> {
    train_args_weighted(cfg, batch, seq, false)
}

/// [`train_args`], with `batch.weights` (f32 [batch, seq]: per-token loss weights, see
/// `ModelOptions::weights`) when `weights`.
pub fn train_args_weighted(cfg: &Config, batch: i64, seq: i64, weights: bool) -> Tree<TensorType> {
    train_args_with(cfg, batch, seq, weights, false)
}

/// [`train_args_weighted`]; with `stacked` the layer weights (and their moments) are stacked
/// `[groups, ...]` under `model.stacked.<j>.<name>` (see `stack::Stacking`), as a state for
/// layers run as a loop holds them.
pub fn train_args_with(cfg: &Config, batch: i64, seq: i64, weights: bool, stacked: bool) -> Tree<TensorType> {
    let mut t = Tree::new();
    let shapes = if stacked { crate::stack::Stacking::of(cfg).shapes(cfg) } else { crate::model::param_shapes(cfg) };
    for (name, dims) in shapes {
        let ty = TensorType::new(DType::F32, &dims);
        for part in ["params", "opt.m", "opt.v"] {
            t.insert(format!("state.{part}.{name}"), ty.clone()).expect("internal: checkpoint names are distinct paths");
        }
    }
    t.insert("state.step", TensorType::scalar(DType::S32)).expect("internal: fixed name");
    t.insert("batch.tokens", TensorType::new(DType::S32, &[batch, seq])).expect("internal: fixed name");
    if weights {
        t.insert("batch.weights", TensorType::new(DType::F32, &[batch, seq])).expect("internal: fixed name");
    }
    t
}

/// One training step. Returns the new state under the same paths (`state.*`) and the
/// metrics `metrics.loss` (before the update), `metrics.grad_norm` (unclipped) and
/// `metrics.lr` (used by the update), all f32 scalars.
/// `layout`: the mesh the step runs on, so the model's activations get sharding constraints
/// (None on one device).
pub fn train_step(cfg: &Config, hp: &Hyper, layout: Option<&Layout>, args: &Tree<Tensor>) -> Result<Tree<Tensor>, graph::Error> {
    train_step_with(cfg, hp, None, layout, args)
}

/// The argument types of the LoRA train step: `state.params.<adapter>` and their moments (f32),
/// `state.step`, `frozen.<checkpoint name>` (the base weights, in `base`: never updated, no
/// optimizer state), `batch.tokens` and, with `weights`, `batch.weights`.
pub fn lora_train_args(cfg: &Config, lora: &crate::lora::Lora, base: DType, batch: i64, seq: i64, weights: bool) -> Tree<TensorType> {
    let mut t = Tree::new();
    for (name, dims) in lora.shapes(cfg) {
        for part in ["params", "opt.m", "opt.v"] {
            t.insert(format!("state.{part}.{name}"), TensorType::new(DType::F32, &dims))
                .expect("internal: adapter names are distinct paths");
        }
    }
    for (name, ty) in param_types(cfg, base) {
        t.insert(format!("frozen.{name}"), ty).expect("internal: checkpoint names are distinct paths");
    }
    t.insert("state.step", TensorType::scalar(DType::S32)).expect("internal: fixed name");
    t.insert("batch.tokens", TensorType::new(DType::S32, &[batch, seq])).expect("internal: fixed name");
    if weights {
        t.insert("batch.weights", TensorType::new(DType::F32, &[batch, seq])).expect("internal: fixed name");
    }
    t
}

/// [`train_step`], or with `lora` the LoRA step: only the adapters (`state.params`) train, with
/// the same loss, clipping, schedule and AdamW (both A and B are rank 2, so both are decayed;
/// `grad_norm` is the adapters' global norm); the base weights come in as `frozen.*` and are
/// returned unchanged by not being outputs at all.
pub fn train_step_with(
    cfg: &Config,
    hp: &Hyper,
    lora: Option<&crate::lora::Lora>,
    layout: Option<&Layout>,
    args: &Tree<Tensor>,
) -> Result<Tree<Tensor>, graph::Error> {
    let params = args.subtree("state.params");
    let frozen = args.subtree("frozen");
    let tokens = args.leaf("batch.tokens")?.clone();
    let dims = tokens.dims();
    if dims.len() != 2 {
        return Err(graph::Error::Invalid(format!("batch.tokens must be [batch, seq], got {}", tokens.ty())));
    }
    // The loss as a function of f32 master weights; the model runs in `compute`.
    let compute = hp.compute;
    // Conversations: per-token loss weights, sum(w CE) / sum(w) over the global batch.
    let weights = args.leaf("batch.weights").ok().cloned();
    // A state with stacked layer weights (`stack`) runs its layers as a loop.
    let stacking = crate::stack::Stacking::of(cfg);
    let stacked = params.paths().any(|p| stacking.parse(p).is_some());
    let opts =
        ModelOptions { remat: hp.remat, weights: weights.is_some(), scan: hp.scan_layers || stacked, stacked, ..ModelOptions::default() };
    let mut loss_args = model_args(cfg, DType::F32, dims[0], dims[1], opts);
    if let Some(l) = lora {
        // The adapters are the differentiated `params`; the base weights ride along as `frozen`.
        let mut a = Tree::new();
        for (path, ty) in loss_args.iter() {
            if !path.starts_with("params.") {
                a.insert(path.to_string(), ty.clone())?;
            }
        }
        for (name, dims) in l.shapes(cfg) {
            a.insert(format!("params.{name}"), TensorType::new(DType::F32, &dims))?;
        }
        for (name, t) in frozen.iter() {
            a.insert(format!("frozen.{name}"), t.ty())?;
        }
        loss_args = a;
    }
    let mut failed = None;
    let loss_fn = graph::trace_tree("loss", &loss_args, |a| {
        let mut cast = Tree::new();
        for (path, t) in a.iter() {
            let (path, t) = match path.strip_prefix("frozen.") {
                Some(name) => (format!("params.{name}"), t.convert(compute)),
                None if path.starts_with("params.") => (path.to_string(), t.convert(compute)),
                None => (path.to_string(), t.clone()),
            };
            cast.insert(path, t).expect("internal: distinct paths");
        }
        model_with_adapters(cfg, &cast, opts, layout.cloned(), lora).unwrap_or_else(|e| {
            failed = Some(e);
            Tree::new()
        })
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let loss_fn = loss_fn?;
    let grad_fn = graph::value_and_grad_tree(&loss_fn, "loss", "params")?;
    let mut call_args = params.clone().prefixed("params")?.with("tokens", tokens)?;
    for (name, t) in frozen.iter() {
        call_args.insert(format!("frozen.{name}"), t.clone())?;
    }
    if let Some(w) = weights {
        call_args.insert("weights", w)?;
    }
    let out = grad_fn.call_tree(&call_args);
    let loss = out.leaf("loss")?.clone();
    let grads = out.subtree("grad.params");

    let sumsq = grads
        .values()
        .map(|g| (g * g).sum_all())
        .reduce(|a, b| a + b)
        .ok_or_else(|| graph::Error::Invalid("the model has no parameters".into()))?;
    let grad_norm = sumsq.sqrt();
    let one = grad_norm.scalar_like(1.0);
    // min(1, C / norm): a zero norm gives C / 0 = inf, so the scale is 1.
    let scale = if hp.clip > 0.0 { (grad_norm.scalar_like(hp.clip) / &grad_norm).min(&one) } else { one };

    let step = args.leaf("state.step")?.clone();
    let s = step.convert(DType::F32);
    let lr = lr_of(hp, &s);
    let t = &s + 1.0;
    let b1c = s.scalar_like(hp.b1).pow(&t).rsub(1.0); // 1 - b1^t
    let b2c = s.scalar_like(hp.b2).pow(&t).rsub(1.0);

    let mut next = Tree::new();
    for (name, p) in params.iter() {
        let g = grads.leaf(name)? * &scale;
        let m = args.leaf(&format!("state.opt.m.{name}"))? * hp.b1 + &g * (1.0 - hp.b1);
        let v = args.leaf(&format!("state.opt.v.{name}"))? * hp.b2 + &g * &g * (1.0 - hp.b2);
        let mut update = (&m / &b1c) / ((&v / &b2c).sqrt() + hp.eps);
        // Matrices decay, vectors (norms) do not; a stacked weight's rank counts one layer's.
        let rank = if stacking.parse(name).is_some() { p.rank() - 1 } else { p.rank() };
        if rank >= 2 && hp.weight_decay != 0.0 {
            update = update + p * hp.weight_decay;
        }
        next.insert(format!("state.params.{name}"), p - &(update * &lr))?;
        next.insert(format!("state.opt.m.{name}"), m)?;
        next.insert(format!("state.opt.v.{name}"), v)?;
    }
    next.insert("state.step", &step + 1.0)?;
    next.insert("metrics.loss", loss.convert(DType::F32))?;
    next.insert("metrics.grad_norm", grad_norm)?;
    next.insert("metrics.lr", lr)?;
    Ok(next)
}

/// lr(s) in the program (f32), `s` the f32 count of updates applied.
fn lr_of(hp: &Hyper, s: &Tensor) -> Tensor {
    let w = hp.warmup as f64;
    let peak = s.scalar_like(hp.lr);
    let after = match hp.schedule {
        Schedule::Constant => peak.clone(),
        Schedule::Cosine => {
            let span = (hp.steps as f64 - w).max(1.0);
            let angle = (s - w) * (std::f64::consts::PI / span);
            (angle.cos() + 1.0) * ((hp.lr - hp.min_lr) / 2.0) + hp.min_lr
        }
    };
    if hp.warmup == 0 {
        return after;
    }
    let ramp = (s + 1.0) * (hp.lr / w);
    Tensor::select(&s.lt(&s.scalar_like(w)), &ramp, &after)
}

/// A freshly initialised model, as transformers initialises GemmaForCausalLM: every matrix
/// (and the embedding) normal with std 0.02, the RMSNorm weights zero (scale 1 + w = 1).
/// The values depend on `seed` and the tensor name only (never on the mesh or device count).
pub fn init_params(cfg: &Config, seed: u64) -> Vec<(String, Vec<i64>, Vec<f32>)> {
    crate::model::param_shapes(cfg)
        .into_iter()
        .map(|(name, dims)| {
            let n = dims.iter().product::<i64>() as usize;
            let values = if dims.len() == 1 { vec![0.0; n] } else { normals(seed ^ fnv1a(&name), n, 0.02) };
            (name, dims, values)
        })
        .collect()
}

/// FNV-1a of a name: a stable per-tensor stream id.
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// `n` normal samples with standard deviation `std` (SplitMix64 and Box-Muller).
fn normals(seed: u64, n: usize, std: f64) -> Vec<f32> {
    let mut rng = crate::rng::SplitMix64(seed);
    let mut next = || rng.next_f64();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (u1, u2) = (1.0 - next(), next()); // u1 in (0, 1]
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32);
        if out.len() < n {
            out.push((r * a.sin()) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_train_are_refused_naming_the_flag() {
        assert_eq!(Hyper::default().check(), Ok(()));
        let bad = [
            (Hyper { lr: f64::NAN, ..Hyper::default() }, "--lr NaN"),
            (Hyper { lr: -1e-3, ..Hyper::default() }, "--lr -0.001"),
            (Hyper { min_lr: f64::INFINITY, ..Hyper::default() }, "--min-lr inf"),
            (Hyper { b1: 1.0, ..Hyper::default() }, "--b1 1: must be in [0, 1)"),
            (Hyper { b2: 1.5, ..Hyper::default() }, "--b2 1.5"),
            (Hyper { eps: -1e-8, ..Hyper::default() }, "--eps -0.00000001"),
            (Hyper { eps: 0.0, ..Hyper::default() }, "--eps 0"),
            (Hyper { clip: -1.0, ..Hyper::default() }, "--clip -1"),
            (Hyper { weight_decay: f64::NEG_INFINITY, ..Hyper::default() }, "--weight-decay -inf"),
            (Hyper { steps: 0, ..Hyper::default() }, "--steps must be at least 1"),
        ];
        for (hp, want) in bad {
            let err = hp.check().unwrap_err();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }
}
