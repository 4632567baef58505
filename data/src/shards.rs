//! A tokenized directory (`gemma-xla tokenize`'s `index.json` and `.npy` shards) opened for
//! training: every shard memory-mapped (through the runtime, where the `unsafe` lives), its
//! size checked against the index, nothing read until a batch needs it.
use crate::tokenize::{FORMAT, INDEX};
use crate::{Error, Result};
use runtime::MappedFile;
use std::path::{Path, PathBuf};

/// One mapped shard.
struct Shard {
    map: MappedFile,
    /// Byte offset of the first token (after the .npy header).
    data: usize,
    tokens: u64,
}

/// The shards of a tokenized directory as one token stream.
pub(crate) struct Shards {
    shards: Vec<Shard>,
    /// Stream offset of each shard's first token.
    starts: Vec<u64>,
    wide: bool,
    /// sha256 of `index.json` (which names every shard's sha256): the data's identity.
    pub(crate) fingerprint: String,
    pub(crate) tokenizer_sha256: String,
    pub(crate) total: u64,
    pub(crate) documents: u64,
}

fn bad(path: impl std::fmt::Display, message: impl Into<String>) -> Error {
    Error::Data { path: path.to_string(), message: message.into() }
}

/// Whether `dir` is a tokenized directory.
pub fn is_tokenized(dir: &Path) -> bool {
    dir.join(INDEX).is_file()
}

impl Shards {
    pub(crate) fn open(dir: &Path) -> Result<Shards> {
        let index_path = dir.join(INDEX);
        let text = std::fs::read_to_string(&index_path).map_err(|e| bad(index_path.display(), format!("cannot read: {e}")))?;
        let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(index_path.display(), format!("not JSON: {e}")))?;
        let at = |what: &str| bad(index_path.display(), format!("missing or bad {what:?}"));
        if index.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(index_path.display(), format!("not a tokenized directory of this version (format {:?})", FORMAT)));
        }
        let wide = match index.get("dtype").and_then(|d| d.as_str()) {
            Some("uint16") => false,
            Some("uint32") => true,
            _ => return Err(at("dtype")),
        };
        let list = index.get("shards").and_then(|s| s.as_array()).ok_or_else(|| at("shards"))?;
        // Everything in the directory must be the index's: a mix of shards and raw files (or
        // another run's shards) is refused.
        let named: Vec<&str> = list.iter().filter_map(|s| s.get("file").and_then(|f| f.as_str())).collect();
        let entries = std::fs::read_dir(dir).map_err(|e| bad(dir.display(), format!("cannot list: {e}")))?;
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != INDEX && !n.starts_with('.') && !named.contains(&n.as_str()) {
                return Err(bad(
                    dir.display(),
                    format!("holds {n}, which its {INDEX} does not name: a tokenized directory holds only its shards"),
                ));
            }
        }
        let mut shards = Vec::with_capacity(list.len());
        let mut starts = Vec::with_capacity(list.len());
        let mut total = 0u64;
        let width = if wide { 4 } else { 2 };
        for s in list {
            let file = s.get("file").and_then(|f| f.as_str()).ok_or_else(|| at("shards[].file"))?;
            let tokens = s.get("tokens").and_then(|t| t.as_u64()).ok_or_else(|| at("shards[].tokens"))?;
            if file.contains('/') || file.contains("..") {
                return Err(bad(index_path.display(), format!("shard {file:?} is not a file of the directory")));
            }
            let path: PathBuf = dir.join(file);
            let map = MappedFile::open(&path)
                .map_err(|e| bad(path.display(), format!("cannot map the shard (deleted since tokenizing?): {e}")))?;
            let bytes = map.bytes();
            let data = npy_data_offset(bytes).ok_or_else(|| bad(path.display(), "not a 1-D .npy shard"))?;
            let want = tokens.checked_mul(width).and_then(|b| b.checked_add(data as u64));
            if want != Some(bytes.len() as u64) {
                return Err(bad(
                    path.display(),
                    format!(
                        "{} bytes, but the index says {tokens} tokens ({} bytes): the shard changed since tokenizing",
                        bytes.len(),
                        want.map_or("too many".to_string(), |w| w.to_string())
                    ),
                ));
            }
            starts.push(total);
            total = total.checked_add(tokens).ok_or_else(|| at("shards[].tokens"))?;
            shards.push(Shard { map, data, tokens });
        }
        let stated = index.get("tokens").and_then(|t| t.as_u64()).ok_or_else(|| at("tokens"))?;
        if stated != total {
            return Err(bad(index_path.display(), format!("says {stated} tokens, its shards hold {total}")));
        }
        Ok(Shards {
            shards,
            starts,
            wide,
            fingerprint: crate::files::sha256_hex(text.as_bytes()),
            tokenizer_sha256: index.get("tokenizer_sha256").and_then(|t| t.as_str()).ok_or_else(|| at("tokenizer_sha256"))?.to_string(),
            total,
            documents: index.get("documents").and_then(|d| d.as_u64()).unwrap_or(0),
        })
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Appends tokens `start .. start + len` of the stream to `out`, as i32.
    pub(crate) fn read(&self, start: u64, len: usize, out: &mut Vec<i32>) {
        let mut pos = start;
        let end = start + len as u64;
        let mut k = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        while pos < end {
            let shard = &self.shards[k];
            let from = pos - self.starts[k];
            let n = (shard.tokens - from).min(end - pos);
            let bytes = shard.map.bytes();
            if self.wide {
                let b = &bytes[shard.data + 4 * from as usize..shard.data + 4 * (from + n) as usize];
                out.extend(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i32));
            } else {
                let b = &bytes[shard.data + 2 * from as usize..shard.data + 2 * (from + n) as usize];
                out.extend(b.chunks_exact(2).map(|c| i32::from(u16::from_le_bytes([c[0], c[1]]))));
            }
            pos += n;
            k += 1;
        }
    }
}

/// The offset of a version-1 `.npy` file's data (its header: magic, version, length).
fn npy_data_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return None;
    }
    let len = match bytes[6] {
        1 => u16::from_le_bytes([bytes[8], bytes[9]]) as usize + 10,
        2 | 3 => u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize + 12,
        _ => return None,
    };
    (len <= bytes.len()).then_some(len)
}
