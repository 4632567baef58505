//! Sharding as pure data: named device meshes and partition specs (and the Shardy / GSPMD
//! annotation text they become), decoding of XLA's `OpSharding`, and the index math that
//! cuts a full array into per-device shards and puts shards back together.
#![forbid(unsafe_code)]

mod mesh;
mod named;
mod op_sharding;
mod tiles;

pub use mesh::{Mesh, PartitionSpec};
pub use named::NamedSharding;
pub use op_sharding::OpSharding;
pub use tiles::{assemble, shard_of, Tiling};

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("cannot decode xla.OpSharding: {0}")]
    Decode(String),
    #[error("unsupported sharding: {0}")]
    Unsupported(String),
    #[error("sharding {sharding} does not fit shape {shape:?}: {why}")]
    Mismatch { sharding: String, shape: Vec<i64>, why: String },
    #[error("mesh: {0}")]
    Mesh(String),
    #[error("axis {axis:?} is not in the mesh {mesh}")]
    UnknownAxis { axis: String, mesh: String },
}

pub type Result<T> = std::result::Result<T, Error>;
