//! Elementwise primitives: unary math, binary arithmetic, comparisons, select, conversions.
//! Binary ops need equal shapes; the `Tensor` methods broadcast numpy-style first, and
//! accept plain numbers (`&x * 0.5`) as constants of the tensor's dtype.
use crate::lower::Emitter;
use crate::prim::{Cmp, Literal, Prim};
use crate::trace::{Tensor, Tracer};
use crate::types::{DType, TensorType};
use std::ops;

pub(crate) fn infer(p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    use Prim::*;
    let arity = match p {
        Select => 3,
        Add | Sub | Mul | Div | Pow | Max | Min | And | Or | ShiftRightLogical | Compare(_) => 2,
        _ => 1,
    };
    if x.len() != arity {
        return Err(format!("expects {arity} operands, got {}", x.len()));
    }
    let a = x[0];
    match p {
        Neg | Abs | Sign => numeric(a).map(|_| a.clone()),
        Exp | Log | Sqrt | Rsqrt | Tanh | Logistic | Sin | Cos => float(a).map(|_| a.clone()),
        StopGradient => Ok(a.clone()),
        Convert { dtype } => Ok(a.with_dtype(*dtype)),
        BitcastConvert { dtype } if dtype.bits() == a.dtype.bits() => Ok(a.with_dtype(*dtype)),
        BitcastConvert { dtype } => Err(format!("cannot bitcast {} to {dtype}: bit widths differ", a.dtype)),
        Select => {
            if x[0].dtype != DType::Pred || x[0].dims != x[1].dims || x[1] != x[2] {
                return Err("needs a pred mask and two values, all of one shape".into());
            }
            Ok(x[1].clone())
        }
        _ => {
            if x[0] != x[1] {
                return Err("operands must have the same shape and dtype".into());
            }
            match p {
                And | Or if a.dtype == DType::Pred || a.dtype.is_int() => Ok(a.clone()),
                ShiftRightLogical if a.dtype.is_int() => Ok(a.clone()),
                And | Or | ShiftRightLogical => Err(format!("needs integer or pred operands, got {}", a.dtype)),
                Compare(_) => Ok(a.with_dtype(DType::Pred)),
                _ => numeric(a).map(|_| a.clone()),
            }
        }
    }
}

fn numeric(t: &TensorType) -> Result<(), String> {
    if t.dtype == DType::Pred {
        Err("needs a numeric operand, got pred".into())
    } else {
        Ok(())
    }
}

fn float(t: &TensorType) -> Result<(), String> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("needs a float operand, got {}", t.dtype))
    }
}

pub(crate) fn lower(p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], out: &TensorType) -> String {
    use Prim::*;
    let name = match p {
        StopGradient => return a[0].0.to_string(),
        Neg => "stablehlo.negate",
        Exp => "stablehlo.exponential",
        Log => "stablehlo.log",
        Sqrt => "stablehlo.sqrt",
        Rsqrt => "stablehlo.rsqrt",
        Tanh => "stablehlo.tanh",
        Logistic => "stablehlo.logistic",
        Abs => "stablehlo.abs",
        Sign => "stablehlo.sign",
        Sin => "stablehlo.sine",
        Cos => "stablehlo.cosine",
        Convert { .. } => "stablehlo.convert",
        BitcastConvert { .. } => "stablehlo.bitcast_convert",
        Add => "stablehlo.add",
        Sub => "stablehlo.subtract",
        Mul => "stablehlo.multiply",
        Div => "stablehlo.divide",
        Pow => "stablehlo.power",
        Max => "stablehlo.maximum",
        Min => "stablehlo.minimum",
        And => "stablehlo.and",
        Or => "stablehlo.or",
        ShiftRightLogical => "stablehlo.shift_right_logical",
        Select => "stablehlo.select",
        Compare(c) => {
            let dir = match c {
                Cmp::Eq => "EQ",
                Cmp::Ne => "NE",
                Cmp::Lt => "LT",
                Cmp::Le => "LE",
                Cmp::Gt => "GT",
                Cmp::Ge => "GE",
            };
            let kind = match a[0].1.dtype {
                d if d.is_float() => "FLOAT",
                d if d.is_unsigned() || d == DType::Pred => "UNSIGNED",
                _ => "SIGNED",
            };
            let attrs =
                format!("comparison_direction = #stablehlo<comparison_direction {dir}>, compare_type = #stablehlo<comparison_type {kind}>");
            let ops = a;
            return e.op("stablehlo.compare", ops, &attrs, None, out);
        }
        _ => unreachable!("internal: {} is not elementwise", p.name()),
    };
    let ops = a;
    e.op(name, ops, "", None, out)
}

