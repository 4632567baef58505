//! HF-layout safetensors checkpoints: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped and tensors are handed out as
//! borrowed byte slices, so loading copies nothing. Saving writes a temporary file, fsyncs
//! it and renames it into place.
use crate::config::Config;
use crate::model::param_shapes;
use crate::Error;
use graph::DType;
use safetensors::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A tensor of a checkpoint, borrowed from its mapped file.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// The element type as stored: f32, bf16, f16 or f64.
    pub dtype: DType,
    /// The dimensions, outermost first.
    pub shape: &'a [i64],
    /// Little-endian, row-major.
    pub bytes: &'a [u8],
}

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<i64>,
    range: Range<usize>,
}

/// An opened HF safetensors checkpoint: every tensor of its file or shards by name, the
/// bytes held by the opened files (read into memory or mapped, see `FileBytes`).
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, Box<dyn FileBytes>)>,
    tensors: BTreeMap<String, Entry>,
    /// Tensors of a multimodal checkpoint left out (the vision tower and its projector).
    ignored: usize,
}

/// Where a multimodal Gemma 3 checkpoint keeps its language model (transformers 5, then 4.5x).
const LANGUAGE_MODEL: [&str; 2] = ["model.language_model.", "language_model.model."];
/// The rest of a multimodal Gemma 3 checkpoint, which a text model does not use.
const VISION: [&str; 4] = ["model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector."];

fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::BF16 => DType::Bf16,
        Dtype::F16 => DType::F16,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}

fn st_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::F32 => Dtype::F32,
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F64 => Dtype::F64,
        DType::S32 => Dtype::I32,
        DType::S64 => Dtype::I64,
        _ => return None,
    })
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// The bytes of one opened checkpoint file: read into memory, or memory-mapped by a caller
/// that may map files (the CLI maps them through `runtime`, where all `unsafe` code lives).
pub trait FileBytes {
    /// The file's whole contents.
    fn bytes(&self) -> &[u8];
}

impl FileBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// How a checkpoint's files are opened.
pub type OpenFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<Box<dyn FileBytes>>;

fn read_file(path: &Path) -> std::io::Result<Box<dyn FileBytes>> {
    Ok(Box::new(std::fs::read(path)?))
}

impl Checkpoint {
    /// Opens the checkpoint in an HF model directory, reading its files into memory.
    pub fn open(dir: &Path) -> Result<Checkpoint, Error> {
        Checkpoint::open_with(dir, &read_file)
    }

