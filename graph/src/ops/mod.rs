//! Primitive families: each file holds, per primitive, the shape rule, the lowering and the
//! VJP rule, plus the user-facing `Tensor` methods that create it.
pub(crate) mod barrier;
pub(crate) mod dot;
pub(crate) mod elementwise;
pub(crate) mod indexing;
pub(crate) mod random;
pub(crate) mod reduce;
pub(crate) mod shape;
pub(crate) mod sharding;
