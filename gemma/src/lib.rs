//! Gemma 1 on `graph`: configuration (HF config.json or presets), the model as a function
//! of traced parameters, and the loss. Knows nothing of PJRT.
#![forbid(unsafe_code)]

mod checkpoint;
mod config;
pub mod decode;
mod model;
pub mod rng;
pub mod rules;
mod train;

pub use checkpoint::{
    save_model, save_safetensors, save_safetensors_streaming, write_atomic, write_atomic_with, Checkpoint, FileBytes, OpenFile, SaveTensor,
    TensorMeta, TensorRef,
};
pub use config::Config;
pub use model::{
    block, causal_attention_mask, default_positions, embed, forward, loss, model, model_args, model_with_layout, param_shapes, param_types,
    trace_loss, trace_model, unembed, Activations, BlockOutput, ModelOptions, Params,
};
pub use train::{init_params, train_args, train_step, Hyper, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("{dir}: {problem} tensors: {}", names.join(", "))]
    Tensors { dir: String, problem: String, names: Vec<String> },
    #[error("{name} is not a tensor of this Gemma config")]
    UnknownTensor { name: String },
    #[error("mesh axis {axis:?} has no sharding rule (known axes: {known})")]
    UnknownMeshAxis { axis: String, known: String },
    /// A tensor dimension that its mesh axes do not divide (boxed: it is large).
    #[error(transparent)]
    Sharding(Box<rules::ShardingError>),
    #[error("batch {batch} cannot be split over {axis}={axis_size}; {suggestion}")]
    Batch { batch: i64, axis: String, axis_size: i64, suggestion: String },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), message: e.to_string() }
    }

    pub(crate) fn checkpoint(path: &std::path::Path, message: String) -> Error {
        Error::Checkpoint { path: path.display().to_string(), message }
    }
}