    /// Opens the checkpoint, each file opened by `open_file` (e.g. a memory map).
    pub fn open_with(dir: &Path, open_file: OpenFile) -> Result<Checkpoint, Error> {
        let mut ck = Checkpoint { dir: dir.to_path_buf(), files: Vec::new(), tensors: BTreeMap::new(), ignored: 0 };
        let index = dir.join(INDEX);
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::checkpoint(&index, e.to_string()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::checkpoint(&index, "no \"weight_map\" object".into()))?;
            let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| Error::checkpoint(&index, format!("{name}: file is not a string")))?;
                if file.contains('/') || file.contains("..") {
                    return Err(Error::checkpoint(&index, format!("{name}: file {file:?} is outside the directory")));
                }
                wanted.entry(file.to_string()).or_default().insert(name.clone());
            }
            for (file, names) in wanted {
                let path = dir.join(&file);
                let found = ck.add_file(&path, open_file)?;
                if let Some(missing) = names.iter().find(|n| !found.contains(*n)) {
                    return Err(Error::checkpoint(&path, format!("{INDEX} lists tensor {missing} in this file, but it is not there")));
                }
            }
        } else if dir.join(SINGLE).is_file() {
            ck.add_file(&dir.join(SINGLE), open_file)?;
        } else if !dir.is_dir() {
            return Err(Error::Checkpoint { path: dir.display().to_string(), message: "no such directory".into() });
        } else {
            return Err(Error::Checkpoint {
                path: dir.display().to_string(),
                message: format!("neither {SINGLE} nor {INDEX} is in this directory"),
            });
        }
        ck.take_language_model();
        Ok(ck)
    }

    /// A multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration): its language
    /// model's tensors under the text model's names (`model.layers.0...`), the vision tower
    /// and projector left out. Other checkpoints are left as they are.
    fn take_language_model(&mut self) {
        let Some(prefix) = LANGUAGE_MODEL.iter().find(|p| self.tensors.keys().any(|k| k.starts_with(*p))) else { return };
        let old = std::mem::take(&mut self.tensors);
        for (name, entry) in old {
            if let Some(rest) = name.strip_prefix(prefix) {
                self.tensors.insert(format!("model.{rest}"), entry);
            } else if VISION.iter().any(|v| name.starts_with(v)) {
                self.ignored += 1;
            } else {
                let name = name.strip_prefix("language_model.").map_or(name.clone(), str::to_string);
                self.tensors.insert(name, entry);
            }
        }
    }

    /// How many tensors of a multimodal checkpoint were left out (the vision tower).
    pub fn ignored(&self) -> usize {
        self.ignored
    }

    /// Maps one safetensors file and records its tensors; returns their names.
    fn add_file(&mut self, path: &Path, open_file: OpenFile) -> Result<Vec<String>, Error> {
        let map = open_file(path).map_err(|e| Error::io(path, e))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(map.bytes())
            .map_err(|e| Error::checkpoint(path, format!("bad safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let file = self.files.len();
        let mut names = Vec::new();
        for (name, info) in meta.tensors() {
            let dtype = dtype_of(info.dtype).ok_or_else(|| {
                Error::checkpoint(path, format!("tensor {name} has dtype {:?}; expected F32, BF16, F16 or F64", info.dtype))
            })?;
            let (a, b) = info.data_offsets;
            if data_start + b > map.bytes().len() {
                return Err(Error::checkpoint(path, format!("tensor {name} extends past the end of the file (truncated?)")));
            }
            if self.tensors.contains_key(&name) {
                return Err(Error::checkpoint(path, format!("tensor {name} appears in more than one file")));
            }
            let shape = info.shape.iter().map(|&d| d as i64).collect();
            self.tensors.insert(name.clone(), Entry { file, dtype, shape, range: data_start + a..data_start + b });
            names.push(name);
        }
        self.files.push((path.to_path_buf(), map));
        Ok(names)
    }

    /// The model directory the checkpoint was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files the checkpoint was read from.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }

    /// Checks that no file shrank since it was opened (another process truncating a
    /// memory-mapped file makes reading it fault); names the file that did.
    pub fn check_unchanged(&self) -> Result<(), Error> {
        for (path, bytes) in &self.files {
            let now = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
            if now < bytes.bytes().len() as u64 {
                return Err(Error::checkpoint(path, format!("the file shrank from {} to {now} bytes while in use", bytes.bytes().len())));
            }
        }
        Ok(())
    }

    /// The names of all tensors in the checkpoint, in byte-wise sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor called `name`, borrowed from its file; None when the checkpoint has none.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        self.tensors.get(name).map(|e| TensorRef { dtype: e.dtype, shape: &e.shape, bytes: &self.files[e.file].1.bytes()[e.range.clone()] })
    }

    fn file_of(&self, name: &str) -> String {
        self.tensors.get(name).map(|e| self.files[e.file].0.display().to_string()).unwrap_or_default()
    }

    /// Checks the tensors against what `cfg` needs: every tensor present, none unexpected,
    /// every shape right. A `lm_head.weight` is accepted only if it equals the (tied)
    /// input embedding.
    pub fn validate(&self, cfg: &Config) -> Result<(), Error> {
        let want = param_shapes(cfg);
        let missing: Vec<String> = want.iter().filter(|(n, _)| !self.tensors.contains_key(n)).map(|(n, _)| n.clone()).collect();
        if !missing.is_empty() {
            return Err(Error::Tensors { dir: self.dir.display().to_string(), problem: "missing".into(), names: missing });
        }
        let known: BTreeSet<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
        let mut unexpected: Vec<String> = self.names().filter(|n| !known.contains(n)).map(String::from).collect();
        if unexpected == ["lm_head.weight"] {
            let (lm, emb) = (self.get("lm_head.weight"), self.get("model.embed_tokens.weight"));
            if let (Some(lm), Some(emb)) = (lm, emb) {
                if lm.bytes == emb.bytes && lm.shape == emb.shape {
                    unexpected.clear();
                }
            }
        }
        if !unexpected.is_empty() {
            return Err(Error::Tensors { dir: self.dir.display().to_string(), problem: "unexpected".into(), names: unexpected });
        }
        for (name, shape) in &want {
            let t = self.get(name).expect("internal: checked above");
            if t.shape != shape.as_slice() {
                return Err(Error::checkpoint(
                    Path::new(&self.file_of(name)),
                    format!("tensor {name} has shape {:?}, but the config needs {shape:?}", t.shape),
                ));
            }
        }
        Ok(())
    }
}

/// A tensor to save.
pub struct SaveTensor<'a> {
    /// The tensor's name in the file (an HF tensor name such as `model.norm.weight`).
    pub name: String,
    /// The element type: f32, bf16, f16, f64, s32 or s64 (saving refuses others).
    pub dtype: DType,
    /// The dimensions, outermost first.
    pub shape: Vec<i64>,
    /// The data: little-endian, row-major.
    pub bytes: &'a [u8],
}

struct ShapedView<'a> {
    t: &'a SaveTensor<'a>,
    shape: Vec<usize>,
}

impl safetensors::View for &ShapedView<'_> {
    fn dtype(&self) -> Dtype {
        st_dtype(self.t.dtype).expect("internal: checked in save")
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.t.bytes)
    }
    fn data_len(&self) -> usize {
        self.t.bytes.len()
    }
}

