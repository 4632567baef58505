//! Training checkpoints: `OUT/checkpoints/step_<n>/` holds `config.json` and
//! `model.safetensors` (HF layout, f32, loadable by transformers), `optimizer.safetensors`
//! (`m.<name>`, `v.<name>`) and `trainer_state.json` (step, seed, data position, settings).
//! A checkpoint is written into a hidden temporary directory, every file fsynced, then
//! renamed into place, so a crash or a full disk never leaves a half-written `step_<n>`; the
//! previous checkpoints stay. Only the newest `keep` checkpoints are kept.
use crate::{bail, Context, Error, Result};
use gemma::{Config, TensorMeta};
use graph::{DType, Tree};
use runtime::{DeviceArray, HostArray};
use std::borrow::Borrow;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The training state on the host, tensors in checkpoint order.
pub struct HostState {
    /// The f32 master weights, by checkpoint name.
    pub params: Vec<(String, HostArray)>,
    /// AdamW's first moments, by checkpoint name.
    pub m: Vec<(String, HostArray)>,
    /// AdamW's second moments, by checkpoint name.
    pub v: Vec<(String, HostArray)>,
    /// Updates applied.
    pub step: u64,
}

/// A training state that placement reads region by region (each device's part), so that
/// no host needs more of a saved state than its devices hold.
pub trait StateSource {
    /// The box `region` (one range per dimension) of the f32 tensor `name` of `part`
    /// (`params`, `m` or `v`).
    fn region(&self, part: &str, name: &str, region: &[Range<i64>]) -> Result<HostArray>;
    /// Updates applied.
    fn step(&self) -> u64;
}

impl StateSource for HostState {
    fn region(&self, part: &str, name: &str, region: &[Range<i64>]) -> Result<HostArray> {
        let list = match part {
            "params" => &self.params,
            "m" => &self.m,
            "v" => &self.v,
            _ => bail!("no state part {part:?}"),
        };
        let Some((_, a)) = list.iter().find(|(n, _)| n == name) else { bail!("the state has no {part}.{name}") };
        Ok(a.slice(region)?)
    }

    fn step(&self) -> u64 {
        self.step
    }
}

/// A checkpoint opened for resuming: whole tensors (written by one host) or pieces written by
/// several hosts ([`crate::sharded`]).
pub enum Saved {
    /// `model.safetensors` + `optimizer.safetensors`, read whole.
    Whole(HostState),
    /// `shards.json` and the hosts' shard files, read region by region.
    Sharded(crate::sharded::ShardedState),
}

impl StateSource for Saved {
    fn region(&self, part: &str, name: &str, region: &[Range<i64>]) -> Result<HostArray> {
        match self {
            Saved::Whole(h) => h.region(part, name, region),
            Saved::Sharded(s) => s.region(part, name, region),
        }
    }

    fn step(&self) -> u64 {
        match self {
            Saved::Whole(h) => h.step,
            Saved::Sharded(s) => s.step(),
        }
    }
}

/// What else a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// The seed of initialisation and shuffling.
    pub seed: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Whether rows are visited in a seeded random order per epoch.
    pub shuffle: bool,
    /// Dataset rows consumed so far (step * batch): the data position.
    pub rows_consumed: u64,
    /// The mesh trained on (`data=2,model=2`).
    pub mesh: String,
    /// The compute dtype (`f32`, `bf16`).
    pub dtype: String,
    /// Every setting that changes the result, by its `train` flag (`--lr` -> `0.003`,
    /// `--data` -> the data's sha256, ...): what a resume compares. Empty in checkpoints of
    /// versions that did not record them.
    pub settings: std::collections::BTreeMap<String, String>,
}

