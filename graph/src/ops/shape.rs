//! Leaves and data movement: parameters, constants, iota, broadcast_in_dim, reshape,
//! transpose, slice, dynamic_slice, dynamic_update_slice, concatenate, pad.
use crate::lower::{dims_array, i64_array, Emitter};
use crate::prim::{Literal, Prim};
use crate::trace::{Tensor, Tracer};
use crate::types::{DType, TensorType};

pub(crate) fn infer(p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    use Prim::*;
    let need = |n: usize| if x.len() == n { Ok(()) } else { Err(format!("expects {n} operands, got {}", x.len())) };
    match p {
        Param(_) => Err("parameters are created by trace".into()),
        Constant { ty, value } => {
            need(0)?;
            let n = match value {
                Literal::Float(v) => v.len(),
                Literal::Int(v) => v.len(),
                Literal::Empty => 0,
            };
            if n == 1 || n as i64 == ty.num_elements() {
                Ok(ty.clone())
            } else {
                Err(format!("{n} values for a constant of type {ty}"))
            }
        }
        Iota { ty, dim } => {
            need(0)?;
            if *dim < ty.rank() {
                Ok(ty.clone())
            } else {
                Err(format!("iota dimension {dim} out of range for {ty}"))
            }
        }
        BroadcastInDim { dims, broadcast_dims } => {
            need(1)?;
            let a = x[0];
            if broadcast_dims.len() != a.rank() {
                return Err(format!("{} broadcast dimensions for an operand of rank {}", broadcast_dims.len(), a.rank()));
            }
            if broadcast_dims.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("broadcast dimensions {broadcast_dims:?} must be strictly increasing"));
            }
            for (i, &d) in broadcast_dims.iter().enumerate() {
                if d >= dims.len() || (a.dims[i] != 1 && a.dims[i] != dims[d]) {
                    return Err(format!("operand dimension {i} (size {}) cannot go to dimension {d} of {dims:?}", a.dims[i]));
                }
            }
            Ok(TensorType::new(a.dtype, dims))
        }
        Reshape { dims } => {
            need(1)?;
            if dims.iter().product::<i64>() != x[0].num_elements() || dims.iter().any(|&d| d < 0) {
                return Err(format!("cannot reshape {} elements to {dims:?}", x[0].num_elements()));
            }
            Ok(TensorType::new(x[0].dtype, dims))
        }
        Transpose { perm } => {
            need(1)?;
            let mut sorted = perm.clone();
            sorted.sort();
            if sorted != (0..x[0].rank()).collect::<Vec<_>>() {
                return Err(format!("{perm:?} is not a permutation of the operand's {} dimensions", x[0].rank()));
            }
            Ok(TensorType::new(x[0].dtype, &perm.iter().map(|&p| x[0].dims[p]).collect::<Vec<_>>()))
        }
        Slice { start, limit, strides } => {
            need(1)?;
            let a = x[0];
            if start.len() != a.rank() || limit.len() != a.rank() || strides.len() != a.rank() {
                return Err(format!("slice bounds must have {} entries", a.rank()));
            }
            let mut dims = Vec::new();
            for i in 0..a.rank() {
                if start[i] < 0 || limit[i] > a.dims[i] || start[i] > limit[i] || strides[i] < 1 {
                    return Err(format!("bad slice {}..{} step {} of dimension {i} (size {})", start[i], limit[i], strides[i], a.dims[i]));
                }
                dims.push((limit[i] - start[i] + strides[i] - 1) / strides[i]);
            }
            Ok(TensorType::new(a.dtype, &dims))
        }
        DynamicSlice { sizes } => {
            let a = x[0];
            need(1 + a.rank())?;
            check_indices(&x[1..])?;
            if sizes.len() != a.rank() || sizes.iter().zip(&a.dims).any(|(s, d)| *s < 0 || s > d) {
                return Err(format!("slice sizes {sizes:?} do not fit {a}"));
            }
            Ok(TensorType::new(a.dtype, sizes))
        }
        DynamicUpdateSlice => {
            let a = x[0];
            need(2 + a.rank())?;
            check_indices(&x[2..])?;
            let u = x[1];
            if u.dtype != a.dtype || u.rank() != a.rank() || u.dims.iter().zip(&a.dims).any(|(s, d)| s > d) {
                return Err(format!("update {u} does not fit into {a}"));
            }
            Ok(a.clone())
        }
        Concatenate { dim } => {
            let a = x.first().ok_or("needs at least one operand")?;
            if *dim >= a.rank() {
                return Err(format!("dimension {dim} out of range"));
            }
            let mut dims = a.dims.clone();
            dims[*dim] = 0;
            for t in x {
                let same_rest = t.rank() == a.rank() && (0..a.rank()).all(|i| i == *dim || t.dims[i] == a.dims[i]);
                if t.dtype != a.dtype || !same_rest {
                    return Err(format!("operands must agree except in dimension {dim}"));
                }
                dims[*dim] += t.dims[*dim];
            }
            Ok(TensorType::new(a.dtype, &dims))
        }
        Pad { low, high, interior } => {
            need(2)?;
            let a = x[0];
            if x[1].rank() != 0 || x[1].dtype != a.dtype {
                return Err("the padding value must be a scalar of the operand's dtype".into());
            }
            if low.len() != a.rank() || high.len() != a.rank() || interior.len() != a.rank() {
                return Err(format!("padding must have {} entries per side", a.rank()));
            }
            if low.iter().chain(high).chain(interior).any(|&v| v < 0) {
                return Err("negative padding is not supported".into());
            }
            let dims: Vec<i64> = (0..a.rank()).map(|i| low[i] + high[i] + a.dims[i] + (a.dims[i] - 1).max(0) * interior[i]).collect();
            Ok(TensorType::new(a.dtype, &dims))
        }
        _ => unreachable!("internal: {} is not a shape op", p.name()),
    }
}

