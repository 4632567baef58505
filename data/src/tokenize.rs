//! Tokenizing a corpus once into memory-mappable shards (`gemma-xla tokenize`): documents
//! from plain text files (a whole file is a document), `.jsonl`, `.jsonl.gz` and `.jsonl.zst`
//! (one document per line, the string `field`) and parquet files (one per row of the string
//! column `field`), in sorted path order. Each document is tokenized without special tokens,
//! BOS first when the tokenizer's `tokenizer_config.json` says `add_bos_token`, its
//! `eos_token` appended; the documents form one token stream written as `.npy` shards of
//! uint16 (a vocabulary of at most 65536) or uint32, and `index.json` last.
//!
//! Memory is bounded whatever the corpus size: one reader thread streams documents in
//! batches through a bounded queue to `workers` tokenizing threads, and the writer puts the
//! batches back in order, so the output does not depend on the number of workers. Every shard
//! is written atomically and the index after all of them, so an interrupted run never leaves
//! a directory that looks complete.
use crate::files::write_atomic;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

/// The largest single document (a text file, a jsonl line): it is tokenized in one piece.
const MAX_DOCUMENT: u64 = crate::MAX_TEXT_BYTES;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// The index file of a tokenized directory.
pub const INDEX: &str = "index.json";
/// What `index.json`'s `format` says.
pub const FORMAT: &str = "gemma-xla tokens 1";

/// How to tokenize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// The string field of `.jsonl` lines and the string column of parquet files.
    pub field: String,
    /// Tokenizing threads (at least 1).
    pub workers: usize,
    /// Tokens per shard (the last shard holds the rest).
    pub shard_tokens: usize,
}

impl Default for TokenizeOptions {
    fn default() -> Self {
        TokenizeOptions { field: "text".into(), workers: 1, shard_tokens: 1 << 27 }
    }
}

/// How far a run is: bytes of text read, documents and tokens written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of document text tokenized.
    pub bytes: u64,
    /// Documents tokenized.
    pub documents: u64,
    /// Tokens in the stream so far.
    pub tokens: u64,
}

/// What a finished run wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Shards written.
    pub shards: usize,
    /// The final counts.
    pub progress: Progress,
    /// The element type of the shards: `uint16` or `uint32`.
    pub dtype: &'static str,
}

fn bad(path: impl std::fmt::Display, message: impl Into<String>) -> Error {
    Error::Data { path: path.to_string(), message: message.into() }
}

/// The kinds of file a corpus may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Jsonl,
    JsonlGz,
    JsonlZst,
    Parquet,
}

fn kind_of(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_str()?;
    Some(if name.ends_with(".jsonl.gz") {
        Kind::JsonlGz
    } else if name.ends_with(".jsonl.zst") {
        Kind::JsonlZst
    } else if name.ends_with(".jsonl") {
        Kind::Jsonl
    } else if name.ends_with(".parquet") {
        Kind::Parquet
    } else if name.ends_with(".txt") || name.ends_with(".md") {
        Kind::Text
    } else {
        return None;
    })
}

/// The corpus files of `inputs`: files as given (a file named explicitly of another kind is
/// read as text), directories walked recursively in sorted path order (files of known kinds
/// only; hidden entries skipped).
pub fn corpus_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| bad(dir.display(), format!("cannot list: {e}")))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| bad(dir.display(), format!("cannot list: {e}")))?;
        entries.sort();
        for p in entries {
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            if p.is_dir() {
                walk(&p, out)?;
            } else if kind_of(&p).is_some() {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut files)?;
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(bad(input.display(), "no such file or directory"));
        }
    }
    if files.is_empty() {
        return Err(bad(
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            "no corpus files (.txt, .md, .jsonl, .jsonl.gz, .jsonl.zst, .parquet) found",
        ));
    }
    Ok(files)
}

/// A batch of documents and where it stands in the corpus.
struct Batch {
    seq: u64,
    texts: Vec<String>,
}

/// The most bytes of text in one batch (a single larger document is a batch of its own).
const BATCH_BYTES: usize = 1 << 20;