/// Writes one safetensors file from device arrays, fetching one tensor at a time (host
/// memory stays near one tensor). `entries`: (name in the file, path in the state tree).
pub fn write_from_devices<A: Borrow<DeviceArray>>(path: &Path, state: &Tree<A>, entries: &[(String, String)]) -> Result<()> {
    let metas = entries
        .iter()
        .map(|(name, leaf)| Ok(TensorMeta { name: name.clone(), dtype: DType::F32, shape: state.leaf(leaf)?.borrow().ty().dims.clone() }))
        .collect::<Result<Vec<_>>>()?;
    gemma::save_safetensors_streaming(path, &metas, |i| {
        let host = state
            .leaf(&entries[i].1)
            .map_err(|e| gemma::Error::Checkpoint { path: path.display().to_string(), message: e.to_string() })?
            .borrow()
            .fetch();
        host.map(|h| h.bytes().to_vec()).map_err(|e| gemma::Error::Checkpoint {
            path: path.display().to_string(),
            message: format!("cannot fetch {}: {e}", entries[i].1),
        })
    })?;
    Ok(())
}

/// [`write_from_devices`] for arrays that may not be fully addressable: each tensor is
/// gathered (see `DeviceArray::gather`) when its turn comes.
pub fn write_gathered<A: Borrow<DeviceArray>>(
    path: &Path,
    client: &runtime::Client,
    state: &Tree<A>,
    entries: &[(String, String)],
) -> Result<()> {
    let metas = entries
        .iter()
        .map(|(name, leaf)| Ok(TensorMeta { name: name.clone(), dtype: DType::F32, shape: state.leaf(leaf)?.borrow().ty().dims.clone() }))
        .collect::<Result<Vec<_>>>()?;
    gemma::save_safetensors_streaming(path, &metas, |i| {
        let leaf =
            state.leaf(&entries[i].1).map_err(|e| gemma::Error::Checkpoint { path: path.display().to_string(), message: e.to_string() })?;
        leaf.borrow().gather(client).map(|h| h.bytes().to_vec()).map_err(|e| gemma::Error::Checkpoint {
            path: path.display().to_string(),
            message: format!("cannot gather {}: {e}", entries[i].1),
        })
    })?;
    Ok(())
}

/// (name, state path) of the parameters, with `prefix` before the name in the file.
pub fn entries(cfg: &Config, part: &str, prefix: &str) -> Vec<(String, String)> {
    entries_of(&gemma::param_shapes(cfg), part, prefix)
}

/// (name, state path) of the tensors `shapes` names (the trainable ones: weights, or LoRA
/// adapters), with `prefix` before the name in the file.
pub fn entries_of(shapes: &[(String, Vec<i64>)], part: &str, prefix: &str) -> Vec<(String, String)> {
    shapes.iter().map(|(n, _)| (format!("{prefix}{n}"), format!("state.{part}.{n}"))).collect()
}

/// The files of a LoRA run's checkpoint: the adapters in PEFT's format (loadable with
/// `peft.PeftModel.from_pretrained` on the base) and their optimizer state; the base is not in it.
pub const LORA_FILES: [&str; 5] =
    ["config.json", "adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json"];

/// [`save`] for a run whose trainable tensors are `lora`'s adapters (None: the weights).
pub fn save_trainable<A: Borrow<DeviceArray>>(
    out: &Path,
    cfg: &Config,
    lora: Option<&gemma::lora::Lora>,
    state: &Tree<A>,
    step: u64,
    meta: &Meta,
    keep: usize,
) -> Result<PathBuf> {
    let Some(l) = lora else { return save(out, cfg, state, step, meta, keep) };
    let dir = out.join("checkpoints");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".step_{step}.tmp-{}", std::process::id()));
    let shapes = l.shapes(cfg);
    commit(&dir, &tmp, step, keep, |tmp| {
        std::fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        write_from_devices(&tmp.join("adapter_model.safetensors"), state, &entries_of(&shapes, "params", data::peft::PREFIX))?;
        let base = meta.settings.get("--init").map(String::as_str);
        gemma::write_atomic(&tmp.join("adapter_config.json"), data::peft::config_json(l, base).as_bytes())?;
        gemma::write_atomic(&tmp.join("config.json"), cfg.to_hf_json().as_bytes())?;
        let mut opt = entries_of(&shapes, "opt.m", "m.");
        opt.extend(entries_of(&shapes, "opt.v", "v."));
        write_from_devices(&tmp.join("optimizer.safetensors"), state, &opt)?;
        write_state_json(tmp, step, meta, 1)
    })
}

