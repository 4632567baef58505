//! `gemma-xla forward`: logits, loss and (with --grads) the gradient of every checkpoint
//! tensor for a token file, from an HF Gemma checkpoint, written to one safetensors file.
use crate::PluginArgs;
use anyhow::{bail, Context, Result};
use gemma::{Checkpoint, Config, FileBytes, SaveTensor};
use gemma_xla::npy;
use graph::{DType, Tree};
use jit::Jit;
use runtime::{AsHostView, HostArray, HostView, MappedFile};
use std::path::{Path, PathBuf};

/// A checkpoint file mapped into memory by the runtime (where all `unsafe` code lives).
struct Mapped(MappedFile);

impl FileBytes for Mapped {
    fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// Opens checkpoint files as read-only memory maps.
pub fn map_file(path: &Path) -> std::io::Result<Box<dyn FileBytes>> {
    Ok(Box::new(Mapped(MappedFile::open(path)?)))
}

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// HF model directory: config.json and model.safetensors (or shards + index)
    #[arg(long)]
    model: PathBuf,
    /// Token ids, int32 or int64 [batch, seq]
    #[arg(long)]
    tokens: PathBuf,
    /// Output safetensors: logits, loss and, with --grads, grad.<name>
    #[arg(long)]
    out: PathBuf,
    /// Also compute the gradient of the loss for every checkpoint tensor
    #[arg(long)]
    grads: bool,
    /// Also write per-layer values: layer.embeddings, layer.<i>.attention, layer.<i>.mlp, layer.final_norm
    #[arg(long)]
    layers: bool,
    /// Padding mask, int [batch, seq], nonzero = real token: padded keys are hidden from
    /// attention and padded targets left out of the loss
    #[arg(long, value_name = "MASK.npy")]
    mask: Option<PathBuf>,
    /// Compute dtype: f32, or bf16 (norms, softmax and loss stay f32)
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    #[command(flatten)]
    plugin: PluginArgs,
}

/// Token ids as s32 [B, T], each checked against the vocabulary (`forward`: T >= 2).
fn read_tokens(path: &Path, vocab: i64) -> Result<HostArray> {
    read_token_ids(path, vocab, 2)
}

/// Token ids from an int32/int64 .npy [B, T] with T >= `min_len`, each checked against the
/// vocabulary (naming the row and column), as s32.
pub fn read_token_ids(path: &Path, vocab: i64, min_len: i64) -> Result<HostArray> {
    let t = npy::read(path)?;
    let ids: Vec<i64> = match t.dtype() {
        DType::S32 => t.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
        DType::S64 => t.to_vec::<i64>()?,
        other => bail!("{}: token ids must be int32 or int64, got {other}", path.display()),
    };
    let dims = t.dims();
    if dims.len() != 2 {
        bail!("{}: tokens must be [batch, seq], got shape {dims:?}", path.display());
    }
    if ids.is_empty() {
        bail!("{}: the token file is empty (shape {dims:?})", path.display());
    }
    if dims[1] < min_len {
        let why = if min_len >= 2 { "for a next-token loss" } else { "to continue" };
        bail!("{}: each row needs at least {min_len} tokens {why}, got {}", path.display(), dims[1]);
    }
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id < 0 || id >= vocab) {
        let (row, col) = (i as i64 / dims[1], i as i64 % dims[1]);
        bail!("{}: token [{row}, {col}] = {id} is outside the vocabulary [0, {vocab})", path.display());
    }
    Ok(HostArray::from_vec(dims, ids.into_iter().map(|id| id as i32).collect())?)
}

/// A 0/1 padding mask as s32 of the tokens' shape.
fn read_mask(path: &Path, dims: &[i64]) -> Result<HostArray> {
    let m = npy::read(path)?;
    if m.dims() != dims {
        bail!("{}: the mask has shape {:?} but the tokens have {dims:?}", path.display(), m.dims());
    }
    let values = m.to_f64_vec();
    if values.iter().all(|&v| v == 0.0) {
        bail!("{}: the mask hides every token", path.display());
    }
    // The loss predicts tokens 1..T of each row: at least one of them must be real.
    let t = dims[1].max(1) as usize;
    if values.chunks(t).all(|row| row[1..].iter().all(|&v| v == 0.0)) {
        bail!(
            "{}: the mask leaves no target token (positions 1..{} of every row are padding), so the loss is undefined",
            path.display(),
            t
        );
    }
    Ok(HostArray::from_vec(dims, values.into_iter().map(|v| (v != 0.0) as i32).collect())?)
}