/// Writes `tensors` as a safetensors file at `path`, atomically (temp file, fsync, rename).
pub fn save_safetensors(path: &Path, tensors: &[SaveTensor]) -> Result<(), Error> {
    for t in tensors {
        if st_dtype(t.dtype).is_none() {
            return Err(Error::checkpoint(path, format!("cannot save tensor {} of dtype {}", t.name, t.dtype)));
        }
    }
    let views: Vec<ShapedView> = tensors.iter().map(|t| ShapedView { t, shape: t.shape.iter().map(|&d| d as usize).collect() }).collect();
    let bytes =
        safetensors::serialize(views.iter().map(|v| (v.t.name.clone(), v)), None).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Saves an HF model directory: `config.json` and `model.safetensors`, each atomically.
pub fn save_model(dir: &Path, config_json: &str, tensors: &[SaveTensor]) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_safetensors(&dir.join(SINGLE), tensors)?;
    write_atomic(&dir.join("config.json"), config_json.as_bytes())
}

/// Writes bytes to `path` via a temporary file in the same directory, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    write_atomic_with(path, |f| f.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Like `write_atomic`, the content written by `fill` into the temporary file. Whatever
/// fails, `path` keeps its old content (or stays absent) and the temporary file is removed.
///
/// A symlink at `path` is written through (its target is replaced, the link stays), an
/// existing file keeps its permissions, and temporary files left by killed writers of the
/// same file are removed.
///
/// A character device or FIFO at `path` (`/dev/null`, `/dev/stdout`, a named pipe) is written
/// straight into, as the user asked, never replaced; any other file that is not a regular
/// file (a directory, socket or block device) is refused.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> Result<(), Error>) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let target = through_symlinks(path);
    let path = target.as_path();
    if let Ok(meta) = std::fs::metadata(path) {
        let kind = meta.file_type();
        if kind.is_char_device() || kind.is_fifo() {
            let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, e))?;
            return fill(&mut f);
        }
        let what = if kind.is_dir() {
            Some("a directory")
        } else if kind.is_socket() {
            Some("a socket")
        } else if kind.is_block_device() {
            Some("a block device")
        } else if !kind.is_file() {
            Some("not a regular file")
        } else {
            None
        };
        if let Some(what) = what {
            let message = format!("refusing to write it: it is {what} (outputs go to regular files, character devices or FIFOs)");
            return Err(Error::Io { path: path.display().to_string(), message });
        }
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    remove_stale_temporaries(dir, &name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let old_permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let result = (|| -> Result<(), Error> {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        if let Some(p) = old_permissions {
            f.set_permissions(p).map_err(|e| Error::io(&tmp, e))?;
        }
        fill(&mut f)?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The file a path names once symlinks are followed (the path itself if it is not a link;
/// a dangling link's target).
fn through_symlinks(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&p) {
                Ok(t) if t.is_absolute() => p = t,
                Ok(t) => p = p.parent().unwrap_or(Path::new(".")).join(t),
                Err(_) => break,
            },
            _ => break,
        }
    }
    p
}

/// Removes `.{name}.tmp-PID` files in `dir` whose writer process is gone.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The name, dtype and shape of a tensor whose bytes are produced later.
pub struct TensorMeta {
    /// The tensor's name in the file.
    pub name: String,
    /// The element type: f32, bf16, f16, f64, s32 or s64 (saving refuses others).
    pub dtype: DType,
    /// The dimensions, outermost first.
    pub shape: Vec<i64>,
}

/// Writes a safetensors file tensor by tensor: the header first (from the metadata alone),
/// then `bytes_of(i)` for each tensor in order, so only one tensor is in memory at a time
/// (e.g. fetched from the devices one by one). Atomic like `write_atomic`.
pub fn save_safetensors_streaming(
    path: &Path,
    tensors: &[TensorMeta],
    mut bytes_of: impl FnMut(usize) -> Result<Vec<u8>, Error>,
) -> Result<(), Error> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut at = 0usize;
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        let st = st_dtype(t.dtype).ok_or_else(|| Error::checkpoint(path, format!("cannot save tensor {} of dtype {}", t.name, t.dtype)))?;
        let size = graph::TensorType::new(t.dtype, &t.shape)
            .size_bytes()
            .ok_or_else(|| Error::checkpoint(path, format!("tensor {} of shape {:?} is too large", t.name, t.shape)))?;
        header.insert(t.name.clone(), serde_json::json!({"dtype": format!("{st:?}"), "shape": t.shape, "data_offsets": [at, at + size]}));
        sizes.push(size);
        at += size;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    write_atomic_with(path, |f| {
        let io = |e| Error::io(path, e);
        let mut w = std::io::BufWriter::new(f);
        w.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(text.as_bytes()).map_err(io)?;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = bytes_of(i)?;
            if bytes.len() != sizes[i] {
                return Err(Error::checkpoint(path, format!("tensor {}: {} bytes given for {} expected", t.name, bytes.len(), sizes[i])));
            }
            w.write_all(&bytes).map_err(io)?;
        }
        w.flush().map_err(io)
    })
}
