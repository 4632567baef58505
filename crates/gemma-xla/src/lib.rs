//! Where graph meets runtime: compiling traced functions (with a cache keyed by input
//! types), running them on host arrays, and the file formats the CLI reads and writes.
#![forbid(unsafe_code)]

pub mod files;
pub mod jit;
pub mod npy;

pub use jit::{dtype_of, element_type, Jit, JitStats};
