//! [`Trainer`]: the state on the devices, the compiled step, the data, and where the run is.
use crate::checkpoints::{self, HostState, Meta, StateSource};
use crate::cluster::Cluster;
use crate::sample;
use crate::setup::{train_step_jit, Setup, StepFn};
use crate::state::{AdamState, TrainState};
use crate::{bail, Context, Result};
use data::{Dataset, Tokenizer};
use gemma::{Config, Hyper};
use graph::{DType, Tree};
use jit::Jit;
use runtime::{Arg, AsHostView, Client, DeviceArray, HostArray, Mesh};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the weights of a fresh run come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// `gemma::init_params` with the run's seed.
    Random,
    /// An HF checkpoint directory (config.json and model.safetensors); its config must be the
    /// run's.
    Hf(PathBuf),
}

/// What a training run is: the model, how it is spread over the devices, the optimizer and
/// the data order.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    /// The model.
    pub config: Config,
    /// The device mesh (`data`, `model` axes); it must have as many devices as the client.
    pub mesh: Mesh,
    /// Also split every weight and optimizer state over `data`.
    pub fsdp: bool,
    /// Sequences per step (a multiple of the mesh's data axis).
    pub batch: usize,
    /// Optimizer, schedule, compute dtype and rematerialisation; `hyper.steps` is the run's
    /// length.
    pub hyper: Hyper,
    /// Seed of the initialisation and of shuffling.
    pub seed: u64,
    /// Visit the rows in a seeded random order per epoch.
    pub shuffle: bool,
    /// Where the weights come from (ignored by [`Trainer::resume`], except as LoRA's base).
    pub init: Init,
    /// LoRA: train only these adapters on the frozen base weights of `init`.
    pub lora: Option<gemma::lora::Lora>,
    /// LoRA: start the adapters from this PEFT adapter directory instead of PEFT's
    /// initialisation (its settings must be `lora`'s).
    pub lora_init: Option<PathBuf>,
}

impl TrainSpec {
    /// The tiny preset on `mesh` with `train`'s default settings: batch 8, seed 0, no
    /// shuffling, random initialisation, `Hyper::default()`.
    pub fn tiny(mesh: Mesh) -> Result<TrainSpec> {
        Ok(TrainSpec {
            config: Config::preset("tiny")?,
            mesh,
            fsdp: false,
            batch: 8,
            hyper: Hyper::default(),
            seed: 0,
            shuffle: false,
            init: Init::Random,
            lora: None,
            lora_init: None,
        })
    }
}

