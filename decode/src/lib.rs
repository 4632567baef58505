//! Decoding and inference over a Gemma checkpoint, as owned values a Rust program holds:
//! [`Generator`] (weights placed once, a key/value cache donated to every call), [`Sampler`]
//! (greedy, temperature, top-k, top-p), chat templates ([`chat`]), the checkpoint's tokenizer
//! and text settings ([`text`]), and [`forward`] (logits, loss, gradients). No printing: the
//! caller sees each token through a callback.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chat;
mod chat_session;
pub mod forward;
mod generate;
pub mod text;

pub use chat_session::ChatSession;
pub use generate::{bucket, generate, Generated, Generator, Placement, Sampler, Timing};

/// Errors of decoding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error(transparent)]
    Files(#[from] data::Error),
    /// The devices or the plugin failed.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// A config, checkpoint or sharding rule was refused.
    #[error(transparent)]
    Gemma(#[from] gemma::Error),
    /// A program could not be traced, compiled or run (boxed: jit's errors are large).
    #[error(transparent)]
    Jit(Box<jit::Error>),
    /// A mesh or sharding was refused.
    #[error(transparent)]
    Sharding(#[from] sharding::Error),
    /// A file could not be read; `path` names it.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A file's contents are wrong; `path` names it.
    #[error("{path}: {message}")]
    Data {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A request this code cannot honour (the message says which and why).
    #[error("{0}")]
    Unsupported(String),
}

impl From<jit::Error> for Error {
    fn from(e: jit::Error) -> Error {
        Error::Jit(Box::new(e))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