pub(crate) fn vjp(p: &Prim, x: &[Tensor], y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    use Prim::*;
    let one = |g: Tensor| Ok(vec![Some(g)]);
    match p {
        Neg => one(-ct),
        Exp => one(ct * y),
        Log => one(ct / &x[0]),
        Sqrt => one(ct * 0.5 / y),
        Rsqrt => one(ct * -0.5 * y / &x[0]),
        Tanh => one(ct * (y * y).rsub(1.0)),
        Logistic => one(ct * y * y.rsub(1.0)),
        Abs => one(ct * x[0].sign()),
        Sin => one(ct * x[0].cos()),
        Cos => one(-(ct * x[0].sin())),
        Convert { .. } => {
            let from = x[0].dtype();
            Ok(vec![(from.is_float() && ct.dtype().is_float()).then(|| ct.convert(from))])
        }
        Add => Ok(vec![Some(ct.clone()), Some(ct.clone())]),
        Sub => Ok(vec![Some(ct.clone()), Some(-ct)]),
        Mul => Ok(vec![Some(ct * &x[1]), Some(ct * &x[0])]),
        Div => Ok(vec![Some(ct / &x[1]), Some(-(ct * y / &x[1]))]),
        Pow => {
            // d/da a^b = b a^(b-1);  d/db a^b = log(a) a^b (0 where a == 0, as JAX does).
            let (a, b) = (&x[0], &x[1]);
            let da = ct * b * a.pow(&(b - 1.0));
            let zero = a.scalar_like(0.0);
            let safe_log = Tensor::select(&a.eq(&zero), &zero, &a.log());
            Ok(vec![Some(da), Some(ct * safe_log * y)])
        }
        Max | Min => {
            // The winner takes the cotangent; ties split it evenly.
            let (a, b) = (&x[0], &x[1]);
            let wins = if matches!(p, Max) { a.gt(b) } else { a.lt(b) };
            let ties = a.eq(b);
            let wa = wins.convert(a.dtype()) + ties.convert(a.dtype()) * 0.5;
            let wb = wa.rsub(1.0);
            Ok(vec![Some(ct * wa), Some(ct * wb)])
        }
        Select => {
            let zero = ct.scalar_like(0.0);
            Ok(vec![None, Some(Tensor::select(&x[0], ct, &zero)), Some(Tensor::select(&x[0], &zero, ct))])
        }
        _ => Err(()),
    }
}

