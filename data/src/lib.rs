//! Files and formats of the model runtime: tokenizers and training datasets ([`Dataset`]),
//! `.npy` arrays ([`npy`]), HF checkpoints mapped from disk ([`checkpoint`]), and outputs
//! written so that a crash never leaves half a file ([`files`]). No printing, no exiting:
//! every failure is an [`Error`] naming the file at fault.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chat;
pub mod checkpoint;
mod dataset;
pub mod files;
pub mod npy;
pub mod peft;
pub mod sft;
mod shards;
pub mod tensorboard;
pub mod tokenize;

/// The HF tokenizers crate this crate reads `tokenizer.json` with.
pub use tokenizers;

pub use dataset::{permute, Dataset, Tokenizer, BUILTIN_CORPUS, DEFAULT_SEQ, MAX_TEXT_BYTES};
pub use shards::is_tokenized;

/// Errors of reading and writing the runtime's files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host array could not be made or converted.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// A checkpoint or config could not be read or written.
    #[error(transparent)]
    Gemma(#[from] gemma::Error),
    /// A file could not be read; `path` names it.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Bad training data or tokenizer; `path` is the file (with `:line` for .jsonl), the
    /// directory, or `built-in corpus`.
    #[error("{path}: {message}")]
    Data {
        /// Where the fault is.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An output could not be written (the message names it).
    #[error("{0}")]
    Io(String),
    /// A request this code cannot honour (the message says which and why).
    #[error("{0}")]
    Unsupported(String),
    /// An input lies inside a directory whose contents the run deletes.
    #[error("refusing to run: {input} is inside {dir}, {why}; copy it elsewhere first")]
    InputInsideOutput {
        /// The input, with its flag.
        input: String,
        /// The directory.
        dir: String,
        /// What the run does there.
        why: String,
    },
    /// An output path is one of the run's inputs.
    #[error("refusing to write {output}: it is the input {input}")]
    OutputIsInput {
        /// The output path.
        output: String,
        /// The input it would overwrite.
        input: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
