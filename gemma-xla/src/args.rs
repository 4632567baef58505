//! The flag groups the subcommands share, each declared once and flattened into every
//! command that takes it, with one Rust type per flag. Where commands differ in a default
//! (`--dtype`, `--seq`, `--mesh`), the group holds an Option and the command says its default.
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use gemma::Config;
use graph::{DType, Remat, Tree};
use runtime::{Client, PluginSpec};
use std::path::{Path, PathBuf};

/// Plugin selection shared by every subcommand that runs something.
#[derive(clap::Args, Clone)]
pub struct PluginArgs {
    /// cpu, cuda, tpu, or the path of a PJRT plugin .so [env: GEMMA_XLA_PLUGIN; default: cpu]
    #[arg(long)]
    pub plugin: Option<String>,
    /// Number of devices (the CPU plugin creates this many) [default: the plugin's own, or what the program needs]
    #[arg(long, value_parser = device_count)]
    pub devices: Option<usize>,
    /// Compiled programs are kept here and loaded instead of compiled again [default: $GEMMA_XLA_COMPILE_CACHE, else <per-user cache>/compile]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile every program afresh, without reading or writing the compilation cache
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_compile_cache: bool,
}

/// `--devices N`: a whole number of at least 1.
pub fn device_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("the number of devices must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected a number of devices (at least 1), got {s:?}")),
    }
}

impl PluginArgs {
    /// Opens the plugin with `--devices`, else with `needed` devices (None: the plugin's default).
    pub fn open(&self, needed: Option<usize>) -> Result<Client> {
        self.open_as(needed, None, None)
    }

    /// [`PluginArgs::open`] for process `process` of a multi-host run.
    pub fn open_as(
        &self,
        needed: Option<usize>,
        process: Option<usize>,
        store: Option<std::sync::Arc<dyn runtime::KeyValueStore>>,
    ) -> Result<Client> {
        let spec = PluginSpec::from_flag_or_env(self.plugin.as_deref())?;
        let mut client = Client::open_with_store(&spec, self.devices.or(needed), process, store)?;
        if !self.no_compile_cache {
            let from_env = std::env::var_os("GEMMA_XLA_COMPILE_CACHE").filter(|d| !d.is_empty()).map(PathBuf::from);
            let dir = self.cache_dir.clone().or(from_env).unwrap_or_else(runtime::CompileCache::default_dir);
            client.set_compile_cache(Some(runtime::CompileCache::new(dir)));
        }
        Ok(client)
    }
}

/// `--config`: a preset or an HF config.json.
#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// Model config: a preset (tiny, 2b, 7b, gemma2-2b, gemma2-9b, gemma2-27b, gemma3-270m, gemma3-1b, gemma3-4b, gemma3-12b, gemma3-27b) or the path of an HF config.json (model_type gemma, gemma2, gemma3_text or gemma3)
    #[arg(long, value_name = "PRESET|CONFIG.json")]
    pub config: Option<String>,
}

impl ConfigArg {
    /// The config named by `--config`, which the command requires.
    pub fn required(&self) -> Result<(String, Config)> {
        let Some(name) = &self.config else { bail!("give --config ({} or an HF config.json)", gemma::PRESETS.join(", ")) };
        Ok((name.clone(), load_config(name)?))
    }

    /// The config file, when `--config` names one (an input no output may overwrite).
    pub fn file(&self) -> Option<PathBuf> {
        self.config.as_deref().filter(|c| c.ends_with(".json")).map(PathBuf::from)
    }
}

/// A preset (`tiny`, `2b`, `7b`) or the path of an HF config.json.
pub fn load_config(name: &str) -> Result<Config> {
    if name.ends_with(".json") {
        let text = std::fs::read_to_string(name).with_context(|| format!("cannot read {name}"))?;
        let (cfg, note) = Config::from_json_noting(&text).with_context(|| name.to_string())?;
        if let Some(n) = note {
            eprintln!("{name}: {n}");
        }
        Ok(cfg)
    } else {
        Ok(Config::preset(name)?)
    }
}

