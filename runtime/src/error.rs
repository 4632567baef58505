//! The runtime's error type: PJRT failures keep their {call, code, message}; everything else
//! names the file, argument or shape at fault.
use dtype::TensorType;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure reported by the plugin or the loader (call, code and message inside).
    #[error(transparent)]
    Pjrt(#[from] xla_sys::Error),
    #[error("unknown plugin {0:?}: expected cpu, cuda, tpu or a path to a PJRT plugin .so")]
    BadPluginSpec(String),
    #[error("PJRT plugin file {0} does not exist")]
    PluginMissing(PathBuf),
    #[error("PJRT plugin path {0} is a directory; expected a PJRT plugin .so file")]
    PluginIsDirectory(PathBuf),
    #[error("no {what} PJRT plugin found; looked in: {looked}. {hint}")]
    PluginNotFound { what: &'static str, looked: String, hint: String },
    #[error("cannot install the {what}: {reason}. {hint}")]
    Install { what: &'static str, reason: String, hint: String },
    #[error("{0}")]
    Io(String),
    #[error("the program needs {needed} devices but the client has {available}{hint}")]
    NotEnoughDevices { needed: usize, available: usize, hint: String },
    #[error("{0}")]
    Argument(String),
    #[error("the program takes {expected} arguments but {actual} were given")]
    ArgumentCount { expected: usize, actual: usize },
    #[error("argument {index}: the program expects {expected}, got {actual}")]
    ArgumentType { index: usize, expected: TensorType, actual: TensorType },
    #[error("argument {index}: the program expects it placed as {expected}, but it is placed as {actual}")]
    ArgumentSharding { index: usize, expected: String, actual: String },
    #[error("argument {index}: its array is on other devices than the program's (device {device} differs)")]
    ArgumentDevices { index: usize, device: usize },
    #[error("output {index} has type {ty}, which gemma-xla cannot hold (no complex, fp8 or sub-byte types); nothing was run")]
    UnsupportedOutput { index: usize, ty: String },
    #[error("argument {index}: the program donates this parameter, so the array must be moved in (Arg::Donate), not lent")]
    MustDonate { index: usize },
    #[error(transparent)]
    Sharding(#[from] sharding::Error),
    #[error("invalid program: {0}")]
    Program(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::Io(format!("{context}: {e}"))
    }
}
