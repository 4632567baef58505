//! Element types and tensor types of traced values: the project-wide vocabulary of `dtype`.
pub use dtype::{DType, TensorType};