/// `--mesh` and `--fsdp`.
#[derive(clap::Args, Clone)]
pub struct MeshArgs {
    /// Device mesh over named axes, e.g. data=2,model=2 (batch over data; heads, MLP and vocab over model) [default: the command's]
    #[arg(long)]
    pub mesh: Option<String>,
    /// Also split every weight and optimizer state over `data` (ZeRO-3 style; XLA gathers each layer's weights when used)
    #[arg(long)]
    pub fsdp: bool,
}

/// `--batch` and `--seq`: the shape of a step.
#[derive(clap::Args, Clone)]
pub struct ShapeArgs {
    /// Sequences per step (divisible by the mesh's data axis)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Tokens per sequence (prefill: the new tokens per row of one call) [default: the command's]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub seq: Option<u32>,
}

impl ShapeArgs {
    /// `--seq`, else `default`; programs over pairs of tokens need at least 2.
    pub fn seq_or(&self, default: u32, min: u32) -> Result<u32> {
        let seq = self.seq.unwrap_or(default);
        if seq < min {
            bail!("--seq {seq}: at least {min} tokens per sequence are needed");
        }
        Ok(seq)
    }
}

/// The compute dtype.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// f32 everywhere.
    F32,
    /// bf16 weights and activations; norms, softmax, loss and optimizer state in f32.
    Bf16,
}

impl Dtype {
    /// The graph dtype.
    pub fn dtype(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::Bf16,
        }
    }

    /// `f32` or `bf16`, as the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// `--dtype`.
#[derive(clap::Args, Clone)]
pub struct DtypeArg {
    /// Compute dtype: f32, or bf16 (f32 master weights, optimizer states, norms, softmax and loss) [default: f32; plan and compile: bf16]
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
}

impl DtypeArg {
    /// `--dtype`, else `default`.
    pub fn or(&self, default: Dtype) -> Dtype {
        self.dtype.unwrap_or(default)
    }
}

/// Rematerialisation of the decoder layers.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RematPolicy {
    /// Keep every intermediate value.
    #[default]
    None,
    /// Keep only each layer's input; recompute the rest in the backward pass.
    Full,
    /// Keep layer inputs and matmul results.
    SaveDots,
}

/// `--remat`, `--scan-layers` / `--no-scan-layers`.
#[derive(clap::Args, Clone)]
pub struct RematArg {
    /// Recompute each decoder layer in the backward pass: none, full (keep only layer inputs) or save-dots (keep matmul results too)
    #[arg(long, value_enum, default_value = "none")]
    pub remat: RematPolicy,
    /// Run the decoder layers as one loop over their stacked weights (the default): compile time does not grow with depth
    #[arg(long = "scan-layers", overrides_with = "no_scan_layers")]
    pub scan_layers: bool,
    /// Unroll the decoder layers, one copy of the layer per layer in the program (the program before --scan-layers, for comparison)
    #[arg(long = "no-scan-layers", overrides_with = "scan_layers")]
    pub no_scan_layers: bool,
}

impl RematArg {
    /// Whether the decoder layers run as a loop (`--scan-layers`, unless `--no-scan-layers`
    /// comes last).
    pub fn scan(&self) -> bool {
        !self.no_scan_layers
    }

    /// The graph's policy.
    pub fn remat(&self) -> Remat {
        match self.remat {
            RematPolicy::None => Remat::None,
            RematPolicy::Full => Remat::Full,
            RematPolicy::SaveDots => Remat::SaveDots,
        }
    }
}

/// `--scan-layers` / `--no-scan-layers` where nothing is differentiated (generate, eval).
#[derive(clap::Args, Clone)]
pub struct ScanArg {
    /// Run the decoder layers as one loop over their stacked weights and a stacked KV cache (the default): prefill and decode compile in the same time whatever the depth
    #[arg(long = "scan-layers", overrides_with = "no_scan_layers")]
    pub scan_layers: bool,
    /// Unroll the decoder layers, one copy of the layer per layer in the program, with a cache per layer
    #[arg(long = "no-scan-layers", overrides_with = "scan_layers")]
    pub no_scan_layers: bool,
}

