//! The closed set of primitives, close to StableHLO. Each family file in `ops/` holds the
//! shape rule, lowering and VJP rule of its primitives side by side; this file dispatches.
use crate::lower::Emitter;
use crate::ops::{barrier, dot, elementwise, indexing, random, reduce, shape, sharding};
use crate::trace::Tensor;
use crate::types::{DType, TensorType};

/// Constant data: one value (splat) or one per element, row-major.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Literal {
    /// Values of a float constant.
    Float(Vec<f64>),
    /// Values of an integer or pred constant, exact for 64-bit values (unsigned values above
    /// `i64::MAX` are held as their two's complement bit patterns).
    Int(Vec<i64>),
    /// No values: the constant of a tensor with no elements.
    #[default]
    Empty,
}

/// The direction of an elementwise comparison (`Prim::Compare`), StableHLO's
/// `comparison_direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cmp {
    /// `a == b`.
    #[default]
    Eq,
    /// `a != b`.
    Ne,
    /// `a < b`.
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
}

/// dot_general dimension numbers. Output: batch dims, then lhs free, then rhs free dims.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DotDims {
    /// Batch dimensions of the left operand, paired in order with `rhs_batch` (equal sizes).
    pub lhs_batch: Vec<usize>,
    /// Batch dimensions of the right operand, paired in order with `lhs_batch`.
    pub rhs_batch: Vec<usize>,
    /// Dimensions of the left operand that are summed over, paired in order with `rhs_contract`.
    pub lhs_contract: Vec<usize>,
    /// Dimensions of the right operand that are summed over, paired in order with `lhs_contract`.
    pub rhs_contract: Vec<usize>,
}

