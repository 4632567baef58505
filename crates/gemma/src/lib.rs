//! Gemma 1 on `graph`: configuration (HF config.json or presets), the model as a function
//! of traced parameters, and the loss. Knows nothing of PJRT.
#![forbid(unsafe_code)]

mod config;
mod model;

pub use config::Config;
pub use model::{forward, loss, param_shapes, param_types, trace_loss, Params, Trace};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), message: e.to_string() }
    }
}