impl ScanArg {
    /// Whether the decoder layers run as a loop (`--scan-layers`, unless `--no-scan-layers`
    /// comes last).
    pub fn scan(&self) -> bool {
        !self.no_scan_layers
    }
}

/// Writes to stdout; a reader that stops early (`| head`) is not an error.
pub fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The model directory's config.json, or an error naming the directory.
pub fn model_config(dir: &Path, flag: &str) -> Result<(PathBuf, Config)> {
    let path = dir.join("config.json");
    if !path.is_file() {
        bail!("{flag}{}: no config.json in the {}directory", dir.display(), if flag.is_empty() { "model " } else { "" });
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (cfg, note) = Config::from_json_noting(&text).with_context(|| path.display().to_string())?;
    if let Some(n) = note {
        eprintln!("{}: {n}", dir.display());
    }
    Ok((path, cfg))
}

/// `--adapter DIR`: a PEFT LoRA adapter applied on the model without merging.
#[derive(clap::Args, Clone, Default)]
pub struct AdapterArg {
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to apply on the model, unmerged
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

/// A loaded adapter: its settings and its tensors (f32, by model name).
pub type Adapter = (gemma::lora::Lora, Vec<(String, runtime::HostArray)>);

impl AdapterArg {
    /// The files `--adapter` reads (none without the flag): an output may not be one of them.
    pub fn files(&self) -> Vec<PathBuf> {
        self.adapter.iter().flat_map(|d| ["adapter_config.json", "adapter_model.safetensors"].map(|f| d.join(f))).collect()
    }

    /// The adapter of `--adapter`, checked against `cfg` (None without the flag).
    pub fn load(&self, cfg: &Config) -> Result<Option<Adapter>> {
        let Some(dir) = &self.adapter else { return Ok(None) };
        let lora = data::peft::read_config(dir, cfg).with_context(|| format!("--adapter {}", dir.display()))?;
        let weights = data::peft::read_weights(dir, cfg, &lora).with_context(|| format!("--adapter {}", dir.display()))?;
        Ok(Some((lora, weights)))
    }
}

/// The checkpoint's tensors with the adapter's added (by model name).
pub fn with_adapter<'a>(mut params: Tree<runtime::HostView<'a>>, adapter: &'a Option<Adapter>) -> Result<Tree<runtime::HostView<'a>>> {
    if let Some((_, weights)) = adapter {
        for (name, a) in weights {
            params.insert(name.clone(), runtime::AsHostView::host_view(a)).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(params)
}

/// `--lora-rank R [--lora-alpha A] [--lora-targets LIST]` for commands that plan or compile a
/// LoRA train step.
#[derive(clap::Args, Clone, Default)]
pub struct LoraArgs {
    /// LoRA: the train step of rank-R adapters on a frozen base
    #[arg(long, value_name = "R")]
    pub lora_rank: Option<i64>,
    /// LoRA: the adapters' scale is alpha / R [default: 8]
    #[arg(long, value_name = "A", requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
    /// LoRA: comma-separated projections to adapt [default: q_proj,v_proj]
    #[arg(long, value_name = "LIST", requires = "lora_rank")]
    pub lora_targets: Option<String>,
}

impl LoraArgs {
    /// The checked settings (None without --lora-rank).
    pub fn lora(&self, cfg: &Config) -> Result<Option<gemma::lora::Lora>> {
        let Some(rank) = self.lora_rank else { return Ok(None) };
        let targets: Vec<String> = match &self.lora_targets {
            Some(t) => t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            None => gemma::lora::DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
        };
        Ok(Some(gemma::lora::Lora::new(cfg, rank, self.lora_alpha.unwrap_or(8.0), &targets)?))
    }
}