/// [`load`] for a run whose trainable tensors are `lora`'s adapters (None: the weights). A
/// LoRA checkpoint of other adapter settings is an error naming both.
pub fn load_trainable(dir: &Path, cfg: &Config, lora: Option<&gemma::lora::Lora>) -> Result<(Saved, Meta)> {
    let is_lora = dir.join("adapter_config.json").is_file();
    match (lora, is_lora) {
        (None, false) => load(dir, cfg),
        (None, true) => {
            bail!("{} holds LoRA adapters; resume it with the same --lora-rank, --lora-alpha and --lora-targets", dir.display())
        }
        (Some(_), false) => bail!("{} holds a full fine-tuning's weights, not LoRA adapters", dir.display()),
        (Some(l), true) => {
            let saved = data::peft::read_config(dir, cfg)?;
            if &saved != l {
                bail!(
                    "{}: the checkpoint's adapters are rank {} alpha {} on {}, this run's rank {} alpha {} on {}",
                    dir.display(),
                    saved.rank,
                    saved.alpha,
                    saved.targets.join(","),
                    l.rank,
                    l.alpha,
                    l.targets.join(",")
                );
            }
            let params = data::peft::read_weights(dir, cfg, l)?;
            let (m, v) = read_moments(&dir.join("optimizer.safetensors"), &l.shapes(cfg))?;
            let (meta, step) = read_meta(dir)?;
            Ok((Saved::Whole(HostState { params, m, v, step }), meta))
        }
    }
}

/// Writes `OUT/checkpoints/step_<step>/` from the state on the devices and keeps only the
/// newest `keep` checkpoints.
pub fn save<A: Borrow<DeviceArray>>(out: &Path, cfg: &Config, state: &Tree<A>, step: u64, meta: &Meta, keep: usize) -> Result<PathBuf> {
    let dir = out.join("checkpoints");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".step_{step}.tmp-{}", std::process::id()));
    commit(&dir, &tmp, step, keep, |tmp| write_dir(tmp, cfg, state, step, meta))
}

/// Fills the temporary directory `tmp` with `fill`, syncs it and renames it to
/// `dir/step_<step>` (replacing one that is there), then keeps the newest `keep`. On failure
/// the temporary directory is removed and the error says the previous checkpoint is intact.
fn commit(dir: &Path, tmp: &Path, step: u64, keep: usize, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let final_dir = dir.join(format!("step_{step}"));
    let previous = newest(dir)?.map(|(_, p)| p);
    let written = fill(tmp).and_then(|()| {
        sync_dir(tmp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).with_context(|| format!("cannot replace {}", final_dir.display()))?;
        }
        std::fs::rename(tmp, &final_dir).with_context(|| format!("cannot rename {} to {}", tmp.display(), final_dir.display()))?;
        sync_dir(dir)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(tmp);
        let kept =
            previous.map_or("there is no earlier checkpoint".to_string(), |p| format!("the previous checkpoint {} is intact", p.display()));
        return Err(e.context(format!("cannot save checkpoint {} ({kept})", final_dir.display())));
    }
    prune(dir, keep)?;
    Ok(final_dir)
}