/// Asks a [`Trainer::run`] to end after the step it is in. Cheap to clone, safe to set from
/// another thread or a signal handler the caller installs.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the run to stop; returns whether it had been asked already.
    pub fn stop(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How [`Trainer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// All `hyper.steps` updates are applied.
    Finished,
    /// The stop handle was set; the state is that after `step` updates.
    Stopped {
        /// Updates applied.
        step: u64,
    },
}

/// The metrics of one step, still on the devices: each is fetched when read.
pub struct StepMetrics {
    /// Updates applied after this step (1-based step number).
    pub step: u64,
    metrics: Tree<DeviceArray>,
    client: Client,
}

impl StepMetrics {
    fn scalar(&self, name: &str) -> Result<f64> {
        // Replicated scalars: each host reads its own copy (no program runs).
        Ok(self.metrics.leaf(name)?.gather(&self.client)?.to_f64_vec()[0])
    }

    /// The mean next-token loss of the step's batch (before the update).
    pub fn loss(&self) -> Result<f64> {
        self.scalar("loss")
    }

    /// The global gradient norm before clipping.
    pub fn grad_norm(&self) -> Result<f64> {
        self.scalar("grad_norm")
    }

    /// The learning rate the update used.
    pub fn lr(&self) -> Result<f64> {
        self.scalar("lr")
    }

    /// The metrics as device arrays (`loss`, `grad_norm`, `lr`).
    pub fn arrays(&self) -> &Tree<DeviceArray> {
        &self.metrics
    }
}

/// A training run: owns its client, the state on the devices, the compiled step and the data.
pub struct Trainer {
    client: Client,
    setup: Setup,
    hp: Hyper,
    data: Dataset,
    seed: u64,
    shuffle: bool,
    /// None only after a step failed midway (its state was donated).
    state: Option<TrainState<DeviceArray>>,
    step: u64,
    jit: Jit<'static, StepFn>,
    stop: StopHandle,
    resumed_from: Option<PathBuf>,
    skipped: Vec<checkpoints::Found>,
    settings: BTreeMap<String, String>,
    changed: Vec<Change>,
    cluster: Cluster,
    /// LoRA: the base weights on the devices (never donated, never updated).
    frozen: Option<Tree<DeviceArray>>,
    /// With a stacked state: the program that copies stacked tensors out as their layers.
    unstack: Option<Jit<'static, StepFn>>,
}

/// A setting a resumed run changed from its checkpoint's, allowed by an override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The `train` flag (`--lr`).
    pub flag: String,
    /// The checkpoint's value.
    pub old: String,
    /// This run's value.
    pub new: String,
}

/// The settings of `spec` on `data` that change a run's result, by their `train` flag.
/// `--steps` counts only with the cosine schedule (the only one that depends on it), and
/// `--seed` only with shuffling (a resumed run's weights come from the checkpoint).
pub fn settings(spec: &TrainSpec, data: &Dataset) -> BTreeMap<String, String> {
    let h = &spec.hyper;
    let mut s = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        s.insert(k.to_string(), v);
    };
    put("--data", data.fingerprint());
    put("--shuffle", spec.shuffle.to_string());
    if spec.shuffle {
        put("--seed", spec.seed.to_string());
    }
    put("--dtype", if h.compute == DType::Bf16 { "bf16" } else { "f32" }.to_string());
    put("--mesh", spec.mesh.to_string());
    put("--fsdp", spec.fsdp.to_string());
    put("--lr", h.lr.to_string());
    put("--warmup", h.warmup.to_string());
    put("--schedule", if h.schedule == gemma::Schedule::Constant { "constant" } else { "cosine" }.to_string());
    if h.schedule == gemma::Schedule::Cosine {
        put("--steps", h.steps.to_string());
    }
    put("--min-lr", h.min_lr.to_string());
    put("--weight-decay", h.weight_decay.to_string());
    put("--clip", h.clip.to_string());
    put("--b1", h.b1.to_string());
    put("--b2", h.b2.to_string());
    put("--eps", h.eps.to_string());
    if let Some(l) = &spec.lora {
        put("--lora-rank", l.rank.to_string());
        put("--lora-alpha", l.alpha.to_string());
        put("--lora-targets", l.targets.join(","));
        // The base is not in the checkpoint: it must be the same again.
        put(
            "--init",
            match &spec.init {
                Init::Hf(dir) => dir.display().to_string(),
                Init::Random => format!("random (seed {})", spec.seed),
            },
        );
    }
    s
}

impl Trainer {
    /// A fresh run: the weights from `spec.init`, AdamW's moments zero, step 0, placed over
    /// the mesh as `gemma::rules` splits them. Nothing is compiled until the first step.
    pub fn new(client: &Client, spec: TrainSpec, data: Dataset) -> Result<Trainer> {
        let n = spec.mesh.num_devices() as usize;
        Trainer::new_in(client, spec, data, Cluster::single(n))
    }

    /// [`Trainer::new`] as one process of a multi-host run: every process of `cluster` calls
    /// it with the same spec and data; each places only its own devices' shards, and the
    /// processes check that they compile the same program before the first step.
    pub fn new_in(client: &Client, spec: TrainSpec, data: Dataset, cluster: Cluster) -> Result<Trainer> {
        let setup = check(client, &spec, &data)?;
        if spec.lora.is_some() && cluster.is_multi() {
            bail!("LoRA runs on one host (any mesh of its devices); multi-host LoRA is not supported yet");
        }
        check_host_memory(&setup.cfg)?;
        let params = match &spec.init {
            Init::Random => gemma::init_params(&setup.cfg, spec.seed)
                .into_iter()
                .map(|(n, dims, v)| Ok((n, HostArray::from_vec(&dims, v)?)))
                .collect::<Result<Vec<_>>>()?,
            Init::Hf(dir) => {
                let ck = data::checkpoint::open(dir)?;
                ck.validate(&setup.cfg)?;
                ck.check_unchanged()?;
                data::checkpoint::params_f32(&ck, &setup.cfg)?
            }
        };
        let zeros = |params: &[(String, HostArray)]| -> Result<Vec<(String, HostArray)>> {
            params.iter().map(|(n, p)| Ok((n.clone(), HostArray::from_vec(p.dims(), vec![0f32; p.len()])?))).collect()
        };
        // LoRA: the weights are the frozen base; the adapters are what trains.
        let (trainable, base) = match &spec.lora {
            None => (params, None),
            Some(l) => {
                let adapters = match &spec.lora_init {
                    Some(dir) => data::peft::read_weights(dir, &setup.cfg, l)?,
                    None => l
                        .init(&setup.cfg, spec.seed)
                        .into_iter()
                        .map(|(n, dims, v)| Ok((n, HostArray::from_vec(&dims, v)?)))
                        .collect::<Result<Vec<_>>>()?,
                };
                (adapters, Some(params))
            }
        };
        let (m, v) = (zeros(&trainable)?, zeros(&trainable)?);
        let host = HostState { params: trainable, m, v, step: 0 };
        let settings = settings(&spec, &data);
        let mut trainer = Trainer::place(client, spec, setup, data, &host, None, settings, cluster)?;
        if let Some(base) = base {
            trainer.place_frozen(base)?;
        }
        Ok(trainer)
    }

    /// The base weights of a LoRA run for `spec`: from its `init`, as f32 host arrays.
    fn base_weights(spec: &TrainSpec, cfg: &Config) -> Result<Vec<(String, HostArray)>> {
        match &spec.init {
            Init::Random => gemma::init_params(cfg, spec.seed)
                .into_iter()
                .map(|(n, dims, v)| Ok((n, HostArray::from_vec(&dims, v)?)))
                .collect::<Result<Vec<_>>>(),
            Init::Hf(dir) => {
                let ck = data::checkpoint::open(dir)?;
                ck.validate(cfg)?;
                ck.check_unchanged()?;
                Ok(data::checkpoint::params_f32(&ck, cfg)?)
            }
        }
    }

    /// Places LoRA's frozen base weights (in the compute dtype), split as they would train.
    fn place_frozen(&mut self, base: Vec<(String, HostArray)>) -> Result<()> {
        let own = self.cluster.ownership().clone();
        let mut tree = Tree::new();
        for (name, array) in base {
            let array = if self.setup.base_dtype == DType::F32 { array } else { array.host_view().convert_float(self.setup.base_dtype)? };
            let sharding = self.setup.sharding(&format!("frozen.{name}"), array.dims().len());
            let placed = DeviceArray::place_with(&self.client, &own, &sharding, &array.ty(), |_, region| array.slice(region))?;
            tree.insert(name, placed)?;
        }
        self.frozen = Some(tree);
        Ok(())
    }

    /// Continues the newest complete checkpoint under `out/checkpoints` exactly: the same
    /// state, the same data position, the same schedule. Its batch and sequence length must be
    /// this run's, and its step at most `spec.hyper.steps` (at the last step the trainer is
    /// done at once: a run killed before it wrote its final files can still write them).
    pub fn resume(client: &Client, spec: TrainSpec, data: Dataset, out: &Path) -> Result<Trainer> {
        Trainer::resume_with(client, spec, data, out, &[])
    }

    /// [`Trainer::resume`], where the checkpoint recorded the settings of its run (every one
    /// that changes the result: data, shuffle, dtype, mesh, optimizer and schedule) and this
    /// run must have the same, except for the flags named in `overrides` (`lr` or `--lr`),
    /// whose changes [`Trainer::changed`] lists. A difference not overridden is an error naming
    /// the flag and both values.
    pub fn resume_with(client: &Client, spec: TrainSpec, data: Dataset, out: &Path, overrides: &[String]) -> Result<Trainer> {
        let n = spec.mesh.num_devices() as usize;
        Trainer::resume_in(client, spec, data, out, overrides, Cluster::single(n))
    }

    /// [`Trainer::resume_with`] as one process of a multi-host run: host 0 chooses the
    /// checkpoint (the newest complete one) and every host resumes that one, each reading
    /// only the parts its devices hold. The checkpoint may come from any number of hosts and
    /// any mesh.
    pub fn resume_in(
        client: &Client,
        spec: TrainSpec,
        data: Dataset,
        out: &Path,
        overrides: &[String],
        cluster: Cluster,
    ) -> Result<Trainer> {
        let setup = check(client, &spec, &data)?;
        check_host_memory(&setup.cfg)?;
        let now = settings(&spec, &data);
        let known: Vec<&str> = now.keys().map(String::as_str).chain(["--steps", "--seed"]).collect();
        let overrides: Vec<String> = overrides.iter().map(|o| if o.starts_with("--") { o.clone() } else { format!("--{o}") }).collect();
        if let Some(bad) = overrides.iter().find(|o| !known.contains(&o.as_str())) {
            let mut names: Vec<&str> = known.iter().map(|k| k.trim_start_matches('-')).collect();
            names.sort();
            names.dedup();
            bail!("--resume-override {}: not a setting a resume compares (those are: {})", bad.trim_start_matches('-'), names.join(", "));
        }
        // Host 0 chooses; the others take its choice (they do not list: cleaning up after
        // dead writers is host 0's).
        let chosen = if cluster.writes() { checkpoints::newest_dir(out)? } else { None };
        let name = chosen.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = String::from_utf8_lossy(&cluster.from_first("resume/checkpoint", name.as_bytes())?).into_owned();
        if name.is_empty() {
            bail!("--resume: there is no checkpoint in {}", out.join("checkpoints").display());
        }
        let path = out.join("checkpoints").join(&name);
        if !path.is_dir() {
            bail!(
                "host {} does not see {}, which host 0 resumes from: --out must be on storage every host shares",
                cluster.process(),
                path.display()
            );
        }
        let (host, meta) = checkpoints::load_trainable(&path, &setup.cfg, setup.lora.as_ref())?;
        if meta.batch != setup.batch || meta.seq != setup.seq {
            bail!(
                "--resume: {} was trained with --batch {} --seq {}, this run has --batch {} --seq {}",
                path.display(),
                meta.batch,
                meta.seq,
                setup.batch,
                setup.seq
            );
        }
        if host.step() > spec.hyper.steps {
            bail!("the checkpoint is at step {}, which is past --steps {}", host.step(), spec.hyper.steps);
        }
        let mut changed = Vec::new();
        let flags: std::collections::BTreeSet<&String> = meta.settings.keys().chain(now.keys()).collect();
        for flag in flags {
            let (old, new) = (meta.settings.get(flag), now.get(flag));
            // A setting that only one side records (--steps with a constant schedule, --seed
            // without shuffling, a checkpoint from before settings were recorded) is not
            // compared.
            let (Some(old), Some(new)) = (old, new) else { continue };
            if old == new {
                continue;
            }
            if !overrides.contains(flag) {
                let what = if flag == "--data" {
                    format!("data with sha256 {old}, this run's is {new}")
                } else {
                    format!("{flag} {old}, this run has {flag} {new}")
                };
                bail!(
                    "--resume: {} was trained with {what}; resuming would not continue that run. Pass --resume-override {} to continue with the new value",
                    path.display(),
                    flag.trim_start_matches('-')
                );
            }
            changed.push(Change { flag: flag.clone(), old: old.clone(), new: new.clone() });
        }
        let skipped: Vec<checkpoints::Found> = if cluster.writes() {
            checkpoints::list(&out.join("checkpoints"))?.into_iter().filter(|f| f.step > host.step() && !f.missing.is_empty()).collect()
        } else {
            Vec::new()
        };
        if spec.lora.is_some() && cluster.is_multi() {
            bail!("LoRA runs on one host (any mesh of its devices); multi-host LoRA is not supported yet");
        }
        let base = match spec.lora {
            Some(_) => Some(Trainer::base_weights(&spec, &setup.cfg)?),
            None => None,
        };
        let mut trainer = Trainer::place(client, spec, setup, data, &host, Some(path), now, cluster)?;
        if let Some(base) = base {
            trainer.place_frozen(base)?;
        }
        trainer.skipped = skipped;
        trainer.changed = changed;
        Ok(trainer)
    }

    /// Places `host` for a run of `spec` on `data`, whose result-changing settings are
    /// `settings` (computed once by the caller: the data's fingerprint hashes its tokens).
    #[allow(clippy::too_many_arguments)]
    fn place(
        client: &Client,
        spec: TrainSpec,
        setup: Setup,
        data: Dataset,
        host: &dyn StateSource,
        from: Option<PathBuf>,
        settings: BTreeMap<String, String>,
        cluster: Cluster,
    ) -> Result<Trainer> {
        let own = cluster.ownership().clone();
        let stacking = gemma::stack::Stacking::of(&setup.cfg);
        // Each device's region is read from the source: a host reads only what its devices hold.
        // A stacked tensor's region [g0..g1, rest] is its layers' regions `rest`, in order.
        let placed = |part: &str, key: &str| -> Result<Tree<DeviceArray>> {
            let mut tree = Tree::new();
            for (name, dims) in setup.trainable() {
                let sharding = setup.sharding(&format!("state.{part}.{name}"), dims.len());
                let ty = graph::TensorType::new(DType::F32, &dims);
                let array = DeviceArray::place_with(client, &own, &sharding, &ty, |_, region| {
                    let read = |name: &str, region: &[std::ops::Range<i64>]| {
                        host.region(key, name, region).map_err(|e| runtime::Error::Argument(e.to_string()))
                    };
                    if stacking.parse(&name).is_none() {
                        return read(&name, region);
                    }
                    let mut bytes = Vec::new();
                    for g in region[0].clone() {
                        let layer = usize::try_from(g).ok().and_then(|g| stacking.layer_name(&name, g));
                        let layer = layer.ok_or_else(|| runtime::Error::Argument(format!("{name} has no entry {g}")))?;
                        bytes.extend_from_slice(read(&layer, &region[1..])?.bytes());
                    }
                    let extent: Vec<i64> = region.iter().map(|r| r.end - r.start).collect();
                    HostArray::from_bytes(DType::F32, &extent, bytes)
                })?;
                tree.insert(name.clone(), array)?;
            }
            Ok(tree)
        };
        let step = HostArray::from_vec(
            &[],
            vec![i32::try_from(host.step()).map_err(|_| crate::Error::Invalid(format!("step {} is too large", host.step())))?],
        )?;
        let state = TrainState {
            params: placed("params", "params")?,
            opt: AdamState { m: placed("opt.m", "m")?, v: placed("opt.v", "v")? },
            step: DeviceArray::place_with(client, &own, &setup.sharding("state.step", 0), &step.ty(), |_, _| Ok(step.clone()))?,
        };
        let jit = train_step_jit(Some(client), &setup, &spec.hyper);
        let unstack = setup.stacks().then(|| unstack_jit(client, &setup));
        if cluster.is_multi() {
            // Every host must compile the same program over the same data and settings.
            let lowered = jit.lower(&setup.train_args())?;
            let mut bytes = lowered.stablehlo.into_bytes();
            bytes.extend(lowered.options.encode());
            cluster.agree("program (sha256 of the lowered train step and its compile options)", &data::files::sha256_hex(&bytes))?;
            let json = serde_json::to_string(&settings).expect("internal: a map of strings serializes");
            cluster.agree(
                "run settings (sha256 of the flags that change the result, data included)",
                &data::files::sha256_hex(json.as_bytes()),
            )?;
        }
        Ok(Trainer {
            client: client.clone(),
            setup,
            hp: spec.hyper,
            data,
            seed: spec.seed,
            shuffle: spec.shuffle,
            state: Some(state),
            step: host.step(),
            jit,
            stop: StopHandle::default(),
            resumed_from: from,
            skipped: Vec::new(),
            settings,
            changed: Vec::new(),
            cluster,
            frozen: None,
            unstack,
        })
    }

    /// This process's place in the run.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Ends the run: with several hosts, waits for every host at a last barrier and leaves
    /// the coordination service cleanly (host 0 serves until every host has left).
    pub fn close(self) -> Result<()> {
        self.cluster.barrier("end")?;
        self.cluster.close()
    }

    /// The client the run executes on.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The model, mesh, batch and sequence length.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The optimizer settings.
    pub fn hyper(&self) -> &Hyper {
        &self.hp
    }

    /// The training data.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// Updates applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Whether all `hyper.steps` updates are applied.
    pub fn is_done(&self) -> bool {
        self.step >= self.hp.steps
    }

    /// The checkpoint this run resumed from, if any.
    pub fn resumed_from(&self) -> Option<&Path> {
        self.resumed_from.as_deref()
    }

    /// The settings a resume changed from the checkpoint's run (each allowed by an override).
    pub fn changed(&self) -> &[Change] {
        &self.changed
    }

    /// Checkpoints newer than the one resumed from that lack files, so were skipped.
    pub fn skipped_checkpoints(&self) -> &[checkpoints::Found] {
        &self.skipped
    }

    /// The state on the devices.
    pub fn state(&self) -> Result<&TrainState<DeviceArray>> {
        self.state.as_ref().ok_or_else(|| crate::Error::Invalid("the train state was lost by an earlier failed step".into()))
    }

    /// The state, consuming the trainer.
    pub fn into_state(self) -> Result<TrainState<DeviceArray>> {
        self.state.ok_or_else(|| crate::Error::Invalid("the train state was lost by an earlier failed step".into()))
    }

    /// A handle that ends [`Trainer::run`] after the current step.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Time spent tracing, lowering and compiling (or loading) the step.
    pub fn compile_time(&self) -> Duration {
        self.jit.stats().compile_time
    }

    /// Time spent executing the step on the devices so far.
    pub fn device_time(&self) -> Duration {
        self.jit.execute_time()
    }

    /// One update on the next batch: the state is donated to the step and replaced by the
    /// new one; the metrics stay on the devices until read.
    pub fn step(&mut self) -> Result<StepMetrics> {
        if self.is_done() {
            bail!("the run is complete: {} of {} steps applied", self.step, self.hp.steps);
        }
        self.cluster.check()?;
        let (tokens, weights) = self.place_batch()?;
        let state = self.state.take().ok_or_else(|| crate::Error::Invalid("the train state was lost by an earlier failed step".into()))?;
        let mut args: Tree<Arg> = Tree::new();
        for (path, array) in state.flatten()?.into_leaves() {
            args.insert(path, Arg::Donate(array))?;
        }
        args.insert("batch.tokens", Arg::Donate(tokens))?;
        if let Some(frozen) = &self.frozen {
            for (name, a) in frozen.iter() {
                args.insert(format!("frozen.{name}"), Arg::Keep(a))?;
            }
        }
        if let Some(w) = weights {
            args.insert("batch.weights", Arg::Donate(w))?;
        }
        let mut out = self.jit.call(args)?;
        let metrics = out.take_subtree("metrics");
        self.state = Some(TrainState::unflatten(out)?);
        self.step += 1;
        Ok(StepMetrics { step: self.step, metrics, client: self.client.clone() })
    }

    /// The batch of the current step on the devices. Alone: read whole and placed. One host of
    /// several: only the rows its own devices hold are read (`hosts::host_rows`) and placed;
    /// stand-in devices (CPU tests of the multi-host path) get the other hosts' rows from them
    /// through the coordination service.
    fn place_batch(&self) -> Result<(DeviceArray, Option<DeviceArray>)> {
        let shuffle = self.shuffle.then_some(self.seed);
        let sharding = self.setup.sharding("batch.tokens", 2);
        if self.data.has_weights() {
            self.check_weighted(shuffle)?;
        }
        if !self.cluster.is_multi() {
            let tokens = self.data.batch(self.step, self.setup.batch, shuffle)?;
            let tokens = DeviceArray::place(&self.client, &tokens, &sharding)?;
            let weights = match self.data.has_weights() {
                true => Some(DeviceArray::place(&self.client, &self.data.batch_weights(self.step, self.setup.batch, shuffle)?, &sharding)?),
                false => None,
            };
            return Ok((tokens, weights));
        }
        let own = self.cluster.ownership();
        let (batch, seq) = (self.setup.batch as i64, self.setup.seq as i64);
        // The rows each host supplies, computed once for both arrays.
        let rows = (0..own.processes())
            .map(|p| crate::hosts::host_rows(batch, seq, &self.setup.mesh, &sharding.spec, own.owners(), p))
            .collect::<Result<Vec<_>, _>>()?;
        let mine = &rows[own.process()];
        let tokens = self.place_rows("tokens", self.data.batch_part(self.step, self.setup.batch, shuffle, mine)?, &rows)?;
        let weights = match self.data.has_weights() {
            true => Some(self.place_rows("weights", self.data.weights_part(self.step, self.setup.batch, shuffle, mine)?, &rows)?),
            false => None,
        };
        Ok((tokens, weights))
    }

    /// The loss of a step is sum(w CE) / sum(w): a batch whose targets all weigh 0 has none.
    fn check_weighted(&self, shuffle: Option<u64>) -> Result<()> {
        let w = self.data.batch_weights(self.step, self.setup.batch, shuffle)?.to_vec::<f32>()?;
        // The prediction at t counts with the weight of token t+1: position 0 is never a target.
        let targets: f64 = w.chunks(self.setup.seq).map(|row| row[1..].iter().map(|&x| f64::from(x)).sum::<f64>()).sum();
        if targets == 0.0 {
            let rows = self.data.batch_rows(self.step, self.setup.batch, shuffle);
            bail!(
                "the batch of step {} (rows {}) has no token in an assistant turn to train on; check the data",
                self.step + 1,
                rows.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    }

    /// Places one [batch, seq] array of the step from this host's rows (`local`; host p
    /// supplies the rows `rows[p]`), the stand-ins' rows coming from the other hosts.
    fn place_rows(&self, what: &str, local: HostArray, rows: &[Vec<std::ops::Range<i64>>]) -> Result<DeviceArray> {
        let own = self.cluster.ownership();
        let sharding = self.setup.sharding("batch.tokens", 2);
        let (batch, seq) = (self.setup.batch as i64, self.setup.seq as i64);
        let mine = &rows[own.process()];
        let ty = graph::TensorType::new(local.dtype(), &[batch, seq]);
        // The other hosts' rows, for the stand-ins: every host publishes its own.
        let mut others: Vec<HostArray> = Vec::new();
        if own.has_stand_ins() {
            let all = self.cluster.all_gather(&format!("batch/{}/{what}", self.step), local.bytes())?;
            // Every host has published this step's rows, so all have read the previous step's.
            if self.step > 0 {
                self.cluster.forget(&format!("batch/{}/{what}/", self.step - 1))?;
            }
            for (p, bytes) in all.into_iter().enumerate() {
                let n: i64 = rows[p].iter().map(|r| r.end - r.start).sum();
                others.push(HostArray::from_bytes(local.dtype(), &[n, seq], bytes)?);
            }
        }
        let array = DeviceArray::from_process_local_data(&self.client, own, &sharding, &ty, &local, mine, |d, region| {
            let p = own.owners()[d];
            let Some(data) = others.get(p) else {
                return Err(runtime::Error::Argument(format!("no rows for device {d}, which is not this host's")));
            };
            runtime::rows_region(data, &rows[p], region)
                .unwrap_or_else(|| Err(runtime::Error::Argument(format!("host {} does not hold rows {:?}", p, region[0]))))
        })?;
        Ok(array)
    }

    /// Steps until all `hyper.steps` updates are applied or the stop handle is set, calling
    /// `after_step` after each step (the caller logs, saves, or sets the stop handle there).
    pub fn run(&mut self, mut after_step: impl FnMut(&mut Trainer, &StepMetrics) -> Result<()>) -> Result<RunEnd> {
        while !self.is_done() {
            let metrics = self.step()?;
            after_step(self, &metrics)?;
            if self.stop.is_stopped() {
                return Ok(RunEnd::Stopped { step: self.step });
            }
        }
        Ok(RunEnd::Finished)
    }

    /// What a checkpoint records besides the tensors.
    pub fn meta(&self) -> Meta {
        Meta {
            seed: self.seed,
            batch: self.setup.batch,
            seq: self.setup.seq,
            shuffle: self.shuffle,
            rows_consumed: self.step * self.setup.batch as u64,
            mesh: self.setup.mesh.to_string(),
            dtype: if self.hp.compute == DType::Bf16 { "bf16" } else { "f32" }.to_string(),
            settings: self.settings.clone(),
        }
    }

    /// Writes the checkpoint `out/checkpoints/step_<n>/` (atomically) and keeps the newest
    /// `keep`; returns its directory.
    /// With several hosts every host must call it at the same step: each writes the pieces
    /// its devices hold and host 0 commits the checkpoint (see [`checkpoints::save_sharded`]).
    pub fn save(&self, out: &Path, keep: usize) -> Result<PathBuf> {
        let copies = self.layer_copies(&["params", "opt.m", "opt.v"])?;
        let flat = self.layer_view(&copies)?;
        if self.cluster.is_multi() {
            return checkpoints::save_sharded(out, &self.setup.cfg, &flat, self.step, &self.meta(), keep, &self.cluster);
        }
        checkpoints::save_trainable(out, &self.setup.cfg, self.setup.lora.as_ref(), &flat, self.step, &self.meta(), keep)
    }

    /// Writes the weights as an HF checkpoint: `out/model.safetensors` (f32) and
    /// `out/config.json`, each atomically.
    /// With several hosts every host must call it: each tensor is gathered in turn (a
    /// program that replicates it), host 0 writes it and drops it before the next, so no
    /// host holds more than one whole tensor; the other hosts write nothing.
    pub fn export(&self, out: &Path) -> Result<()> {
        let copies = self.layer_copies(&["params"])?;
        let flat = self.layer_view(&copies)?;
        if let Some(l) = &self.setup.lora {
            // The adapters, in PEFT's format.
            let shapes = l.shapes(&self.setup.cfg);
            let entries = checkpoints::entries_of(&shapes, "params", "");
            let base = self.base_name();
            return Ok(data::peft::write(out, l, base.as_deref(), &shapes, |i| {
                flat.leaf(&entries[i].1)
                    .map_err(|e| gemma::Error::Checkpoint { path: out.display().to_string(), message: e.to_string() })?
                    .fetch()
                    .map(|h| h.bytes().to_vec())
                    .map_err(|e| gemma::Error::Checkpoint { path: out.display().to_string(), message: e.to_string() })
            })?);
        }
        let params = checkpoints::entries(&self.setup.cfg, "params", "");
        if self.cluster.is_multi() {
            if self.cluster.writes() {
                checkpoints::write_gathered(&out.join("model.safetensors"), &self.client, &flat, &params)?;
                gemma::write_atomic(&out.join("config.json"), self.setup.cfg.to_hf_json().as_bytes())
                    .with_context(|| format!("cannot write {}", out.join("config.json").display()))?;
            } else {
                for (_, path) in &params {
                    flat.leaf(path)?.gather(&self.client)?;
                }
            }
            self.cluster.barrier("export")?;
            return Ok(());
        }
        checkpoints::write_from_devices(&out.join("model.safetensors"), &flat, &params)?;
        gemma::write_atomic(&out.join("config.json"), self.setup.cfg.to_hf_json().as_bytes())
            .with_context(|| format!("cannot write {}", out.join("config.json").display()))?;
        Ok(())
    }

    /// The LoRA base's path, as adapter_config.json's `base_model_name_or_path`.
    fn base_name(&self) -> Option<String> {
        self.settings.get("--init").filter(|i| !i.starts_with("random")).cloned()
    }

    /// LoRA: writes `out/model.safetensors` + `out/config.json` with every adapter merged into
    /// its weight, W + (alpha / r) B A, in the base's dtype (computed in f64, one tensor at a
    /// time).
    pub fn export_merged(&self, out: &Path) -> Result<()> {
        let (Some(l), Some(frozen)) = (&self.setup.lora, &self.frozen) else {
            bail!("--merge applies to LoRA runs (--lora-rank or --lora-init)");
        };
        let state = self.state()?;
        let shapes = gemma::param_shapes(&self.setup.cfg);
        let dtype = self.setup.base_dtype;
        let metas: Vec<gemma::TensorMeta> =
            shapes.iter().map(|(n, d)| gemma::TensorMeta { name: n.clone(), dtype, shape: d.clone() }).collect();
        let path = out.join("model.safetensors");
        let fail = |m: String| gemma::Error::Checkpoint { path: path.display().to_string(), message: m };
        gemma::save_safetensors_streaming(&path, &metas, |i| {
            let (name, dims) = &shapes[i];
            let w = frozen.leaf(name).map_err(|e| fail(e.to_string()))?.fetch().map_err(|e| fail(e.to_string()))?;
            let Some((a_name, b_name)) = Some((name.replace(".weight", ".lora_A.weight"), name.replace(".weight", ".lora_B.weight")))
                .filter(|(a, _)| l.shapes(&self.setup.cfg).iter().any(|(n, _)| n == a))
            else {
                return Ok(w.bytes().to_vec());
            };
            let get = |n: &str| -> std::result::Result<Vec<f64>, gemma::Error> {
                Ok(state.params.leaf(n).map_err(|e| fail(e.to_string()))?.fetch().map_err(|e| fail(e.to_string()))?.to_f64_vec())
            };
            let (a, b, mut merged) = (get(&a_name)?, get(&b_name)?, w.to_f64_vec());
            let (rows, cols, r) = (dims[0] as usize, dims[1] as usize, l.rank as usize);
            for o in 0..rows {
                for c in 0..cols {
                    let ba: f64 = (0..r).map(|k| b[o * r + k] * a[k * cols + c]).sum();
                    merged[o * cols + c] += l.scale() * ba;
                }
            }
            let m = HostArray::from_vec(dims, merged).map_err(|e| fail(e.to_string()))?;
            let m = m.host_view().convert_float(dtype).map_err(|e| fail(e.to_string()))?;
            Ok(m.bytes().to_vec())
        })?;
        gemma::write_atomic(&out.join("config.json"), self.setup.cfg.to_hf_json().as_bytes())
            .with_context(|| format!("cannot write {}", out.join("config.json").display()))?;
        Ok(())
    }

    /// `n` tokens sampled at temperature 0.8 from the model, after the first quarter window
    /// of the data's first row: "prompt|continuation", decoded with `tokenizer`.
    pub fn sample(&self, tokenizer: &Tokenizer, n: usize, seed: u64) -> Result<String> {
        let (prompt, new) = self.sample_ids(n, seed)?;
        Ok(format!("{}|{}", tokenizer.decode(&prompt)?, tokenizer.decode(&new)?))
    }

    /// What [`Trainer::sample`] draws, as token ids: (prompt, continuation).
    pub fn sample_ids(&self, n: usize, seed: u64) -> Result<(Vec<u32>, Vec<u32>)> {
        if self.setup.lora.is_some() {
            bail!("samples of LoRA runs: use `generate --adapter OUT` on the adapter");
        }
        if self.cluster.is_multi() {
            bail!("samples are drawn in single-host runs only (the sampler reads the weights whole); use `generate` on the exported model");
        }
        sample::generate(&self.client, &self.setup, &self.state()?.params, &self.data, n, seed)
    }

    /// The state as a tree of the step's paths, borrowing the device arrays.
    fn flat_view(&self) -> Result<Tree<&DeviceArray>> {
        fn view(t: &Tree<DeviceArray>) -> Tree<&DeviceArray> {
            Tree::from_leaves(t.iter()).expect("internal: the same paths")
        }
        let s = self.state()?;
        TrainState { params: view(&s.params), opt: AdamState { m: view(&s.opt.m), v: view(&s.opt.v) }, step: &s.step }.flatten()
    }

    /// Copies of the stacked tensors of the state parts `parts` (`params`, `opt.m`, `opt.v`)
    /// as their layers, on the devices, under the step's paths with checkpoint names
    /// (`state.params.model.layers.3.mlp.up_proj.weight`); empty for a per-layer state.
    fn layer_copies(&self, parts: &[&str]) -> Result<Tree<DeviceArray>> {
        let Some(unstack) = &self.unstack else { return Ok(Tree::new()) };
        let stacking = gemma::stack::Stacking::of(&self.setup.cfg);
        let mut args: Tree<Arg> = Tree::new();
        for (path, a) in self.flat_view()?.into_leaves() {
            let name = path.split_at(path.find("model.").unwrap_or(path.len())).1;
            if stacking.parse(name).is_some()
                && parts.iter().any(|p| path.strip_prefix("state.").is_some_and(|r| r.starts_with(&format!("{p}."))))
            {
                args.insert(path, Arg::Keep(a))?;
            }
        }
        if args.is_empty() {
            return Ok(Tree::new());
        }
        Ok(unstack.call(args)?)
    }

    /// The state under the step's paths with checkpoint names: per-layer tensors as they are,
    /// stacked ones from `copies` (see `layer_copies`).
    fn layer_view<'a>(&'a self, copies: &'a Tree<DeviceArray>) -> Result<Tree<&'a DeviceArray>> {
        let stacking = gemma::stack::Stacking::of(&self.setup.cfg);
        let mut out: Tree<&DeviceArray> = Tree::new();
        for (path, a) in self.flat_view()?.into_leaves() {
            let name = path.split_at(path.find("model.").unwrap_or(path.len())).1;
            if stacking.parse(name).is_none() {
                out.insert(path, a)?;
            }
        }
        for (path, a) in copies.iter() {
            out.insert(path.to_string(), a)?;
        }
        Ok(out)
    }

    /// The whole state fetched to the host under the step's paths with checkpoint names
    /// (`state.params.<name>`, `state.opt.m.<name>`, `state.opt.v.<name>`, `state.step`),
    /// whether the devices hold it per layer or stacked. For checks and small models: it
    /// holds every tensor on the host at once.
    pub fn fetch_state(&self) -> Result<Tree<HostArray>> {
        let copies = self.layer_copies(&["params", "opt.m", "opt.v"])?;
        let mut out = Tree::new();
        for (path, a) in self.layer_view(&copies)?.into_leaves() {
            out.insert(path, a.fetch()?)?;
        }
        Ok(out)
    }
}

/// The program that copies stacked state tensors (`state.<part>.model.stacked.<j>.<name>`)
/// out as their layers (`state.<part>.model.layers.<i>.<name>`), each split as the rules
/// split it; the stacked tensors are kept.
fn unstack_jit(client: &Client, setup: &Setup) -> Jit<'static, StepFn> {
    let cfg = setup.cfg.clone();
    let f: StepFn = Box::new(move |a: &Tree<graph::Tensor>| {
        let stacking = gemma::stack::Stacking::of(&cfg);
        let mut out = Tree::new();
        for (path, t) in a.iter() {
            let (prefix, name) = path.split_at(path.find("model.").unwrap_or(path.len()));
            let dims = t.dims();
            for g in 0..stacking.groups {
                let layer = stacking.layer_name(name, g).ok_or_else(|| graph::Error::Invalid(format!("{path} is not a stacked tensor")))?;
                let (mut start, mut limit) = (vec![0; dims.len()], dims.clone());
                start[0] = g as i64;
                limit[0] = g as i64 + 1;
                out.insert(format!("{prefix}{layer}"), t.slice(&start, &limit, &vec![1; dims.len()]).reshape(&dims[1..]))?;
            }
        }
        Ok(out)
    });
    let rules = setup.clone();
    Jit::with_client("unstack_state", Some(client), f).with_mesh(setup.mesh.clone()).with_rule(move |path, _| rules.spec(path))
}

/// The setup of `spec` on `data`, checked against the client before anything is placed.
fn check(client: &Client, spec: &TrainSpec, data: &Dataset) -> Result<Setup> {
    if let Err(e) = spec.hyper.check() {
        bail!("{e}");
    }
    gemma::rules::check_batch(spec.batch as i64, &spec.mesh)?;
    // Each step's batch is built on the host: bound it before anything is allocated.
    let tokens = (spec.batch as u64).checked_mul(data.seq() as u64);
    if tokens.is_none_or(|t| t > 1 << 31) {
        bail!("--batch {} x --seq {}: more than 2^31 tokens per step", spec.batch, data.seq());
    }
    gemma::rules::param_specs(&spec.config, &spec.mesh, spec.fsdp)?; // every split must divide its dimension
    let devices = client.devices()?.len();
    if (spec.mesh.num_devices() as usize) > devices {
        bail!("the mesh {} needs {} devices, the client has {devices}", spec.mesh, spec.mesh.num_devices());
    }
    Ok(Setup {
        cfg: spec.config.clone(),
        mesh: spec.mesh.clone(),
        fsdp: spec.fsdp,
        batch: spec.batch,
        seq: data.seq(),
        weights: data.has_weights(),
        lora: spec.lora.clone(),
        base_dtype: spec.hyper.compute,
        stacked: spec.hyper.scan_layers,
    })
}

/// The state is built on the host before it is placed (f32 weights and both AdamW moments):
/// refuse, before allocating, a model whose state does not fit in the memory available now.
fn check_host_memory(cfg: &Config) -> Result<()> {
    let bytes = 3 * 4 * gemma::rules::param_count(cfg) as u128;
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?.to_string();
        Some(line.split_whitespace().nth(1)?.parse::<u128>().ok()? * 1024)
    });
    if let Some(avail) = available.filter(|&avail| bytes > avail) {
        bail!(
            "the training state (f32 weights, AdamW m and v: {:.1} GiB) does not fit in the {:.1} GiB of memory available; \
             see `gemma-xla plan` for what each device needs",
            bytes as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}
