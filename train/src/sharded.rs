//! Checkpoints written by several hosts: each host writes the pieces of the state its own
//! devices hold into `shards-<host>-of-<hosts>.safetensors` (a piece held by several devices,
//! a replicated one for instance, by the lowest host holding it, once), and host 0 writes the
//! index `shards.json` (every tensor's shape and where each piece of it is) and commits the
//! directory by rename after every host has written. No host ever holds the whole state.
//!
//! Reading cuts the saved pieces as the new run's mesh says: each host reads only the regions
//! its devices need, so a checkpoint resumes on any host count and mesh.
use crate::checkpoints::StateSource;
use crate::cluster::Cluster;
use crate::{bail, Context, Error, Result};
use gemma::{FileBytes, TensorMeta};
use graph::{DType, Tree};
use runtime::{DeviceArray, HostArray};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The index a sharded checkpoint directory holds.
pub const INDEX: &str = "shards.json";

/// The shard file host `p` of `n` writes.
pub fn shard_file(p: usize, n: usize) -> String {
    format!("shards-{p:05}-of-{n:05}.safetensors")
}

fn piece_name(key: &str, region: &[Range<i64>]) -> String {
    let r: Vec<String> = region.iter().map(|r| format!("{}:{}", r.start, r.end)).collect();
    format!("{key}@{}", r.join(","))
}

/// For each distinct region of `a`, the device that writes it: among the devices holding that
/// region, one of the lowest process holding it. Returns (device, region) in mesh order.
fn writers(a: &DeviceArray) -> Vec<(usize, Vec<Range<i64>>)> {
    let regions = &a.tiling().regions;
    let owners: Vec<usize> = match a.ownership() {
        Some(o) => o.owners().to_vec(),
        None => vec![0; regions.len()],
    };
    let mut chosen: BTreeMap<Vec<(i64, i64)>, (usize, usize)> = BTreeMap::new(); // region -> (process, device)
    for (d, region) in regions.iter().enumerate() {
        if region.iter().any(|r| r.is_empty()) {
            continue; // a padding-only tile holds nothing
        }
        let key: Vec<(i64, i64)> = region.iter().map(|r| (r.start, r.end)).collect();
        let candidate = (owners[d], d);
        chosen.entry(key).and_modify(|c| *c = (*c).min(candidate)).or_insert(candidate);
    }
    let mut out: Vec<(usize, Vec<Range<i64>>)> =
        chosen.into_iter().map(|(k, (_, d))| (d, k.into_iter().map(|(s, e)| s..e).collect())).collect();
    out.sort_by_key(|(d, _)| *d);
    out
}

/// Writes this host's pieces of `state` (entries: (key in the checkpoint, state path)) into
/// `dir/shards-<p>-of-<n>.safetensors`, one piece in memory at a time.
pub fn write_pieces(dir: &Path, cluster: &Cluster, state: &Tree<&DeviceArray>, entries: &[(String, String)]) -> Result<()> {
    let me = cluster.process();
    let mut todo: Vec<(String, &DeviceArray, usize, Vec<Range<i64>>)> = Vec::new();
    for (key, path) in entries {
        let a: &DeviceArray = state.leaf(path)?;
        for (d, region) in writers(a) {
            let owner = a.ownership().map_or(0, |o| o.owners()[d]);
            if owner == me {
                todo.push((key.clone(), a, d, region));
            }
        }
    }
    let metas: Vec<TensorMeta> = todo
        .iter()
        .map(|(key, a, _, region)| TensorMeta {
            name: piece_name(key, region),
            dtype: a.ty().dtype,
            shape: region.iter().map(|r| r.end - r.start).collect(),
        })
        .collect();
    let file = dir.join(shard_file(me, cluster.processes()));
    gemma::save_safetensors_streaming(&file, &metas, |i| {
        let (key, a, d, _) = &todo[i];
        let shard = a.addressable_shards().into_iter().find(|s| s.index == *d).ok_or_else(|| gemma::Error::Checkpoint {
            path: file.display().to_string(),
            message: format!("{key}: device {d} is not this host's"),
        })?;
        let host = a
            .fetch_shard(&shard)
            .map_err(|e| gemma::Error::Checkpoint { path: file.display().to_string(), message: format!("cannot fetch {key}: {e}") })?;
        Ok(host.bytes().to_vec())
    })?;
    Ok(())
}