/// Reads every file's documents in order into batches; returns the files' (size, sha256).
/// Stops early (with the hashes so far) when the other side has hung up.
fn read_all(files: &[PathBuf], field: &str, tx: &SyncSender<Result<Batch>>) -> Result<Vec<(u64, String)>> {
    let mut seq = 0u64;
    let mut pending: Vec<String> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut open = true;
    let mut hashes = Vec::with_capacity(files.len());
    for path in files {
        let mut emit = |text: String| -> bool {
            pending_bytes += text.len();
            pending.push(text);
            if pending_bytes >= BATCH_BYTES {
                pending_bytes = 0;
                open = tx.send(Ok(Batch { seq, texts: std::mem::take(&mut pending) })).is_ok();
                seq += 1;
            }
            open
        };
        read_documents(path, field, &mut emit)?;
        if !open {
            return Ok(hashes);
        }
        hashes.push(hash_file(path)?);
    }
    if !pending.is_empty() {
        let _ = tx.send(Ok(Batch { seq, texts: pending }));
    }
    Ok(hashes)
}

/// Size and sha256 of a file, streamed.
fn hash_file(path: &Path) -> Result<(u64, String)> {
    let cannot = |e: std::io::Error| bad(path.display(), format!("cannot read: {e}"));
    let size = std::fs::metadata(path).map_err(cannot)?.len();
    Ok((size, runtime::cpu_cache::sha256_file(path).map_err(cannot)?))
}

/// Calls `emit` with each document of `path` in order; stops early when `emit` returns false.
fn read_documents(path: &Path, field: &str, emit: &mut dyn FnMut(String) -> bool) -> Result<()> {
    let name = path.display().to_string();
    let open = || std::fs::File::open(path).map_err(|e| bad(&name, format!("cannot read: {e}")));
    match kind_of(path).unwrap_or(Kind::Text) {
        Kind::Text => {
            let size = std::fs::metadata(path).map_err(|e| bad(&name, format!("cannot read: {e}")))?.len();
            if size > MAX_DOCUMENT {
                return Err(bad(&name, format!("{size} bytes: a text file is one document, and one document may be at most 1 GiB")));
            }
            let bytes = std::fs::read(path).map_err(|e| bad(&name, format!("cannot read: {e}")))?;
            let text = String::from_utf8(bytes)
                .map_err(|e| bad(&name, format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))?;
            if !text.is_empty() {
                emit(text);
            }
            Ok(())
        }
        Kind::Jsonl => read_jsonl(&name, BufReader::new(open()?), field, emit),
        Kind::JsonlGz => read_jsonl(&name, BufReader::new(flate2::read::MultiGzDecoder::new(open()?)), field, emit),
        Kind::JsonlZst => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(open()?).map_err(|e| bad(&name, format!("not a zstd stream: {e}")))?;
            read_jsonl(&name, BufReader::new(decoder), field, emit)
        }
        Kind::Parquet => read_parquet(path, field, emit),
    }
}

fn read_jsonl(name: &str, mut reader: impl BufRead, field: &str, emit: &mut dyn FnMut(String) -> bool) -> Result<()> {
    let mut line = Vec::new();
    let mut offset = 0u64;
    for n in 1.. {
        line.clear();
        // Bounded: a line is one document, and one document may be at most 1 GiB.
        let read = (&mut reader)
            .take(MAX_DOCUMENT + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| bad(format!("{name}:{n}"), format!("cannot read: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        if read as u64 > MAX_DOCUMENT {
            return Err(bad(format!("{name}:{n}"), "the line is over 1 GiB: one document may be at most 1 GiB"));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|e| bad(format!("{name}:{n}"), format!("not UTF-8 (invalid byte at offset {})", offset + e.valid_up_to() as u64)))?;
        offset += read as u64;
        if text.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("{name}:{n}"), format!("not a JSON object: {e}")))?;
        let Some(obj) = v.as_object() else { return Err(bad(format!("{name}:{n}"), "not a JSON object")) };
        let Some(s) = obj.get(field).and_then(|t| t.as_str()) else {
            return Err(bad(format!("{name}:{n}"), format!("no string field {field:?}")));
        };
        if !emit(s.to_string()) {
            return Ok(());
        }
    }
    Ok(())
}

