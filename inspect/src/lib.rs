//! Inspection of gemma-xla programs, each callable without the CLI: [`plan`] (every tensor's
//! split and what a training step needs per device, before compiling), [`dump`] (a program
//! through XLA's stages, with [`summary`] reading XLA's dump back) and [`tpu`] (what a
//! program compiled ahead of time for a TPU slice needs, and advice when it does not fit).
//! Functions return text and numbers; printing is the caller's.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cost;
pub mod dump;
pub mod plan;
pub mod summary;
pub mod tpu;

/// Errors of inspection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The train step or its setup was refused.
    #[error(transparent)]
    Train(#[from] train::Error),
    /// An output file could not be written.
    #[error(transparent)]
    Files(#[from] data::Error),
    /// The plugin, compiler or topology failed.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// A config or sharding rule was refused.
    #[error(transparent)]
    Gemma(#[from] gemma::Error),
    /// A program could not be traced or lowered (boxed: jit's errors are large).
    #[error(transparent)]
    Jit(Box<jit::Error>),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A setting this code refuses, or XLA's output not as expected (the message says which).
    #[error("{0}")]
    Invalid(String),
    /// An error with what was being done when it happened.
    #[error("{context}: {cause}")]
    Context {
        /// What was being done.
        context: String,
        /// What went wrong.
        cause: Box<Error>,
    },
}

impl From<jit::Error> for Error {
    fn from(e: jit::Error) -> Error {
        Error::Jit(Box::new(e))
    }
}

impl From<std::fmt::Error> for Error {
    fn from(_: std::fmt::Error) -> Error {
        Error::Invalid("internal: formatting into a string failed".into())
    }
}

impl Error {
    /// This error, with what was being done in front of it.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context { context: context.into(), cause: Box::new(self) }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns `Error::Invalid` with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// `1.50 GiB`, `12.00 MiB`, `512 B`: bytes in binary units.
pub fn human_bytes(bytes: u64) -> String {
    let units = [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    match units.iter().find(|(_, size)| bytes >= *size) {
        Some((name, size)) => format!("{:.2} {name}", bytes as f64 / *size as f64),
        None => format!("{bytes} B"),
    }
}