/// Broadcasts two shapes numpy-style (trailing dimensions align; 1 stretches).
fn broadcast_shape(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

impl Tensor {
    #[track_caller]
    fn unary(&self, p: Prim) -> Tensor {
        Tensor::apply(p, &[self])
    }

    /// Applies a binary primitive after numpy-style broadcasting of both operands.
    #[track_caller]
    fn binary(&self, other: &Tensor, p: Prim) -> Tensor {
        let (da, db) = (self.dims(), other.dims());
        match broadcast_shape(&da, &db) {
            Some(shape) => {
                let a = if da == shape { self.clone() } else { self.broadcast_to(&shape) };
                let b = if db == shape { other.clone() } else { other.broadcast_to(&shape) };
                Tensor::apply(p, &[&a, &b])
            }
            // Let the primitive's shape rule report the mismatch with both shapes.
            None => Tensor::apply(p, &[self, other]),
        }
    }

    /// `e^x` elementwise (float dtypes only).
    #[track_caller]
    pub fn exp(&self) -> Tensor {
        self.unary(Prim::Exp)
    }
    /// Natural logarithm elementwise (float dtypes only).
    #[track_caller]
    pub fn log(&self) -> Tensor {
        self.unary(Prim::Log)
    }
    /// Square root elementwise (float dtypes only).
    #[track_caller]
    pub fn sqrt(&self) -> Tensor {
        self.unary(Prim::Sqrt)
    }
    /// `1 / sqrt(x)` elementwise (float dtypes only).
    #[track_caller]
    pub fn rsqrt(&self) -> Tensor {
        self.unary(Prim::Rsqrt)
    }
    /// Hyperbolic tangent elementwise (float dtypes only).
    #[track_caller]
    pub fn tanh(&self) -> Tensor {
        self.unary(Prim::Tanh)
    }
    /// The logistic sigmoid 1 / (1 + e^-x).
    #[track_caller]
    pub fn logistic(&self) -> Tensor {
        self.unary(Prim::Logistic)
    }
    /// Absolute value elementwise (numeric dtypes, not pred).
    #[track_caller]
    pub fn abs(&self) -> Tensor {
        self.unary(Prim::Abs)
    }
    /// -1, 0 or 1 by the sign of each element (numeric dtypes, not pred); passes no gradient.
    #[track_caller]
    pub fn sign(&self) -> Tensor {
        self.unary(Prim::Sign)
    }
    /// Sine elementwise, in radians (float dtypes only).
    #[track_caller]
    pub fn sin(&self) -> Tensor {
        self.unary(Prim::Sin)
    }
    /// Cosine elementwise, in radians (float dtypes only).
    #[track_caller]
    pub fn cos(&self) -> Tensor {
        self.unary(Prim::Cos)
    }
    /// `-x` elementwise (numeric dtypes, not pred); also the unary `-` operator.
    #[track_caller]
    pub fn neg(&self) -> Tensor {
        self.unary(Prim::Neg)
    }
    /// Blocks gradients: the value passes, its cotangent is dropped.
    #[track_caller]
    pub fn stop_gradient(&self) -> Tensor {
        self.unary(Prim::StopGradient)
    }
    /// The values converted to `dtype` (StableHLO `convert`), or `self` when it already has that
    /// dtype. Gradients flow through it only from a float dtype to a float dtype.
    #[track_caller]
    pub fn convert(&self, dtype: DType) -> Tensor {
        if self.dtype() == dtype {
            self.clone()
        } else {
            self.unary(Prim::Convert { dtype })
        }
    }
    /// Reinterprets the bits as another type of the same width.
    #[track_caller]
    pub fn bitcast(&self, dtype: DType) -> Tensor {
        self.unary(Prim::BitcastConvert { dtype })
    }

    /// `self + o` elementwise after numpy-style broadcasting (one dtype); also the `+` operator,
    /// which takes `f64` numbers as constants of the tensor's dtype.
    #[track_caller]
    pub fn add(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Add)
    }
    /// `self - o` elementwise after numpy-style broadcasting (one dtype); also the `-` operator.
    #[track_caller]
    pub fn sub(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Sub)
    }
    /// `self * o` elementwise after numpy-style broadcasting (one dtype); also the `*` operator.
    #[track_caller]
    pub fn mul(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Mul)
    }
    /// `self / o` elementwise after numpy-style broadcasting (one dtype; integer division
    /// truncates toward zero); also the `/` operator.
    #[track_caller]
    pub fn div(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Div)
    }
    /// `self` to the power `o` elementwise after numpy-style broadcasting (one dtype).
    #[track_caller]
    pub fn pow(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Pow)
    }
    /// The larger of `self` and `o` elementwise after numpy-style broadcasting (one dtype); ties
    /// split the gradient evenly. `max_over` reduces over axes instead.
    #[track_caller]
    pub fn max(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Max)
    }
    /// The smaller of `self` and `o` elementwise after numpy-style broadcasting (one dtype); ties
    /// split the gradient evenly.
    #[track_caller]
    pub fn min(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Min)
    }
    /// Bitwise and (logical and for pred) after numpy-style broadcasting; integer or pred
    /// operands of one dtype.
    #[track_caller]
    pub fn and(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::And)
    }
    /// Bitwise or (logical or for pred) after numpy-style broadcasting; integer or pred operands
    /// of one dtype.
    #[track_caller]
    pub fn or(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Or)
    }
    /// Shifts the bits of each element right by the matching element of `o`, filling with zeros
    /// (integer operands of one dtype, after numpy-style broadcasting).
    #[track_caller]
    pub fn shift_right_logical(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::ShiftRightLogical)
    }
    /// `self == o` elementwise after numpy-style broadcasting: a pred tensor (no gradient).
    #[track_caller]
    pub fn eq(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Compare(Cmp::Eq))
    }
    /// `self != o` elementwise after numpy-style broadcasting: a pred tensor (no gradient).
    #[track_caller]
    pub fn ne(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Compare(Cmp::Ne))
    }
    /// `self < o` elementwise after numpy-style broadcasting: a pred tensor (no gradient).
    #[track_caller]
    pub fn lt(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Compare(Cmp::Lt))
    }
    /// `self <= o` elementwise after numpy-style broadcasting: a pred tensor (no gradient).
    #[track_caller]
    pub fn le(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Compare(Cmp::Le))
    }
    /// `self > o` elementwise after numpy-style broadcasting: a pred tensor (no gradient).
    #[track_caller]
    pub fn gt(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Compare(Cmp::Gt))
    }
    /// `self >= o` elementwise after numpy-style broadcasting: a pred tensor (no gradient).
    #[track_caller]
    pub fn ge(&self, o: &Tensor) -> Tensor {
        self.binary(o, Prim::Compare(Cmp::Ge))
    }

    /// `v - self` for a number `v`.
    #[track_caller]
    pub fn rsub(&self, v: f64) -> Tensor {
        self.scalar_like(v).sub(self)
    }

    /// `mask ? a : b` elementwise; all three are broadcast to one shape.
    #[track_caller]
    pub fn select(mask: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
        let shape = broadcast_shape(&mask.dims(), &a.dims()).and_then(|s| broadcast_shape(&s, &b.dims()));
        match shape {
            Some(s) => {
                let fit = |t: &Tensor| if t.dims() == s { t.clone() } else { t.broadcast_to(&s) };
                Tensor::apply(Prim::Select, &[&fit(mask), &fit(a), &fit(b)])
            }
            None => Tensor::apply(Prim::Select, &[mask, a, b]),
        }
    }

    /// A scalar constant of this tensor's dtype (not a tensor of its shape: broadcasting
    /// stretches it where needed).
    #[track_caller]
    pub fn scalar_like(&self, v: f64) -> Tensor {
        self.tracer().scalar(self.dtype(), v)
    }
}