fn read_parquet(path: &Path, field: &str, emit: &mut dyn FnMut(String) -> bool) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| bad(&name, format!("cannot read: {e}")))?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(&name, format!("not a readable parquet file: {e}")))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let Some(column) = schema.columns().iter().position(|c| c.path().string() == field) else {
        let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
        return Err(bad(&name, format!("no column {field:?} (columns: {})", names.join(", "))));
    };
    let projection = parquet::schema::types::Type::group_type_builder("schema")
        .with_fields(vec![schema.column(column).self_type_ptr()])
        .build()
        .map_err(|e| bad(&name, format!("cannot read column {field:?}: {e}")))?;
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| bad(&name, format!("row group {g}: {e}")))?;
        let rows = group.get_row_iter(Some(projection.clone())).map_err(|e| bad(&name, format!("row group {g}: {e}")))?;
        for (r, row) in rows.enumerate() {
            let row = row.map_err(|e| bad(&name, format!("row group {g}, row {r}: {e}")))?;
            match row.get_column_iter().next().map(|(_, f)| f) {
                Some(Field::Str(s)) => {
                    if !emit(s.clone()) {
                        return Ok(());
                    }
                }
                Some(Field::Null) => {}
                other => {
                    return Err(bad(&name, format!("row group {g}, row {r}: column {field:?} is not a string ({other:?})")));
                }
            }
        }
    }
    Ok(())
}

/// What the tokenizing threads need of the tokenizer.
struct Encoder {
    tokenizer: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl Encoder {
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> std::result::Result<(), String> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| format!("the tokenizer cannot encode a document: {e}"))?;
        out.extend(self.bos);
        out.extend_from_slice(enc.get_ids());
        out.extend(self.eos);
        Ok(())
    }
}

/// The tokenizer at `path` with the settings of the `tokenizer_config.json` beside it, and the
/// sha256 of the tokenizer file.
fn load_encoder(path: &Path) -> Result<(Encoder, String, usize)> {
    let name = path.display().to_string();
    let crate::Tokenizer::Hf(tokenizer, sha) = crate::Tokenizer::load(Some(path))? else {
        return Err(bad(&name, "internal: a tokenizer file loads as an HF tokenizer"));
    };
    let tokenizer = *tokenizer;
    let config_path = path.with_file_name("tokenizer_config.json");
    let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| bad(config_path.display(), format!("not JSON: {e}")))?,
        Err(_) => serde_json::Value::Null,
    };
    let token = |key: &str| -> Option<String> {
        match config.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let id = |key: &str| -> Result<Option<u32>> {
        match token(key) {
            None => Ok(None),
            Some(t) => tokenizer
                .token_to_id(&t)
                .map(Some)
                .ok_or_else(|| bad(config_path.display(), format!("{key} {t:?} is not in the tokenizer's vocabulary"))),
        }
    };
    let add_bos = config.get("add_bos_token").and_then(|b| b.as_bool()).unwrap_or(false);
    let bos = if add_bos { id("bos_token")? } else { None };
    let eos = id("eos_token")?;
    let vocab = tokenizer.get_vocab_size(true);
    if vocab as u64 > 1 << 32 {
        return Err(bad(&name, format!("the vocabulary has {vocab} tokens, more than a uint32 shard can hold")));
    }
    Ok((Encoder { tokenizer, bos, eos }, sha, vocab))
}

