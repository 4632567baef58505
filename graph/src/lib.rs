//! Tracing Rust tensor code into a graph, reverse-mode autodiff, and lowering to StableHLO
//! text. Knows nothing of PJRT.
//!
//! ```ignore
//! let f = graph::trace("mlp", &[("x", TensorType::new(DType::F32, &[4, 3])), ("w", TensorType::new(DType::F32, &[3, 2]))],
//!     |a| vec![a[0].matmul(&a[1]).tanh().sum_all()])?;
//! let g = graph::value_and_grad(&f, &[1])?;  // loss and d loss / d w
//! let text = g.to_stablehlo();
//! ```
#![forbid(unsafe_code)]

mod autodiff;
mod call;
mod composite;
mod eval;
mod function;
mod lower;
mod ops;
mod prim;
mod trace;
mod tree;
mod types;

pub use autodiff::{grad, value_and_grad, value_and_grad_tree, vjp};
pub use call::trace_tree;
pub use eval::eval;
pub use function::{Function, Node, Output, Param, Remat, RematMark};
pub use lower::LowerOptions;
pub use prim::{Cmp, DotDims, Literal, Prim};
pub use trace::{trace, Loc, Tensor, Tracer};
pub use tree::{path_order, Tree};
pub use types::{DType, TensorType};

/// All primitives, for tables that must cover each of them (e.g. the gradient checks).
pub fn all_primitives() -> Vec<Prim> {
    use strum::IntoEnumIterator;
    Prim::iter().collect()
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{op} at {loc}: {message} (inputs: {})", fmt_types(inputs))]
    Shape { op: &'static str, inputs: Vec<TensorType>, loc: Loc, message: String },
    #[error("no VJP rule for primitive {prim} (op at {loc})")]
    NoVjp { prim: &'static str, loc: Loc },
    #[error("call of {function} at {loc}: {message}")]
    Call { function: String, loc: Loc, message: String },
    #[error("{function} has no parameter {index} (it has {count})")]
    NoSuchParam { function: String, index: usize, count: usize },
    #[error("sharding of {what}: {cause}")]
    Sharding { what: String, cause: sharding::Error },
    #[error("tree: {0}")]
    Tree(String),
    #[error("{0}")]
    Invalid(String),
    /// The reference evaluator could not evaluate a node (`graph::eval`).
    #[error("evaluating {op} at {loc}: {message}")]
    Eval { op: &'static str, loc: Loc, message: String },
}

fn fmt_types(t: &[TensorType]) -> String {
    if t.is_empty() {
        return "none".into();
    }
    t.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}