impl Tracer {
    /// A constant of type `ty`: one value (splat) or one per element, row-major.
    #[track_caller]
    pub fn constant(&self, ty: &TensorType, values: Vec<f64>) -> Tensor {
        let value = if ty.dtype.is_float() { Literal::Float(values) } else { Literal::Int(values.into_iter().map(|v| v as i64).collect()) };
        Tensor::apply_in(&self.state, Prim::Constant { ty: ty.clone(), value }, &[])
    }

    /// An integer constant of type `ty` (exact for 64-bit values).
    #[track_caller]
    pub fn constant_int(&self, ty: &TensorType, values: Vec<i64>) -> Tensor {
        Tensor::apply_in(&self.state, Prim::Constant { ty: ty.clone(), value: Literal::Int(values) }, &[])
    }

    /// A scalar constant.
    #[track_caller]
    pub fn scalar(&self, dtype: DType, v: f64) -> Tensor {
        self.constant(&TensorType::scalar(dtype), vec![v])
    }
}

// Operators on tensors and references, and with f64 numbers (constants of the tensor dtype).
macro_rules! binop {
    ($tr:ident, $m:ident) => {
        impl ops::$tr<&Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, o: &Tensor) -> Tensor {
                Tensor::$m(self, o)
            }
        }
        impl ops::$tr<Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, o: Tensor) -> Tensor {
                Tensor::$m(&self, &o)
            }
        }
        impl ops::$tr<&Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, o: &Tensor) -> Tensor {
                Tensor::$m(&self, o)
            }
        }
        impl ops::$tr<Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, o: Tensor) -> Tensor {
                Tensor::$m(self, &o)
            }
        }
        impl ops::$tr<f64> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, v: f64) -> Tensor {
                Tensor::$m(self, &self.scalar_like(v))
            }
        }
        impl ops::$tr<f64> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, v: f64) -> Tensor {
                Tensor::$m(&self, &self.scalar_like(v))
            }
        }
    };
}
binop!(Add, add);
binop!(Sub, sub);
binop!(Mul, mul);
binop!(Div, div);

impl ops::Neg for &Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        Tensor::neg(self)
    }
}
impl ops::Neg for Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        Tensor::neg(&self)
    }
}
