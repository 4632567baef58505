//! Reductions: sum and max over a set of axes (the reduced axes are removed).
use crate::lower::{dims_array, Combiner, Emitter};
use crate::prim::Prim;
use crate::trace::Tensor;
use crate::types::{DType, TensorType};

pub(crate) fn infer(p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    let (Prim::ReduceSum { axes } | Prim::ReduceMax { axes }) = p else { unreachable!("internal") };
    if x.len() != 1 {
        return Err("expects one operand".into());
    }
    let a = x[0];
    if a.dtype == DType::Pred {
        return Err("cannot reduce pred values".into());
    }
    if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&d| d >= a.rank()) {
        return Err(format!("axes {axes:?} must be increasing and below rank {}", a.rank()));
    }
    let dims: Vec<i64> = (0..a.rank()).filter(|d| !axes.contains(d)).map(|d| a.dims[d]).collect();
    Ok(TensorType::new(a.dtype, &dims))
}

pub(crate) fn lower(p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], out: &TensorType) -> String {
    let dtype = a[0].1.dtype;
    let (axes, init, comb) = match p {
        Prim::ReduceSum { axes } => (axes, e.scalar(dtype, 0.0), Combiner::Add),
        Prim::ReduceMax { axes } => {
            let lowest = if dtype.is_float() { f64::NEG_INFINITY } else { lowest_int(dtype) as f64 };
            (axes, e.scalar(dtype, lowest), Combiner::Max)
        }
        _ => unreachable!("internal"),
    };
    let scalar = TensorType::scalar(dtype);
    e.op("stablehlo.reduce", &[(a[0].0, a[0].1), (&init, &scalar)], &format!("dimensions = {}", dims_array(axes)), Some((comb, dtype)), out)
}

fn lowest_int(d: DType) -> i64 {
    match d {
        DType::S32 => i32::MIN as i64,
        DType::S64 => i64::MIN,
        _ => 0,
    }
}

pub(crate) fn vjp(p: &Prim, x: &[Tensor], y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    let dims = x[0].dims();
    let (Prim::ReduceSum { axes } | Prim::ReduceMax { axes }) = p else { return Err(()) };
    let kept: Vec<usize> = (0..dims.len()).filter(|d| !axes.contains(d)).collect();
    let ct_b = ct.broadcast_in_dim(&dims, &kept);
    match p {
        Prim::ReduceSum { .. } => Ok(vec![Some(ct_b)]),
        _ => {
            // Split the cotangent evenly among the positions that attain the max.
            let hit = x[0].eq(&y.broadcast_in_dim(&dims, &kept)).convert(x[0].dtype());
            let count = hit.sum(axes).broadcast_in_dim(&dims, &kept);
            Ok(vec![Some(ct_b * hit / count)])
        }
    }
}

impl Tensor {
    /// Sum over `axes` (removed from the shape).
    #[track_caller]
    pub fn sum(&self, axes: &[usize]) -> Tensor {
        Tensor::apply(Prim::ReduceSum { axes: axes.to_vec() }, &[self])
    }

    /// Max over `axes` (removed from the shape).
    #[track_caller]
    pub fn max_over(&self, axes: &[usize]) -> Tensor {
        Tensor::apply(Prim::ReduceMax { axes: axes.to_vec() }, &[self])
    }

    /// Sum of all elements (a scalar).
    #[track_caller]
    pub fn sum_all(&self) -> Tensor {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.sum(&axes)
    }

    /// Mean over `axes`.
    #[track_caller]
    pub fn mean(&self, axes: &[usize]) -> Tensor {
        let dims = self.dims();
        let n: i64 = axes.iter().map(|&a| dims.get(a).copied().unwrap_or(1)).product();
        self.sum(axes) / n as f64
    }
}