fn check_indices(idx: &[&TensorType]) -> Result<(), String> {
    if idx.iter().all(|t| t.rank() == 0 && t.dtype.is_int()) {
        Ok(())
    } else {
        Err("start indices must be integer scalars, one per dimension".into())
    }
}

pub(crate) fn lower(p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], out: &TensorType) -> String {
    use Prim::*;
    let ops = a;
    match p {
        Constant { value, .. } => e.constant(out, value),
        Iota { dim, .. } => e.op("stablehlo.iota", &[], &format!("iota_dimension = {dim} : i64"), None, out),
        BroadcastInDim { broadcast_dims, .. } => {
            e.op("stablehlo.broadcast_in_dim", ops, &format!("broadcast_dimensions = {}", dims_array(broadcast_dims)), None, out)
        }
        Reshape { .. } => e.op("stablehlo.reshape", ops, "", None, out),
        Transpose { perm } => e.op("stablehlo.transpose", ops, &format!("permutation = {}", dims_array(perm)), None, out),
        Slice { start, limit, strides } => e.op(
            "stablehlo.slice",
            ops,
            &format!("start_indices = {}, limit_indices = {}, strides = {}", i64_array(start), i64_array(limit), i64_array(strides)),
            None,
            out,
        ),
        DynamicSlice { sizes } => e.op("stablehlo.dynamic_slice", ops, &format!("slice_sizes = {}", i64_array(sizes)), None, out),
        DynamicUpdateSlice => e.op("stablehlo.dynamic_update_slice", ops, "", None, out),
        Concatenate { dim } => e.op("stablehlo.concatenate", ops, &format!("dimension = {dim} : i64"), None, out),
        Pad { low, high, interior } => e.op(
            "stablehlo.pad",
            ops,
            &format!(
                "edge_padding_low = {}, edge_padding_high = {}, interior_padding = {}",
                i64_array(low),
                i64_array(high),
                i64_array(interior)
            ),
            None,
            out,
        ),
        _ => unreachable!("internal: {} is lowered elsewhere", p.name()),
    }
}

