//! `gemma-xla forward`: logits, loss and (with --grads) the gradient of every checkpoint
//! tensor for a token file (`decode::forward`), written to one safetensors file.
use crate::args::{model_config, with_adapter, AdapterArg, Dtype, DtypeArg, PluginArgs};
use anyhow::{Context, Result};
use decode::forward::{forward_with_adapters, ForwardOptions};
use gemma::SaveTensor;
use std::path::{Path, PathBuf};

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
    // --dtype default: f32 (with bf16, norms, softmax and loss stay f32).
    #[command(flatten)]
    dtype: DtypeArg,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    adapter: AdapterArg,
}

pub fn forward(a: &ForwardArgs) -> Result<()> {
    let (config_path, cfg) = model_config(&a.model, "")?;
    let ck = data::checkpoint::open(&a.model)?;
    ck.validate(&cfg)?;
    let mut inputs: Vec<&Path> = ck.files();
    inputs.extend([config_path.as_path(), a.tokens.as_path()]);
    inputs.extend(a.mask.as_deref());
    let adapter_files = a.adapter.files();
    inputs.extend(adapter_files.iter().map(PathBuf::as_path));
    data::files::refuse_input_as_output(&a.out, &inputs)?;
    let tokens = data::npy::read_token_ids(&a.tokens, cfg.vocab_size, 2)?;
    let (batch, seq) = (tokens.dims()[0], tokens.dims()[1]);
    let dtype = a.dtype.or(Dtype::F32).dtype();
    data::files::require_parent_dir(&a.out)?;
    let mask = a.mask.as_deref().map(|p| data::npy::read_mask(p, tokens.dims())).transpose()?;
    let adapter = a.adapter.load(&cfg)?;
    let params = with_adapter(data::checkpoint::param_views(&ck, &cfg)?, &adapter)?;

    let client = a.plugin.open(Some(1))?;
    ck.check_unchanged()?; // a file truncated under the map would fault when read
    let opts = ForwardOptions { grads: a.grads, layers: a.layers, dtype, scan: false };
    let saved = forward_with_adapters(&client, &cfg, &params, &tokens, mask.as_ref(), opts, adapter.as_ref().map(|(l, _)| l))?;
    let tensors: Vec<SaveTensor> = saved
        .iter()
        .map(|(name, v)| SaveTensor { name: name.clone(), dtype: v.dtype(), shape: v.dims().to_vec(), bytes: v.bytes() })
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