/// A primitive operation: what one node of a traced `Function` computes. Operands are the
/// node's inputs in order; a variant's fields are its static parameters, and `infer` is its
/// shape rule.
#[derive(Debug, Clone, PartialEq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Prim {
    // leaves
    /// Parameter `i` of the function (a leaf, made by `trace` only).
    Param(usize),
    /// A constant (no operands).
    Constant {
        /// The constant's type.
        ty: TensorType,
        /// One value for every element (a splat), or one per element in row-major order.
        value: Literal,
    },
    /// A tensor of type `ty` whose elements are their index along dimension `dim`:
    /// 0, 1, 2, ... (no operands).
    Iota {
        /// The output type.
        ty: TensorType,
        /// The dimension that counts up (below the rank).
        dim: usize,
    },
    /// Random u32 bits from a `u64[2]` key operand (Threefry); not differentiable.
    RngBitGenerator {
        /// The output shape.
        dims: Vec<i64>,
    },
    // elementwise unary
    /// `-x` (numeric dtypes).
    Neg,
    /// `e^x` (float dtypes).
    Exp,
    /// Natural logarithm (float dtypes).
    Log,
    /// Square root (float dtypes).
    Sqrt,
    /// `1 / sqrt(x)` (float dtypes).
    Rsqrt,
    /// Hyperbolic tangent (float dtypes).
    Tanh,
    /// The sigmoid `1 / (1 + e^-x)` (float dtypes).
    Logistic,
    /// Absolute value (numeric dtypes).
    Abs,
    /// -1, 0 or 1 by the sign of `x` (numeric dtypes); not differentiable.
    Sign,
    /// Sine, in radians (float dtypes).
    Sin,
    /// Cosine, in radians (float dtypes).
    Cos,
    /// Value conversion to another element type, same shape; the gradient flows only
    /// between float dtypes.
    Convert {
        /// The element type of the result.
        dtype: DType,
    },
    /// The same bits read as another element type of the same bit width; not differentiable.
    BitcastConvert {
        /// The element type of the result (same bit width as the operand's).
        dtype: DType,
    },
    /// The operand unchanged, with no cotangent flowing back through it (lowers to nothing).
    StopGradient,
    // elementwise binary (equal shapes; the user API broadcasts first)
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (integer division truncates toward zero).
    Div,
    /// `a` to the power `b`.
    Pow,
    /// The larger of `a` and `b`; ties split the cotangent evenly.
    Max,
    /// The smaller of `a` and `b`; ties split the cotangent evenly.
    Min,
    /// Bitwise and (logical for pred); integer or pred operands.
    And,
    /// Bitwise or (logical for pred); integer or pred operands.
    Or,
    /// The bits of `a` shifted right by `b`, filled with zeros (integer operands).
    ShiftRightLogical,
    /// `a` compared with `b` in the given direction: a pred result; not differentiable.
    Compare(Cmp),
    /// `mask ? a : b` for a pred mask and two values, all of one shape.
    Select,
    // linear algebra and shapes
    /// Contracts and batches two operands as the `DotDims` say (StableHLO `dot_general`).
    DotGeneral(DotDims),
    /// Broadcast to a new shape: operand dimension `i` becomes output dimension
    /// `broadcast_dims[i]`; operand dimensions of size 1 stretch, the others must match.
    BroadcastInDim {
        /// The output shape.
        dims: Vec<i64>,
        /// For each operand dimension, the output dimension it maps to (strictly increasing).
        broadcast_dims: Vec<usize>,
    },
    /// The same elements, row-major, in another shape of the same element count.
    Reshape {
        /// The output shape.
        dims: Vec<i64>,
    },
    /// Permutes dimensions: output dimension `i` is operand dimension `perm[i]`.
    Transpose {
        /// A permutation of `0..rank`.
        perm: Vec<usize>,
    },
    /// Static strided slice: per dimension, elements `start..limit` every `strides` elements.
    Slice {
        /// The first index of each dimension (inclusive).
        start: Vec<i64>,
        /// The end of each dimension's range (exclusive, at most the dimension's size).
        limit: Vec<i64>,
        /// The step of each dimension (>= 1).
        strides: Vec<i64>,
    },
    /// A block of operand 0 starting at runtime indices: operands 1..=rank are integer
    /// scalars, one per dimension, clamped so that the block fits.
    DynamicSlice {
        /// The block's shape (each size at most the operand's).
        sizes: Vec<i64>,
    },
    /// Operand 0 with operand 1 (same dtype and rank, no larger) written into it at runtime
    /// indices: the remaining operands are integer scalars, one per dimension, clamped so
    /// that the update fits.
    DynamicUpdateSlice,
    /// The operands joined along one dimension; they agree in dtype and every other dimension.
    Concatenate {
        /// The dimension they are joined along.
        dim: usize,
    },
    /// Operand 0 padded with the scalar operand 1 (same dtype), per dimension.
    Pad {
        /// Elements added before each dimension (>= 0).
        low: Vec<i64>,
        /// Elements added after each dimension (>= 0).
        high: Vec<i64>,
        /// Elements added between neighbouring elements of each dimension (>= 0).
        interior: Vec<i64>,
    },
    // reductions
    /// Sum over some axes, which are removed from the shape (not for pred).
    ReduceSum {
        /// The reduced dimensions, strictly increasing.
        axes: Vec<usize>,
    },
    /// Maximum over some axes, which are removed from the shape (not for pred); the
    /// cotangent is split evenly among the positions that attain the maximum.
    ReduceMax {
        /// The reduced dimensions, strictly increasing.
        axes: Vec<usize>,
    },
    // indexing: rows of a table by integer ids, and the transpose (embedding lookups)
    /// Rows of a table `[V, ...]` (operand 0) at integer ids (operand 1): the result has the
    /// ids' dimensions followed by the table's trailing ones; out-of-range ids are clamped.
    Gather,
    /// A table `[V, ...]` (operand 0) with the rows of the updates (operand 2, shaped like a
    /// `Gather` result) added at the integer ids (operand 1); out-of-range rows are dropped.
    ScatterAdd,
    // layout
    /// The operand unchanged, to be laid out over the function's mesh as `spec` says (JAX's
    /// `with_sharding_constraint`); lowers to nothing without a mesh of several devices.
    ShardingConstraint {
        /// One entry per operand dimension: the mesh axes it is split over.
        spec: ::sharding::PartitionSpec,
    },
    // scheduling: operand 0 once every operand is known (rematerialisation)
    /// Operand 0 unchanged, available only once every operand is (XLA's
    /// `optimization_barrier`); the cotangent goes to operand 0 only.
    OptimizationBarrier,
    /// Operand 0 unchanged (it lowers to nothing); its cotangent goes through an
    /// `OptimizationBarrier`, so XLA computes the cotangent once, into memory, instead of
    /// fusing its computation into every op that reads it.
    CotangentBarrier,
    // loops
    /// A loop over the leading axis of stacked operands (JAX's `lax.scan`): the operands are
    /// the initial carries, the stacked inputs `[length, ...]` and the loop-invariant
    /// operands, in the order of the body's parameters. Its results (carries, then stacked
    /// outputs) are read with `ScanResult`; the node's own type is a placeholder `pred[]`.
    Scan(std::rc::Rc<crate::scan::Scan>),
    /// Result `index` of the `Scan` node that is the only operand: the final carries first,
    /// then the stacked per-step outputs.
    ScanResult {
        /// Which result.
        index: usize,
        /// Its type.
        ty: TensorType,
    },
}