/// [`save`] by every host of a multi-host run together: host 0 makes the temporary
/// directory, every host writes the pieces its devices hold, and after a barrier host 0 writes
/// the index, the config and the trainer state and commits the directory by rename (then
/// prunes); a last barrier lets every host know the checkpoint is committed. A host that fails
/// on the way fails the others' barrier, and the previous checkpoint stays.
pub fn save_sharded(
    out: &Path,
    cfg: &Config,
    state: &Tree<&DeviceArray>,
    step: u64,
    meta: &Meta,
    keep: usize,
    cluster: &crate::cluster::Cluster,
) -> Result<PathBuf> {
    let dir = out.join("checkpoints");
    let name = format!("step_{step}");
    let mut entries = entries(cfg, "params", "params.");
    entries.extend(crate::checkpoints::entries(cfg, "opt.m", "m."));
    entries.extend(crate::checkpoints::entries(cfg, "opt.v", "v."));
    // Host 0 names and makes the temporary directory (after its pid, as single-host saves do).
    let tmp_name = if cluster.writes() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp_name = format!(".{name}.tmp-{}", std::process::id());
        let tmp = dir.join(&tmp_name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        tmp_name
    } else {
        String::new()
    };
    let tmp_name = String::from_utf8_lossy(&cluster.from_first(&format!("checkpoint/{step}/dir"), tmp_name.as_bytes())?).into_owned();
    let tmp = dir.join(&tmp_name);
    if !tmp.is_dir() {
        bail!("host {} does not see {}, which host 0 made: --out must be on storage every host shares", cluster.process(), tmp.display());
    }
    crate::sharded::write_pieces(&tmp, cluster, state, &entries)?;
    cluster.barrier(&format!("checkpoint/{step}/written"))?;
    if cluster.writes() {
        commit(&dir, &tmp, step, keep, |tmp| {
            for p in 0..cluster.processes() {
                let f = tmp.join(crate::sharded::shard_file(p, cluster.processes()));
                if !f.is_file() {
                    bail!("host {p}'s pieces ({}) are missing after every host said it wrote them", f.display());
                }
            }
            gemma::write_atomic(&tmp.join(crate::sharded::INDEX), crate::sharded::index_json(cluster, state, &entries)?.as_bytes())?;
            gemma::write_atomic(&tmp.join("config.json"), cfg.to_hf_json().as_bytes())?;
            write_state_json(tmp, step, meta, cluster.processes())
        })?;
    }
    cluster.barrier(&format!("checkpoint/{step}/committed"))?;
    Ok(dir.join(name))
}

fn write_state_json(dir: &Path, step: u64, meta: &Meta, hosts: usize) -> Result<()> {
    let json = serde_json::json!({
        "step": step,
        "seed": meta.seed,
        "batch": meta.batch,
        "seq": meta.seq,
        "shuffle": meta.shuffle,
        "rows_consumed": meta.rows_consumed,
        "mesh": meta.mesh,
        "dtype": meta.dtype,
        "hosts": hosts,
        "settings": meta.settings,
    });
    gemma::write_atomic(
        &dir.join("trainer_state.json"),
        (serde_json::to_string_pretty(&json).expect("internal: a JSON value serializes") + "\n").as_bytes(),
    )?;
    Ok(())
}

fn write_dir<A: Borrow<DeviceArray>>(tmp: &Path, cfg: &Config, state: &Tree<A>, step: u64, meta: &Meta) -> Result<()> {
    std::fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write_from_devices(&tmp.join("model.safetensors"), state, &entries(cfg, "params", ""))?;
    gemma::write_atomic(&tmp.join("config.json"), cfg.to_hf_json().as_bytes())?;
    let mut opt = entries(cfg, "opt.m", "m.");
    opt.extend(entries(cfg, "opt.v", "v."));
    write_from_devices(&tmp.join("optimizer.safetensors"), state, &opt)?;
    write_state_json(tmp, step, meta, 1)?;
    sync_dir(tmp)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

/// The files every checkpoint directory of a single-host run holds (one of several hosts
/// holds `config.json`, `trainer_state.json`, `shards.json` and the shard files it lists).
pub const FILES: [&str; 4] = ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"];

/// The files of a checkpoint directory that are not there.
fn missing_files(path: &Path) -> Vec<String> {
    let absent = |f: &str| !path.join(f).is_file();
    if path.join(crate::sharded::INDEX).is_file() {
        let mut missing: Vec<String> = ["config.json", "trainer_state.json"].into_iter().filter(|f| absent(f)).map(String::from).collect();
        match crate::sharded::listed_files(path) {
            Ok(files) => missing.extend(files.into_iter().filter(|f| absent(f))),
            Err(_) => missing.push(format!("a readable {}", crate::sharded::INDEX)),
        }
        missing
    } else if path.join("adapter_config.json").is_file() {
        LORA_FILES.into_iter().filter(|f| absent(f)).map(String::from).collect()
    } else {
        FILES.into_iter().filter(|f| absent(f)).map(String::from).collect()
    }
}

/// A `step_<n>` directory found under `OUT/checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The step its name says.
    pub step: u64,
    /// The directory.
    pub path: PathBuf,
    /// The files it lacks (empty: complete).
    pub missing: Vec<String>,
}

