//! The closed set of primitives, close to StableHLO. Each family file in `ops/` holds the
//! shape rule, lowering and VJP rule of its primitives side by side; this file dispatches.
use crate::lower::Emitter;
use crate::ops::{barrier, dot, elementwise, indexing, random, reduce, shape, sharding};
use crate::trace::Tensor;
use crate::types::{DType, TensorType};

/// Constant data: one value (splat) or one per element, row-major.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Literal {
    Float(Vec<f64>),
    Int(Vec<i64>),
    #[default]
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cmp {
    #[default]
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// dot_general dimension numbers. Output: batch dims, then lhs free, then rhs free dims.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DotDims {
    pub lhs_batch: Vec<usize>,
    pub rhs_batch: Vec<usize>,
    pub lhs_contract: Vec<usize>,
    pub rhs_contract: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Prim {
    // leaves
    Param(usize),
    Constant { ty: TensorType, value: Literal },
    Iota { ty: TensorType, dim: usize },
    RngBitGenerator { dims: Vec<i64> },
    // elementwise unary
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Logistic,
    Abs,
    Sign,
    Sin,
    Cos,
    Convert { dtype: DType },
    BitcastConvert { dtype: DType },
    StopGradient,
    // elementwise binary (equal shapes; the user API broadcasts first)
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    And,
    Or,
    ShiftRightLogical,
    Compare(Cmp),
    Select,
    // linear algebra and shapes
    DotGeneral(DotDims),
    BroadcastInDim { dims: Vec<i64>, broadcast_dims: Vec<usize> },
    Reshape { dims: Vec<i64> },
    Transpose { perm: Vec<usize> },
    Slice { start: Vec<i64>, limit: Vec<i64>, strides: Vec<i64> },
    DynamicSlice { sizes: Vec<i64> },
    DynamicUpdateSlice,
    Concatenate { dim: usize },
    Pad { low: Vec<i64>, high: Vec<i64>, interior: Vec<i64> },
    // reductions
    ReduceSum { axes: Vec<usize> },
    ReduceMax { axes: Vec<usize> },
    // indexing: rows of a table by integer ids, and the transpose (embedding lookups)
    Gather,
    ScatterAdd,
    // layout
    ShardingConstraint { spec: ::sharding::PartitionSpec },
    // scheduling: operand 0 once every operand is known (rematerialisation)
    OptimizationBarrier,
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
}

impl Prim {
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
            OptimizationBarrier => Family::Barrier,
        }
    }

    /// The output type for inputs of these types, or a message saying what is wrong.
    pub fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, String> {
        match self.family() {
            Family::Elementwise => elementwise::infer(self, inputs),
            Family::Dot => dot::infer(self, inputs),
            Family::Shape => shape::infer(self, inputs),
            Family::Reduce => reduce::infer(self, inputs),
            Family::Indexing => indexing::infer(self, inputs),
            Family::Random => random::infer(self, inputs),
            Family::Sharding => sharding::infer(self, inputs),
            Family::Barrier => barrier::infer(self, inputs),
        }
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
            _ => String::new(),
        }
    }
}