/// The index of every host's pieces (host 0 writes it; every host would compute the same).
pub fn index_json(cluster: &Cluster, state: &Tree<&DeviceArray>, entries: &[(String, String)]) -> Result<String> {
    let n = cluster.processes();
    let mut tensors = serde_json::Map::new();
    for (key, path) in entries {
        let a: &DeviceArray = state.leaf(path)?;
        let pieces: Vec<serde_json::Value> = writers(a)
            .into_iter()
            .map(|(d, region)| {
                let owner = a.ownership().map_or(0, |o| o.owners()[d]);
                serde_json::json!({
                    "file": shard_file(owner, n),
                    "name": piece_name(key, &region),
                    "region": region.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
                })
            })
            .collect();
        tensors.insert(key.clone(), serde_json::json!({"dtype": a.ty().dtype.to_string(), "shape": a.ty().dims, "pieces": pieces}));
    }
    let index = serde_json::json!({"format": "gemma-xla sharded checkpoint 1", "hosts": n, "tensors": tensors});
    Ok(serde_json::to_string_pretty(&index).expect("internal: a JSON value serializes") + "\n")
}

struct Piece {
    file: String,
    name: String,
    region: Vec<Range<i64>>,
}

/// Each tensor's shape and saved pieces, by key (`params.<name>`, `m.<name>`, `v.<name>`).
type Index = HashMap<String, (Vec<i64>, Vec<Piece>)>;

/// A sharded checkpoint opened for reading region by region (files mapped when first read).
pub struct ShardedState {
    dir: PathBuf,
    tensors: Index,
    files: std::cell::RefCell<HashMap<String, std::rc::Rc<Box<dyn FileBytes>>>>,
    step: u64,
}

/// The files an index lists (for completeness checks).
pub fn listed_files(dir: &Path) -> Result<Vec<String>> {
    let index = read_index(dir)?;
    let mut files: Vec<String> = index.values().flat_map(|(_, pieces)| pieces.iter().map(|p| p.file.clone())).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn read_index(dir: &Path) -> Result<Index> {
    let path = dir.join(INDEX);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |why: &str| Error::Invalid(format!("{}: {why}", path.display()));
    let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let tensors = j.get("tensors").and_then(|t| t.as_object()).ok_or_else(|| bad("no \"tensors\" object"))?;
    let mut out = HashMap::new();
    for (key, t) in tensors {
        if t.get("dtype").and_then(|d| d.as_str()) != Some("f32") {
            return Err(bad(&format!("{key}: training state must be f32")));
        }
        let shape: Vec<i64> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_i64().filter(|&d| (0..1 << 40).contains(&d))).collect())
            .ok_or_else(|| bad(&format!("{key}: bad \"shape\"")))?;
        let mut pieces = Vec::new();
        for p in t.get("pieces").and_then(|p| p.as_array()).ok_or_else(|| bad(&format!("{key}: no \"pieces\"")))? {
            let file = p.get("file").and_then(|f| f.as_str()).ok_or_else(|| bad(&format!("{key}: a piece without \"file\"")))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(bad(&format!("{key}: piece file {file:?} is not a file name of this directory")));
            }
            let name = p.get("name").and_then(|f| f.as_str()).ok_or_else(|| bad(&format!("{key}: a piece without \"name\"")))?;
            let region: Vec<Range<i64>> = p
                .get("region")
                .and_then(|r| r.as_array())
                .and_then(|r| {
                    r.iter()
                        .map(|b| {
                            let b = b.as_array()?;
                            Some(b.first()?.as_i64()?..b.get(1)?.as_i64()?)
                        })
                        .collect()
                })
                .ok_or_else(|| bad(&format!("{key}: a piece with a bad \"region\"")))?;
            if region.len() != shape.len() || region.iter().zip(&shape).any(|(r, &n)| r.start < 0 || r.start > r.end || r.end > n) {
                return Err(bad(&format!("{key}: piece region {region:?} is not inside {shape:?}")));
            }
            pieces.push(Piece { file: file.to_string(), name: name.to_string(), region });
        }
        out.insert(key.clone(), (shape, pieces));
    }
    Ok(out)
}