pub(crate) fn vjp(p: &Prim, x: &[Tensor], _y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    use Prim::*;
    match p {
        BroadcastInDim { dims, broadcast_dims } => {
            // Sum over the new dimensions and over stretched size-1 dimensions, then reshape.
            let in_dims = x[0].dims();
            let axes: Vec<usize> = (0..dims.len())
                .filter(|d| match broadcast_dims.iter().position(|b| b == d) {
                    None => true,
                    Some(i) => in_dims[i] == 1 && dims[*d] != 1,
                })
                .collect();
            let summed = if axes.is_empty() { ct.clone() } else { ct.sum(&axes) };
            Ok(vec![Some(summed.reshape(&in_dims))])
        }
        Reshape { .. } => Ok(vec![Some(ct.reshape(&x[0].dims()))]),
        Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            Ok(vec![Some(ct.transpose(&inv))])
        }
        Slice { start, limit: _, strides } => {
            let dims = x[0].dims();
            let n = ct.dims();
            let high: Vec<i64> = (0..dims.len()).map(|i| dims[i] - (start[i] + (n[i] - 1).max(0) * strides[i] + 1).min(dims[i])).collect();
            let interior: Vec<i64> = strides.iter().map(|s| s - 1).collect();
            Ok(vec![Some(ct.pad(&ct.scalar_like(0.0), start, &high, &interior))])
        }
        DynamicSlice { .. } => {
            let zeros = ct.scalar_like(0.0).broadcast_to(&x[0].dims());
            let mut g = vec![Some(zeros.dynamic_update_slice(ct, &x[1..]))];
            g.extend(x[1..].iter().map(|_| None));
            Ok(g)
        }
        DynamicUpdateSlice => {
            let idx = &x[2..];
            let zeros = ct.scalar_like(0.0).broadcast_to(&x[1].dims());
            let mut g = vec![Some(ct.dynamic_update_slice(&zeros, idx)), Some(ct.dynamic_slice(idx, &x[1].dims()))];
            g.extend(idx.iter().map(|_| None));
            Ok(g)
        }
        Concatenate { dim } => {
            let mut at = 0;
            Ok(x.iter()
                .map(|t| {
                    let n = t.dims()[*dim];
                    at += n;
                    Some(ct.slice_axis(*dim, at - n, at))
                })
                .collect())
        }
        Pad { low, high: _, interior } => {
            let dims = x[0].dims();
            let start = low.clone();
            let limit: Vec<i64> = (0..dims.len()).map(|i| low[i] + (dims[i] - 1).max(0) * (interior[i] + 1) + 1).collect();
            let strides: Vec<i64> = interior.iter().map(|i| i + 1).collect();
            let g = ct.slice(&start, &limit, &strides);
            let pad_ct = ct.sum_all() - g.sum_all();
            Ok(vec![Some(g), Some(pad_ct)])
        }
        _ => Err(()),
    }
}

impl Tensor {
    /// StableHLO broadcast_in_dim: operand dimension i becomes dimension `broadcast_dims[i]`.
    #[track_caller]
    pub fn broadcast_in_dim(&self, dims: &[i64], broadcast_dims: &[usize]) -> Tensor {
        Tensor::apply(Prim::BroadcastInDim { dims: dims.to_vec(), broadcast_dims: broadcast_dims.to_vec() }, &[self])
    }

    /// numpy-style broadcast to `dims` (trailing dimensions align).
    #[track_caller]
    pub fn broadcast_to(&self, dims: &[i64]) -> Tensor {
        if self.dims() == dims {
            return self.clone();
        }
        let r = self.rank();
        let offset = dims.len().saturating_sub(r);
        let bd: Vec<usize> = (0..r).map(|i| i + offset).collect();
        self.broadcast_in_dim(dims, &bd)
    }

