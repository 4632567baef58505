//! HF Gemma checkpoints read from disk: the safetensors files mapped into memory (through
//! the runtime, where the `unsafe` lives), and their tensors as host views or f32 arrays.
use crate::{Error, Result};
use gemma::{Checkpoint, Config, FileBytes};
use graph::{DType, Tree};
use runtime::{HostArray, HostView, MappedFile};
use std::path::Path;

/// A checkpoint file mapped into memory by the runtime.
struct Mapped(MappedFile);

impl FileBytes for Mapped {
    fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// Opens checkpoint files as read-only memory maps (the opener `Checkpoint::open_with` takes).
pub fn map_file(path: &Path) -> std::io::Result<Box<dyn FileBytes>> {
    Ok(Box::new(Mapped(MappedFile::open(path)?)))
}

/// Opens the HF checkpoint in `dir` (model.safetensors, or shards and their index), mapped.
pub fn open(dir: &Path) -> Result<Checkpoint> {
    Ok(Checkpoint::open_with(dir, &map_file)?)
}

/// Every tensor of `cfg` as a view of the (validated) checkpoint, by checkpoint name.
pub fn param_views<'a>(ck: &'a Checkpoint, cfg: &Config) -> Result<Tree<HostView<'a>>> {
    let mut views = Tree::new();
    for (name, _) in gemma::param_shapes(cfg) {
        let t = ck
            .get(&name)
            .ok_or_else(|| Error::Data { path: ck.dir().display().to_string(), message: format!("the checkpoint has no {name}") })?;
        views.insert(name, HostView { dtype: t.dtype, dims: t.shape, bytes: t.bytes }).map_err(|e| Error::Unsupported(e.to_string()))?;
    }
    Ok(views)
}

/// Every tensor of `cfg` converted to f32, in `gemma::param_shapes` order: the master
/// weights a training run starts from. The checkpoint must have been validated against `cfg`.
pub fn params_f32(ck: &Checkpoint, cfg: &Config) -> Result<Vec<(String, HostArray)>> {
    let views = param_views(ck, cfg)?;
    gemma::param_shapes(cfg)
        .into_iter()
        .map(|(name, _)| {
            let v = views.get(&name).expect("internal: param_views holds every tensor");
            let array = if v.dtype == DType::F32 {
                HostArray::from_bytes(DType::F32, v.dims, v.bytes.to_vec())?
            } else {
                v.convert_float(DType::F32)?
            };
            Ok((name, array))
        })
        .collect()
}