/// Tokenizes the corpus `inputs` with the tokenizer at `tokenizer` into `out` (which must be
/// a new or empty directory the caller has locked), calling `progress` as batches are
/// written. See the module's documentation for the format.
pub fn tokenize(
    inputs: &[PathBuf],
    tokenizer: &Path,
    out: &Path,
    opts: &TokenizeOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<Summary> {
    if opts.workers == 0 || opts.shard_tokens == 0 {
        return Err(Error::Unsupported("tokenize needs at least one worker and one token per shard".into()));
    }
    let files = corpus_files(inputs)?;
    let (encoder, tokenizer_sha256, vocab) = load_encoder(tokenizer)?;
    let wide = vocab > 1 << 16;
    let dtype = if wide { "uint32" } else { "uint16" };
    let encoder = std::sync::Arc::new(encoder);
    let (batch_tx, batch_rx) = sync_channel::<Result<Batch>>(opts.workers * 2);
    let batch_rx = std::sync::Arc::new(std::sync::Mutex::new(batch_rx));
    let (done_tx, done_rx) = sync_channel::<Done>(opts.workers * 2);
    std::thread::scope(|scope| -> Result<Summary> {
        let field = opts.field.clone();
        let files_ref = &files;
        let reader = scope.spawn(move || {
            let hashes = read_all(files_ref, &field, &batch_tx);
            if hashes.is_err() {
                // Stops the writer; the reader's own error is the one reported.
                let _ = batch_tx.send(Err(Error::Unsupported("the corpus reader stopped".into())));
            }
            hashes
        });
        for _ in 0..opts.workers {
            let (rx, tx, encoder) = (batch_rx.clone(), done_tx.clone(), encoder.clone());
            scope.spawn(move || worker(&rx, &tx, &encoder));
        }
        drop(done_tx);
        let written = write_in_order(&done_rx, out, wide, opts.shard_tokens, &mut progress);
        drop(done_rx); // unblocks the workers and the reader if the writer failed
        let hashes = reader.join().map_err(|_| Error::Unsupported("internal: the reader thread panicked".into()))?;
        let hashes = hashes?;
        let (shards, totals) = written?;
        let sources: Vec<serde_json::Value> = files
            .iter()
            .zip(&hashes)
            .map(|(f, (size, sha))| serde_json::json!({"file": f.display().to_string(), "size": size, "sha256": sha}))
            .collect();
        let index = serde_json::json!({
            "format": FORMAT,
            "dtype": dtype,
            "tokens": totals.tokens,
            "documents": totals.documents,
            "text_bytes": totals.bytes,
            "tokenizer_sha256": tokenizer_sha256,
            "vocab_size": vocab,
            "field": opts.field,
            "shards": shards.iter().map(|(file, tokens, sha)| serde_json::json!({"file": file, "tokens": tokens, "sha256": sha})).collect::<Vec<_>>(),
            "sources": sources,
        });
        let text = serde_json::to_string_pretty(&index).expect("internal: a json! value serializes") + "\n";
        write_atomic(&out.join(INDEX), text.as_bytes())?;
        Ok(Summary { shards: shards.len(), progress: totals, dtype })
    })
}

type Done = Result<(u64, Vec<u32>, u64, u64)>;

/// A written shard: file name, tokens, sha256.
type ShardEntry = (String, u64, String);

/// Takes batches until the queue closes; sends each batch's tokens, bytes and documents.
fn worker(rx: &std::sync::Mutex<Receiver<Result<Batch>>>, tx: &SyncSender<Done>, encoder: &Encoder) {
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(batch) = next else { return };
        let result = batch.and_then(|b| {
            let mut ids = Vec::new();
            let bytes = b.texts.iter().map(|t| t.len() as u64).sum();
            for t in &b.texts {
                encoder.encode(t, &mut ids).map_err(Error::Unsupported)?;
            }
            Ok((b.seq, ids, bytes, b.texts.len() as u64))
        });
        let failed = result.is_err();
        if tx.send(result).is_err() || failed {
            return;
        }
    }
}

/// Puts the workers' batches back in corpus order and cuts the stream into shards; returns
/// (file, tokens, sha256) of each shard and the totals.
fn write_in_order(
    rx: &Receiver<Done>,
    out: &Path,
    wide: bool,
    shard_tokens: usize,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Vec<ShardEntry>, Progress)> {
    let mut waiting: BTreeMap<u64, (Vec<u32>, u64, u64)> = BTreeMap::new();
    let mut next = 0u64;
    let mut shard: Option<ShardFile> = None;
    let mut shards = Vec::new();
    let mut totals = Progress::default();
    for done in rx.iter() {
        let (seq, ids, bytes, docs) = done?;
        waiting.insert(seq, (ids, bytes, docs));
        while let Some((ids, bytes, docs)) = waiting.remove(&next) {
            next += 1;
            totals.bytes += bytes;
            totals.documents += docs;
            totals.tokens += ids.len() as u64;
            let mut rest: &[u32] = &ids;
            while !rest.is_empty() {
                let file = match &mut shard {
                    Some(f) => f,
                    None => shard.insert(ShardFile::create(out, shards.len(), wide)?),
                };
                let take = (shard_tokens - file.tokens as usize).min(rest.len());
                file.append(&rest[..take])?;
                rest = &rest[take..];
                if file.tokens as usize == shard_tokens {
                    shards.push(shard.take().expect("internal: a shard is open").finish()?);
                }
            }
            progress(&totals);
        }
    }
    if !waiting.is_empty() {
        return Err(Error::Unsupported("internal: a batch of the corpus was lost".into()));
    }
    if let Some(file) = shard.take() {
        shards.push(file.finish()?);
    }
    if totals.tokens == 0 {
        return Err(Error::Data { path: out.display().to_string(), message: "the corpus has no documents".into() });
    }
    Ok((shards, totals))
}