/// The tracer's message for complex values (runtime programs may hold them; traced ones not).
pub(crate) fn complex_refused(dtype: DType) -> String {
    format!("{dtype} values are not supported by the tracer (programs from elsewhere, such as JAX's, may use them with `gemma-xla run`)")
}

/// Which family implements a primitive.
enum Family {
    Elementwise,
    Dot,
    Shape,
    Reduce,
    Indexing,
    Random,
    Sharding,
    Barrier,
    Loop,
}

impl Prim {
    /// The primitive's snake_case name, as printed and in errors (`dot_general`, `reduce_sum`,
    /// `param`, ...).
    pub fn name(&self) -> &'static str {
        self.into()
    }

    fn family(&self) -> Family {
        use Prim::*;
        match self {
            Neg
            | Exp
            | Log
            | Sqrt
            | Rsqrt
            | Tanh
            | Logistic
            | Abs
            | Sign
            | Sin
            | Cos
            | Convert { .. }
            | BitcastConvert { .. }
            | StopGradient
            | Add
            | Sub
            | Mul
            | Div
            | Pow
            | Max
            | Min
            | And
            | Or
            | ShiftRightLogical
            | Compare(_)
            | Select => Family::Elementwise,
            DotGeneral(_) => Family::Dot,
            Param(_)
            | Constant { .. }
            | Iota { .. }
            | BroadcastInDim { .. }
            | Reshape { .. }
            | Transpose { .. }
            | Slice { .. }
            | DynamicSlice { .. }
            | DynamicUpdateSlice
            | Concatenate { .. }
            | Pad { .. } => Family::Shape,
            ReduceSum { .. } | ReduceMax { .. } => Family::Reduce,
            Gather | ScatterAdd => Family::Indexing,
            RngBitGenerator { .. } => Family::Random,
            ShardingConstraint { .. } => Family::Sharding,
            OptimizationBarrier | CotangentBarrier => Family::Barrier,
            Scan(_) | ScanResult { .. } => Family::Loop,
        }
    }

    /// The output type for inputs of these types, or a message saying what is wrong.
    pub fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, String> {
        if let Some(t) = inputs.iter().find(|t| t.dtype.is_complex()) {
            return Err(complex_refused(t.dtype));
        }
        let out = match self.family() {
            Family::Elementwise => elementwise::infer(self, inputs),
            Family::Dot => dot::infer(self, inputs),
            Family::Shape => shape::infer(self, inputs),
            Family::Reduce => reduce::infer(self, inputs),
            Family::Indexing => indexing::infer(self, inputs),
            Family::Random => random::infer(self, inputs),
            Family::Sharding => sharding::infer(self, inputs),
            Family::Barrier => barrier::infer(self, inputs),
            Family::Loop => crate::scan::infer(self, inputs),
        }?;
        if out.dtype.is_complex() {
            return Err(complex_refused(out.dtype));
        }
        Ok(out)
    }

    /// Emits StableHLO for this node; returns the SSA value of its result.
    pub(crate) fn lower(&self, e: &mut Emitter, args: &[(&str, &TensorType)], out: &TensorType) -> String {
        match self.family() {
            Family::Elementwise => elementwise::lower(self, e, args, out),
            Family::Dot => dot::lower(self, e, args, out),
            Family::Shape => shape::lower(self, e, args, out),
            Family::Reduce => reduce::lower(self, e, args, out),
            Family::Indexing => indexing::lower(self, e, args, out),
            Family::Random => random::lower(self, e, args, out),
            Family::Sharding => sharding::lower(self, e, args, out),
            Family::Barrier => barrier::lower(self, e, args, out),
            // Loops have several results: `lower::emit_nodes` lowers them itself.
            Family::Loop => unreachable!("internal: scans are lowered by emit_nodes"),
        }
    }

    /// Cotangents of the inputs given the cotangent `ct` of the output `y`; `None` per
    /// input that has no gradient (integer inputs, indices). `Err(())`: no VJP rule.
    pub(crate) fn vjp(&self, x: &[Tensor], y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
        match self.family() {
            Family::Elementwise => elementwise::vjp(self, x, y, ct),
            Family::Dot => dot::vjp(self, x, y, ct),
            Family::Shape => shape::vjp(self, x, y, ct),
            Family::Reduce => reduce::vjp(self, x, y, ct),
            Family::Indexing => indexing::vjp(self, x, y, ct),
            Family::Random => random::vjp(self, x, y, ct),
            Family::Sharding => sharding::vjp(self, x, y, ct),
            Family::Barrier => barrier::vjp(self, x, y, ct),
            // Loops have several results: `autodiff::backward` differentiates them itself.
            Family::Loop => Err(()),
        }
    }

    /// Whether the output can carry a gradient at all (leaves and integer ops cannot).
    pub fn is_differentiable(&self) -> bool {
        !matches!(
            self,
            Prim::Param(_)
                | Prim::Constant { .. }
                | Prim::Iota { .. }
                | Prim::RngBitGenerator { .. }
                | Prim::Sign
                | Prim::Compare(_)
                | Prim::And
                | Prim::Or
                | Prim::ShiftRightLogical
                | Prim::BitcastConvert { .. }
                | Prim::StopGradient
        )
    }

    /// Parameters shown in the printed form (`dot_general[contract=...]`).
    pub fn params_text(&self) -> String {
        use Prim::*;
        let list = |v: &[usize]| format!("{v:?}");
        match self {
            Param(i) => format!("{i}"),
            Constant { value, .. } => match value {
                Literal::Float(v) if v.len() == 1 => format!("{}", v[0]),
                Literal::Int(v) if v.len() == 1 => format!("{}", v[0]),
                _ => "dense".into(),
            },
            Iota { dim, .. } => format!("dim={dim}"),
            RngBitGenerator { dims } => format!("shape={dims:?}"),
            Convert { dtype } | BitcastConvert { dtype } => format!("{dtype}"),
            Compare(c) => format!("{c:?}").to_lowercase(),
            DotGeneral(d) => format!(
                "contract=({},{}) batch=({},{})",
                list(&d.lhs_contract),
                list(&d.rhs_contract),
                list(&d.lhs_batch),
                list(&d.rhs_batch)
            ),
            BroadcastInDim { dims, broadcast_dims } => format!("shape={dims:?} dims={}", list(broadcast_dims)),
            Reshape { dims } => format!("shape={dims:?}"),
            Transpose { perm } => format!("perm={}", list(perm)),
            Slice { start, limit, strides } => format!("start={start:?} limit={limit:?} strides={strides:?}"),
            DynamicSlice { sizes } => format!("sizes={sizes:?}"),
            Concatenate { dim } => format!("dim={dim}"),
            Pad { low, high, interior } => format!("low={low:?} high={high:?} interior={interior:?}"),
            ReduceSum { axes } | ReduceMax { axes } => format!("axes={}", list(axes)),
            ShardingConstraint { spec } => format!("{spec}"),
            Scan(s) => format!(
                "length={} carries={} xs={} reverse={} remat={} body={}",
                s.length, s.carries, s.xs, s.reverse, s.remat, s.body.name
            ),
            ScanResult { index, .. } => format!("{index}"),
            _ => String::new(),
        }
    }
}
