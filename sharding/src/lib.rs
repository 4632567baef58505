//! Sharding as pure data: named device meshes and partition specs (and the Shardy / GSPMD
//! annotation text they become), decoding of XLA's `OpSharding`, and the index math that
//! cuts a full array into per-device shards and puts shards back together.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod mesh;
mod named;
mod op_sharding;
mod tiles;

pub use mesh::{Mesh, PartitionSpec};
pub use named::NamedSharding;
pub use op_sharding::OpSharding;
pub use tiles::{assemble, copy_box, shard_of, Tiling};

/// Why a sharding could not be decoded, built or applied to an array.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Error {
    /// The bytes are not a valid serialized `xla.OpSharding`, or they describe an impossible
    /// tile assignment (a maximal sharding without a device, an iota transpose that does not fit).
    #[error("cannot decode xla.OpSharding: {0}")]
    Decode(String),
    /// A valid sharding this crate does not handle: tuple, manual or subgroup `OpSharding`s, or
    /// GSPMD text for a spec whose axes are out of mesh order.
    #[error("unsupported sharding: {0}")]
    Unsupported(String),
    /// The sharding cannot place an array of this shape (wrong rank, wrong device count,
    /// device id out of range).
    #[error("sharding {sharding} does not fit shape {shape:?}: {why}")]
    Mismatch {
        /// The sharding, in the text form of [`OpSharding::describe`] or [`NamedSharding`]'s `Display`.
        sharding: String,
        /// The dimensions of the array.
        shape: Vec<i64>,
        /// What does not fit.
        why: String,
    },
    /// A malformed mesh (repeated or empty axis name, size below 1, text not `NAME=SIZE,...`),
    /// or an axis used twice in one partition spec.
    #[error("mesh: {0}")]
    Mesh(String),
    /// A partition spec names an axis that the mesh does not have.
    #[error("axis {axis:?} is not in the mesh {mesh}")]
    UnknownAxis {
        /// The axis name the spec uses.
        axis: String,
        /// The mesh, in its `Display` form (`data=2,model=4`).
        mesh: String,
    },
}

/// The result type of this crate's fallible functions.
pub type Result<T> = std::result::Result<T, Error>;