/// `step_<n>` directories, newest first, each with the files it lacks; removes the temporary
/// directories of interrupted saves whose writer is dead (a live writer's are left alone).
pub fn list(dir: &Path) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::from(e).context(format!("cannot list {}", dir.display()))),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(".step_").and_then(|n| n.split_once(".tmp-")).and_then(|(_, p)| p.parse::<u32>().ok()) {
            if !data::files::process_alive(pid) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        } else if let Some(n) = name.strip_prefix("step_").and_then(|n| n.parse::<u64>().ok()) {
            let path = entry.path();
            let missing = missing_files(&path);
            found.push(Found { step: n, path, missing });
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.step));
    Ok(found)
}

/// Complete `step_<n>` directories, newest first.
fn complete(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    Ok(list(dir)?.into_iter().filter(|f| f.missing.is_empty()).map(|f| (f.step, f.path)).collect())
}

/// Whether `OUT/checkpoints` holds any complete checkpoint.
pub fn any(out: &Path) -> Result<bool> {
    Ok(newest(&out.join("checkpoints"))?.is_some())
}

fn newest(dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(complete(dir)?.into_iter().next())
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    for (_, path) in complete(dir)?.into_iter().skip(keep.max(1)) {
        std::fs::remove_dir_all(&path).with_context(|| format!("cannot remove old checkpoint {}", path.display()))?;
    }
    Ok(())
}

/// The newest complete checkpoint under `OUT/checkpoints`, loaded; None if there is none.
/// Newer directories that lack files are skipped (see [`list`]), never trusted.
pub fn load_latest(out: &Path, cfg: &Config) -> Result<Option<(PathBuf, Saved, Meta)>> {
    let Some((_, path)) = newest(&out.join("checkpoints"))? else { return Ok(None) };
    let (state, meta) = load(&path, cfg)?;
    Ok(Some((path, state, meta)))
}

/// The newest complete checkpoint's directory under `OUT/checkpoints`, if any.
pub fn newest_dir(out: &Path) -> Result<Option<PathBuf>> {
    Ok(newest(&out.join("checkpoints"))?.map(|(_, p)| p))
}