impl ShardedState {
    /// Opens the index of the checkpoint in `dir` (at `step`).
    pub fn open(dir: &Path, step: u64) -> Result<ShardedState> {
        Ok(ShardedState { dir: dir.to_path_buf(), tensors: read_index(dir)?, files: Default::default(), step })
    }

    fn file(&self, name: &str) -> Result<std::rc::Rc<Box<dyn FileBytes>>> {
        if let Some(f) = self.files.borrow().get(name) {
            return Ok(f.clone());
        }
        let path = self.dir.join(name);
        let f = std::rc::Rc::new(data::checkpoint::map_file(&path).with_context(|| format!("cannot read {}", path.display()))?);
        self.files.borrow_mut().insert(name.to_string(), f.clone());
        Ok(f)
    }
}

impl StateSource for ShardedState {
    fn region(&self, part: &str, name: &str, region: &[Range<i64>]) -> Result<HostArray> {
        let key = format!("{part}.{name}");
        let Some((shape, pieces)) = self.tensors.get(&key) else {
            bail!("{}: the checkpoint has no {key}", self.dir.join(INDEX).display());
        };
        if region.len() != shape.len() {
            bail!("{}: {key} is {shape:?}, this run's has rank {}", self.dir.join(INDEX).display(), region.len());
        }
        let extent: Vec<i64> = region.iter().map(|r| r.end - r.start).collect();
        let count = extent.iter().product::<i64>() as usize;
        let mut out = vec![0u8; count * 4];
        let mut covered = 0usize;
        for p in pieces {
            let inter: Vec<Range<i64>> = p.region.iter().zip(region).map(|(a, b)| a.start.max(b.start)..a.end.min(b.end)).collect();
            if inter.iter().any(|r| r.start >= r.end) {
                continue;
            }
            let file = self.file(&p.file)?;
            let path = self.dir.join(&p.file);
            let st = safetensors::SafeTensors::deserialize(file.bytes())
                .map_err(|e| Error::Invalid(format!("{}: bad safetensors file: {e}", path.display())))?;
            let t = st.tensor(&p.name).map_err(|e| Error::Invalid(format!("{}: piece {}: {e}", path.display(), p.name)))?;
            let dims: Vec<i64> = p.region.iter().map(|r| r.end - r.start).collect();
            let tshape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            if t.dtype() != safetensors::Dtype::F32 || tshape != dims {
                bail!("{}: piece {} is {:?}{tshape:?}, expected F32{dims:?}", path.display(), p.name, t.dtype());
            }
            let local: Vec<Range<i64>> = inter.iter().zip(&p.region).map(|(i, r)| i.start - r.start..i.end - r.start).collect();
            // The intersection, from the piece's box into the region's.
            let src_at: Vec<i64> = local.iter().map(|r| r.start).collect();
            let dst_at: Vec<i64> = inter.iter().zip(region).map(|(i, r)| i.start - r.start).collect();
            let size: Vec<i64> = inter.iter().map(|r| r.end - r.start).collect();
            if dims.is_empty() {
                out.copy_from_slice(t.data());
            } else {
                sharding::copy_box(t.data(), &dims, &src_at, &mut out, &extent, &dst_at, &size, 4);
            }
            covered += size.iter().product::<i64>() as usize;
        }
        if covered != count {
            bail!("{}: the pieces of {key} cover {covered} of the {count} values of region {region:?}", self.dir.join(INDEX).display());
        }
        let array = HostArray::from_bytes(DType::F32, &extent, out)?;
        if let Some(bad) = array.to_f64_vec().into_iter().find(|x| !x.is_finite()) {
            bail!("{}: tensor {key} holds {bad}; a checkpoint with non-finite values cannot be resumed", self.dir.display());
        }
        Ok(array)
    }

    fn step(&self) -> u64 {
        self.step
    }
}