    /// The same elements, in row-major order, with shape `dims` (same element count); `self`
    /// when it already has that shape.
    #[track_caller]
    pub fn reshape(&self, dims: &[i64]) -> Tensor {
        if self.dims() == dims {
            self.clone()
        } else {
            Tensor::apply(Prim::Reshape { dims: dims.to_vec() }, &[self])
        }
    }

    /// Permutes dimensions: output dimension `i` is dimension `perm[i]` of `self`.
    #[track_caller]
    pub fn transpose(&self, perm: &[usize]) -> Tensor {
        Tensor::apply(Prim::Transpose { perm: perm.to_vec() }, &[self])
    }

    /// Static strided slice: per dimension `i`, elements `start[i]..limit[i]` taken every
    /// `strides[i]` (>= 1), so `ceil((limit[i] - start[i]) / strides[i])` of them.
    #[track_caller]
    pub fn slice(&self, start: &[i64], limit: &[i64], strides: &[i64]) -> Tensor {
        Tensor::apply(Prim::Slice { start: start.to_vec(), limit: limit.to_vec(), strides: strides.to_vec() }, &[self])
    }

    /// Elements `start..end` of dimension `axis`.
    #[track_caller]
    pub fn slice_axis(&self, axis: usize, start: i64, end: i64) -> Tensor {
        let dims = self.dims();
        let mut s = vec![0; dims.len()];
        let mut l = dims.clone();
        if axis < dims.len() {
            s[axis] = start;
            l[axis] = end;
        }
        self.slice(&s, &l, &vec![1; dims.len()])
    }

    /// A `sizes` block starting at the (runtime, clamped) integer scalars `start`.
    #[track_caller]
    pub fn dynamic_slice(&self, start: &[Tensor], sizes: &[i64]) -> Tensor {
        let mut inputs = vec![self];
        inputs.extend(start);
        Tensor::apply(Prim::DynamicSlice { sizes: sizes.to_vec() }, &inputs)
    }

    /// `self` with `update` written at the (runtime, clamped) integer scalars `start`.
    #[track_caller]
    pub fn dynamic_update_slice(&self, update: &Tensor, start: &[Tensor]) -> Tensor {
        let mut inputs = vec![self, update];
        inputs.extend(start);
        Tensor::apply(Prim::DynamicUpdateSlice, &inputs)
    }

    /// Joins this tensor and `rest`, in that order, along `dim`.
    #[track_caller]
    pub fn concat(&self, rest: &[&Tensor], dim: usize) -> Tensor {
        let mut parts = vec![self];
        parts.extend(rest);
        Tensor::apply(Prim::Concatenate { dim }, &parts)
    }

    /// Pads with the scalar `value`: `low`/`high` at the edges, `interior` between elements.
    #[track_caller]
    pub fn pad(&self, value: &Tensor, low: &[i64], high: &[i64], interior: &[i64]) -> Tensor {
        Tensor::apply(Prim::Pad { low: low.to_vec(), high: high.to_vec(), interior: interior.to_vec() }, &[self, value])
    }

    /// A tensor of zeros shaped like this one.
    #[track_caller]
    pub fn zeros_like(&self) -> Tensor {
        self.scalar_like(0.0).broadcast_to(&self.dims())
    }
}

impl Tracer {
    /// Values 0, 1, 2, ... along `dim` of a tensor of type `ty`.
    #[track_caller]
    pub fn iota(&self, ty: &TensorType, dim: usize) -> Tensor {
        Tensor::apply_in(&self.state, Prim::Iota { ty: ty.clone(), dim }, &[])
    }

    /// An s32 scalar constant (for dynamic slice indices).
    #[track_caller]
    pub fn index(&self, i: i64) -> Tensor {
        self.constant_int(&TensorType::scalar(DType::S32), vec![i])
    }
}
