//! The file formats the CLI reads and writes (.npy, atomic writes), training data (`data`:
//! tokenizers, datasets, batches) and the library errors of the CLI crate; compiling traced
//! functions lives in the `jit` crate.
#![forbid(unsafe_code)]

pub mod answer;
pub mod chat;
pub mod data;
pub mod eval;
pub mod files;
pub mod generate;
pub mod hosts;
pub mod npy;
pub mod text;

/// Errors of the library half of this crate; the binary wraps them with anyhow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error(transparent)]
    Gemma(#[from] gemma::Error),
    /// Boxed: jit's errors are large.
    #[error(transparent)]
    Jit(Box<jit::Error>),
    #[error(transparent)]
    Sharding(#[from] sharding::Error),
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    /// Bad training data or tokenizer; `path` is the file (with `:line` for .jsonl), the
    /// directory, or `built-in corpus`.
    #[error("{path}: {message}")]
    Data { path: String, message: String },
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("refusing to write {output}: it is the input {input}")]
    OutputIsInput { output: String, input: String },
}

impl From<jit::Error> for Error {
    fn from(e: jit::Error) -> Error {
        Error::Jit(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