/// Every tensor of `cfg` as a view of the (validated) checkpoint, by checkpoint name.
pub fn param_views<'a>(ck: &'a Checkpoint, cfg: &Config) -> Result<Tree<HostView<'a>>> {
    let mut views = Tree::new();
    for (name, _) in gemma::param_shapes(cfg) {
        let t = ck.get(&name).with_context(|| format!("{}: the checkpoint has no {name}", ck.dir().display()))?;
        views.insert(name, HostView { dtype: t.dtype, dims: t.shape, bytes: t.bytes })?;
    }
    Ok(views)
}

pub fn forward(a: &ForwardArgs) -> Result<()> {
    let config_path = a.model.join("config.json");
    if !config_path.is_file() {
        bail!("{}: no config.json in the model directory", a.model.display());
    }
    let cfg = Config::from_json_file(&config_path)?;
    let ck = Checkpoint::open_with(&a.model, &map_file)?;
    ck.validate(&cfg)?;
    let mut inputs: Vec<&Path> = ck.files();
    inputs.extend([config_path.as_path(), a.tokens.as_path()]);
    inputs.extend(a.mask.as_deref());
    gemma_xla::files::refuse_input_as_output(&a.out, &inputs)?;
    let tokens = read_tokens(&a.tokens, cfg.vocab_size)?;
    let (batch, seq) = (tokens.dims()[0], tokens.dims()[1]);
    let dtype = if a.dtype == "bf16" { DType::Bf16 } else { DType::F32 };
    gemma_xla::files::require_parent_dir(&a.out)?;

    // Parameters straight from the mapped checkpoint where the dtype matches, else converted.
    let views = param_views(&ck, &cfg)?;
    let converted: Vec<(String, Option<HostArray>)> = views
        .iter()
        .map(|(name, v)| Ok((name.to_string(), (v.dtype != dtype).then(|| v.convert_float(dtype)).transpose()?)))
        .collect::<Result<_>>()?;
    let mut args: Tree<HostView> = Tree::new();
    for ((name, v), (_, c)) in views.iter().zip(&converted) {
        args.insert(format!("params.{name}"), c.as_ref().map_or(*v, |h| h.host_view()))?;
    }
    args.insert("tokens", tokens.host_view())?;
    let mask = a.mask.as_deref().map(|p| read_mask(p, tokens.dims())).transpose()?;
    if let Some(m) = &mask {
        args.insert("mask", m.host_view())?;
    }

    let client = a.plugin.open(Some(1))?;
    let grads = a.grads;
    let opts = gemma::ModelOptions { layers: a.layers, mask: mask.is_some(), ..Default::default() };
    let jit = Jit::new("gemma_forward", &client, |args: &Tree<graph::Tensor>| -> Result<Tree<graph::Tensor>, graph::Error> {
        if !grads {
            return gemma::model(&cfg, args, opts);
        }
        let f = gemma::trace_model(&cfg, dtype, batch, seq, opts)?;
        Ok(graph::value_and_grad_tree(&f, "loss", "params")?.call_tree(args))
    });
    ck.check_unchanged()?; // a file truncated under the map would fault when read
    let outputs = jit.call_host(&args)?;

    let mut saved: Vec<(String, HostArray)> = Vec::new();
    for (name, value) in outputs.into_leaves() {
        // Gradients are written under the checkpoint names: grad.<name>.
        let name = name.strip_prefix("grad.params.").map_or(name.clone(), |n| format!("grad.{n}"));
        let f32s = if value.dtype() == DType::F32 { value } else { value.host_view().convert_float(DType::F32)? };
        saved.push((name, f32s));
    }
    let tensors: Vec<SaveTensor> = saved
        .iter()
        .map(|(name, v)| SaveTensor { name: name.clone(), dtype: DType::F32, shape: v.dims().to_vec(), bytes: v.bytes() })
        .collect();
    gemma::save_safetensors(&a.out, &tensors).with_context(|| format!("cannot write {}", a.out.display()))?;
    let loss = saved.iter().find(|(n, _)| n == "loss").map(|(_, v)| v.to_f64_vec()[0]).unwrap_or(f64::NAN);
    println!(
        "{}: {} layers, tokens [{batch}, {seq}], {dtype} compute: loss {loss:.6}; wrote {} tensors to {}",
        a.model.display(),
        cfg.num_hidden_layers,
        tensors.len(),
        a.out.display()
    );
    Ok(())
}
