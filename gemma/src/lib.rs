//! Gemma 1 on `graph`: configuration (HF config.json or presets), the model as a function
//! of traced parameters, and the loss. Knows nothing of PJRT.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod checkpoint;
mod config;
pub mod decode;
pub mod lora;
mod model;
pub mod rng;
pub mod rules;
pub mod stack;
mod train;

pub use checkpoint::{
    save_model, save_safetensors, save_safetensors_streaming, write_atomic, write_atomic_with, Checkpoint, FileBytes, OpenFile, SaveTensor,
    TensorMeta, TensorRef,
};
pub use config::{Config, Family, LayerKind, MODEL_TYPES, PRESETS};
pub use model::{
    block, causal_attention_mask, default_positions, embed, forward, layer_period, loss, model, model_args, model_with_adapters,
    model_with_layout, param_shapes, param_types, trace_loss, trace_model, unembed, Activations, BlockOutput, ModelOptions, Params,
};
pub use train::{
    init_params, lora_train_args, train_args, train_args_weighted, train_args_with, train_step, train_step_with, Hyper, Schedule,
};

/// Why reading a config or checkpoint, saving files, or choosing shardings failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `config.json` that cannot be parsed or describes no supported Gemma 1 model, or an
    /// unknown preset.
    #[error("{path}: {message}")]
    Config {
        /// The file (`config.json` when parsing text, `preset` for a preset name).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A file system operation failed, or an output path is not a file that can be written.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory concerned.
        path: String,
        /// The OS error, or what is wrong with the path.
        message: String,
    },
    /// A checkpoint file or directory that cannot be read or saved: a bad header or index,
    /// an unsupported dtype, a truncated or shrunk file, a tensor of the wrong shape.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file or directory concerned.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint's tensor names do not match the config's.
    #[error("{dir}: {problem} tensors: {}", names.join(", "))]
    Tensors {
        /// The model directory.
        dir: String,
        /// `missing` or `unexpected`.
        problem: String,
        /// The tensors concerned.
        names: Vec<String>,
    },
    /// A name that is not one of the config's checkpoint tensors.
    #[error("{name} is not a tensor of this Gemma config")]
    UnknownTensor {
        /// The name asked for.
        name: String,
    },
    /// A mesh axis that no sharding rule knows (see `rules::MESH_AXES`).
    #[error("mesh axis {axis:?} has no sharding rule (known axes: {known})")]
    UnknownMeshAxis {
        /// The mesh's axis name.
        axis: String,
        /// The known axes, comma-separated.
        known: String,
    },
    /// A tensor dimension that its mesh axes do not divide (boxed: it is large).
    #[error(transparent)]
    Sharding(Box<rules::ShardingError>),
    /// A batch size below 1 or not a multiple of the size of the mesh axes it is split over.
    #[error("batch {batch} cannot be split over {axis}={axis_size}; {suggestion}")]
    Batch {
        /// The batch size B.
        batch: i64,
        /// The mesh axes the batch is split over, comma-separated.
        axis: String,
        /// The product of their sizes.
        axis_size: i64,
        /// A batch size or mesh that would work, in words.
        suggestion: String,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), message: e.to_string() }
    }

    pub(crate) fn checkpoint(path: &std::path::Path, message: String) -> Error {
        Error::Checkpoint { path: path.display().to_string(), message }
    }
}
