//! Where graph meets runtime: compiling traced functions (with a cache keyed by input
//! types), running them on host arrays, and the file formats the CLI reads and writes.
#![forbid(unsafe_code)]

pub mod files;
pub mod jit;
pub mod npy;

pub use jit::{dtype_of, element_type, Jit, JitStats};

/// Errors of the library half of this crate; the binary wraps them with anyhow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error(transparent)]
    Gemma(#[from] gemma::Error),
    #[error("cannot trace {name}: {cause}")]
    Trace { name: String, cause: graph::Error },
    #[error("cannot compile {name}: {cause}")]
    Compile { name: String, cause: runtime::Error },
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
