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
#![warn(missing_docs)]

mod autodiff;
mod call;
mod composite;
mod eval;
mod function;
mod lower;
mod ops;
mod prim;
mod scan;
mod trace;
mod tree;
mod types;

pub use autodiff::{grad, value_and_grad, value_and_grad_tree, vjp};
pub use call::trace_tree;
pub use eval::eval;
pub use function::{Function, Node, Output, Param, Remat, RematMark};
pub use lower::LowerOptions;
pub use prim::{Cmp, DotDims, Literal, Prim};
pub use scan::{scan, Scan, ScanOptions};
pub use trace::{trace, Loc, Tensor, Tracer};
pub use tree::{path_order, Tree};
pub use types::{DType, TensorType};

/// All primitives, for tables that must cover each of them (e.g. the gradient checks).
pub fn all_primitives() -> Vec<Prim> {
    use strum::IntoEnumIterator;
    Prim::iter().collect()
}

/// Why tracing, calling, differentiating, sharding, lowering or evaluating a function failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An op was given operands its shape rule refuses (operand count, rank, dims or dtype);
    /// the first such error of a trace is the one reported.
    #[error("{op} at {loc}: {message} (inputs: {})", fmt_types(inputs))]
    Shape {
        /// The op's name: the primitive's (`Prim::name`) or the composite's.
        op: &'static str,
        /// The types of its operands.
        inputs: Vec<TensorType>,
        /// Where the user code called the op.
        loc: Loc,
        /// What the shape rule objects to.
        message: String,
    },
    /// The backward pass reached a primitive that has no VJP rule.
    #[error("no VJP rule for primitive {prim} (op at {loc})")]
    NoVjp {
        /// The primitive's name.
        prim: &'static str,
        /// Where the forward op was traced.
        loc: Loc,
    },
    /// A traced function was called (`Function::call`, `Function::call_tree`) with
    /// arguments that do not match its parameters in number, type, trace or name.
    #[error("call of {function} at {loc}: {message}")]
    Call {
        /// The called function's name.
        function: String,
        /// Where the call was made.
        loc: Loc,
        /// What does not match.
        message: String,
    },
    /// A parameter index at or past the function's parameter count.
    #[error("{function} has no parameter {index} (it has {count})")]
    NoSuchParam {
        /// The function's name.
        function: String,
        /// The index asked for.
        index: usize,
        /// How many parameters the function has.
        count: usize,
    },
    /// A partition spec does not fit the function's mesh.
    #[error("sharding of {what}: {cause}")]
    Sharding {
        /// What was being sharded, in words (a parameter, an output, a `sharding_constraint`).
        what: String,
        /// Why the spec does not fit.
        cause: sharding::Error,
    },
    /// A malformed or clashing tree path, or a missing leaf (see `Tree`).
    #[error("tree: {0}")]
    Tree(String),
    /// Any other misuse, described in words (e.g. an unknown output name, a sharding without
    /// a mesh, differentiating with respect to an integer parameter).
    #[error("{0}")]
    Invalid(String),
    /// The reference evaluator could not evaluate a node (`graph::eval`).
    #[error("evaluating {op} at {loc}: {message}")]
    Eval {
        /// The node's primitive name.
        op: &'static str,
        /// Where the node was traced.
        loc: Loc,
        /// Why it could not be evaluated.
        message: String,
    },
}

fn fmt_types(t: &[TensorType]) -> String {
    if t.is_empty() {
        return "none".into();
    }
    t.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}