/// The fixed size of a shard's `.npy` header (magic, version, length, the padded dict): the
/// token count, known only at the end, is written into it last.
const HEADER: usize = 128;

/// A shard being written: tokens streamed into a hidden temporary file (memory stays at the
/// write buffer whatever the shard size), the header filled in and the file renamed into
/// place when it is complete.
struct ShardFile {
    name: String,
    tmp: PathBuf,
    out: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    wide: bool,
    tokens: u64,
}

impl ShardFile {
    fn create(out: &Path, n: usize, wide: bool) -> Result<ShardFile> {
        use std::io::Write;
        let name = format!("shard_{n:05}.npy");
        let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
        let io = |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", tmp.display()));
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, f);
        file.write_all(&[0u8; HEADER]).map_err(io)?;
        Ok(ShardFile { name, tmp, out: out.to_path_buf(), file, wide, tokens: 0 })
    }

    fn append(&mut self, tokens: &[u32]) -> Result<()> {
        use std::io::Write;
        let mut bytes = Vec::with_capacity(tokens.len() * 4);
        for &t in tokens {
            if self.wide {
                bytes.extend_from_slice(&t.to_le_bytes());
            } else {
                bytes.extend_from_slice(&(t as u16).to_le_bytes());
            }
        }
        self.file.write_all(&bytes).map_err(|e| Error::Io(format!("cannot write {}: {e}", self.tmp.display())))?;
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    /// Writes the header, syncs, renames the file into place; returns (file, tokens, sha256).
    fn finish(self) -> Result<ShardEntry> {
        use std::io::{Seek, Write};
        let tmp = self.tmp.clone();
        let result = (|| -> std::io::Result<()> {
            let mut f = self.file.into_inner().map_err(|e| e.into_error())?;
            let descr = if self.wide { "<u4" } else { "<u2" };
            let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}", self.tokens);
            while header.len() < HEADER - 11 {
                header.push(' ');
            }
            header.push('\n');
            let mut head = b"\x93NUMPY\x01\x00".to_vec();
            head.extend_from_slice(&((HEADER - 10) as u16).to_le_bytes());
            head.extend_from_slice(header.as_bytes());
            debug_assert_eq!(head.len(), HEADER);
            f.seek(std::io::SeekFrom::Start(0))?;
            f.write_all(&head)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.out.join(&self.name))?;
            std::fs::File::open(&self.out)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Io(format!("cannot write {}: {e}", self.out.join(&self.name).display())));
        }
        let (_, sha) = hash_file(&self.out.join(&self.name))?;
        Ok((self.name, self.tokens, sha))
    }
}

/// Reads every shard of the tokenized directory `dir` and checks its size and sha256 against
/// `index.json` (what `train` does not do at start-up, so as not to read the corpus); returns
/// the number of shards checked. A mismatch is an error naming the shard.
pub fn verify(dir: &Path) -> Result<usize> {
    let index_path = dir.join(INDEX);
    let text = std::fs::read_to_string(&index_path).map_err(|e| bad(index_path.display(), format!("cannot read: {e}")))?;
    let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(index_path.display(), format!("not JSON: {e}")))?;
    let shards = index.get("shards").and_then(|s| s.as_array()).ok_or_else(|| bad(index_path.display(), "missing or bad \"shards\""))?;
    for s in shards {
        let (Some(file), Some(want)) = (s.get("file").and_then(|f| f.as_str()), s.get("sha256").and_then(|h| h.as_str())) else {
            return Err(bad(index_path.display(), "a shard without \"file\" or \"sha256\""));
        };
        if file.contains('/') || file.contains("..") {
            return Err(bad(index_path.display(), format!("shard {file:?} is not a file of the directory")));
        }
        let path = dir.join(file);
        let (_, got) = hash_file(&path)?;
        if got != want {
            return Err(bad(path.display(), format!("its sha256 is {got}, the index says {want}: the shard changed since tokenizing")));
        }
    }
    Ok(shards.len())
}