/// Opens the checkpoint in `dir` (either layout) for a run of `cfg`.
pub fn load(dir: &Path, cfg: &Config) -> Result<(Saved, Meta)> {
    let saved = Config::from_json_file(&dir.join("config.json"))?;
    if &saved != cfg {
        bail!("{}: the checkpoint's config differs from this run's ({saved:?} vs {cfg:?})", dir.join("config.json").display());
    }
    if dir.join(crate::sharded::INDEX).is_file() {
        let (meta, step) = read_meta(dir)?;
        return Ok((Saved::Sharded(crate::sharded::ShardedState::open(dir, step)?), meta));
    }
    let ck = gemma::Checkpoint::open(dir)?;
    ck.validate(cfg)?;
    let names: Vec<String> = gemma::param_shapes(cfg).into_iter().map(|(n, _)| n).collect();
    let f32_of = |file: &Path, t: gemma::TensorRef| -> Result<HostArray> {
        if t.dtype != DType::F32 {
            bail!("{}: training state must be f32, found {}", file.display(), t.dtype);
        }
        Ok(HostArray::from_bytes(DType::F32, t.shape, t.bytes.to_vec())?)
    };
    let model_file = dir.join("model.safetensors");
    let params =
        names.iter().map(|n| Ok((n.clone(), f32_of(&model_file, ck.get(n).expect("internal: validated"))?))).collect::<Result<_>>()?;
    let opt_file = dir.join("optimizer.safetensors");
    let (m, v) = read_moments(&opt_file, &gemma::param_shapes(cfg))?;
    let (meta, step) = read_meta(dir)?;
    for (file, part, list) in [(&model_file, "", &params), (&opt_file, "m.", &m), (&opt_file, "v.", &v)] {
        for (name, array) in list {
            if let Some(bad) = array.to_f64_vec().into_iter().find(|x| !x.is_finite()) {
                bail!("{}: tensor {part}{name} holds {bad}; a checkpoint with non-finite values cannot be resumed", file.display());
            }
        }
    }
    Ok((Saved::Whole(HostState { params, m, v, step }), meta))
}

/// Host arrays by checkpoint name.
type Named = Vec<(String, HostArray)>;

/// AdamW's moments `m.<name>` and `v.<name>` (f32, of `shapes`) from `optimizer.safetensors`.
fn read_moments(file: &Path, shapes: &[(String, Vec<i64>)]) -> Result<(Named, Named)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let opt = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: bad safetensors file: {e}", file.display())))?;
    let moment = |prefix: &str| -> Result<Vec<(String, HostArray)>> {
        shapes
            .iter()
            .map(|(n, dims)| {
                let t = opt
                    .tensor(&format!("{prefix}{n}"))
                    .map_err(|e| Error::Invalid(format!("{}: tensor {prefix}{n}: {e}", file.display())))?;
                let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
                if t.dtype() != safetensors::Dtype::F32 || &shape != dims {
                    bail!("{}: tensor {prefix}{n} is {:?}{shape:?}, expected F32{dims:?}", file.display(), t.dtype());
                }
                Ok((n.clone(), HostArray::from_bytes(DType::F32, &shape, t.data().to_vec())?))
            })
            .collect()
    };
    Ok((moment("m.")?, moment("v.")?))
}

/// The trainer state of the checkpoint in `dir` and its step (which must be the directory's).
fn read_meta(dir: &Path) -> Result<(Meta, u64)> {
    let state_file = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_file).with_context(|| format!("cannot read {}", state_file.display()))?;
    let j: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: not JSON: {e}", state_file.display())))?;
    let int = |k: &str| {
        j.get(k).and_then(|v| v.as_u64()).ok_or_else(|| Error::Invalid(format!("{}: missing or bad {k:?}", state_file.display())))
    };
    let text_of = |k: &str| {
        j.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Invalid(format!("{}: missing {k:?}", state_file.display())))
    };
    let meta = Meta {
        seed: int("seed")?,
        batch: int("batch")? as usize,
        seq: int("seq")? as usize,
        shuffle: j.get("shuffle").and_then(|v| v.as_bool()).unwrap_or(false),
        rows_consumed: int("rows_consumed")?,
        mesh: text_of("mesh")?,
        dtype: text_of("dtype")?,
        settings: match j.get("settings") {
            None => Default::default(),
            Some(v) => v
                .as_object()
                .and_then(|o| o.iter().map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .ok_or_else(|| Error::Invalid(format!("{}: \"settings\" must map flags to strings", state_file.display())))?,
        },
    };
    let step = int("step")?;
    let named = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step_")).and_then(|n| n.parse::<u64>().ok());
    if named != Some(step) {
        bail!(
            "{}: the state is at step {step}, but its directory is {}; refusing a checkpoint that disagrees with itself",
            state_file.display(),
            dir.display()
        );
    }
    Ok((meta, step))
}
