//! dot_general: batched tensor contraction. Output dimensions are the batch dimensions,
//! then lhs free, then rhs free dimensions (each in operand order).
use crate::lower::{list, Emitter};
use crate::prim::{DotDims, Prim};
use crate::trace::Tensor;
use crate::types::TensorType;

fn free(rank: usize, batch: &[usize], contract: &[usize]) -> Vec<usize> {
    (0..rank).filter(|d| !batch.contains(d) && !contract.contains(d)).collect()
}

pub(crate) fn infer(p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    let Prim::DotGeneral(d) = p else { unreachable!("internal") };
    if x.len() != 2 {
        return Err("expects two operands".into());
    }
    let (l, r) = (x[0], x[1]);
    if l.dtype != r.dtype {
        return Err(format!("operand dtypes differ ({} vs {})", l.dtype, r.dtype));
    }
    if d.lhs_batch.len() != d.rhs_batch.len() || d.lhs_contract.len() != d.rhs_contract.len() {
        return Err("batch and contracting dimension lists must pair up".into());
    }
    let in_range = |v: &[usize], rank| v.iter().all(|&i| i < rank);
    if !in_range(&d.lhs_batch, l.rank())
        || !in_range(&d.lhs_contract, l.rank())
        || !in_range(&d.rhs_batch, r.rank())
        || !in_range(&d.rhs_contract, r.rank())
    {
        return Err("a dimension number is out of range".into());
    }
    for (a, b) in d.lhs_batch.iter().zip(&d.rhs_batch).chain(d.lhs_contract.iter().zip(&d.rhs_contract)) {
        if l.dims[*a] != r.dims[*b] {
            return Err(format!("lhs dimension {a} (size {}) does not match rhs dimension {b} (size {})", l.dims[*a], r.dims[*b]));
        }
    }
    let mut dims: Vec<i64> = d.lhs_batch.iter().map(|&i| l.dims[i]).collect();
    dims.extend(free(l.rank(), &d.lhs_batch, &d.lhs_contract).iter().map(|&i| l.dims[i]));
    dims.extend(free(r.rank(), &d.rhs_batch, &d.rhs_contract).iter().map(|&i| r.dims[i]));
    Ok(TensorType::new(l.dtype, &dims))
}

pub(crate) fn lower(p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], out: &TensorType) -> String {
    let Prim::DotGeneral(d) = p else { unreachable!("internal") };
    let mut fields = Vec::new();
    for (name, v) in [
        ("lhs_batching_dimensions", &d.lhs_batch),
        ("rhs_batching_dimensions", &d.rhs_batch),
        ("lhs_contracting_dimensions", &d.lhs_contract),
        ("rhs_contracting_dimensions", &d.rhs_contract),
    ] {
        if !v.is_empty() {
            fields.push(format!("{name} = {}", list(v)));
        }
    }
    let attrs = format!("dot_dimension_numbers = #stablehlo.dot<{}>", fields.join(", "));
    e.op("stablehlo.dot_general", &[(a[0].0, a[0].1), (a[1].0, a[1].1)], &attrs, None, out)
}

/// The permutation that puts dimension k (belonging to original dimension `owner[k]`) back
/// in original order.
fn back_to_order(owner: &[usize]) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..owner.len()).collect();
    perm.sort_by_key(|&k| owner[k]);
    perm
}

/// How one operand's dimensions take part in a dot_general.
struct Side {
    batch: Vec<usize>,
    contract: Vec<usize>,
    free: Vec<usize>,
}

/// The cotangent of one operand (`own`): contract the cotangent's dimensions that came from
/// the other operand's free dimensions (`ct_other_free`) with those free dimensions. The
/// result is batch, own free, then the other operand's contracting dimensions in its order,
/// each standing for its paired contracting dimension of `own`; transpose back into order.
///
/// Without batch dimensions, when the cotangent is larger than the other operand (a weight's
/// gradient from a wide output, e.g. the unembedding's), the product is taken the other way
/// round, `other^T ct`, and its (weight-sized) result transposed: XLA's CPU dot wants the
/// large operand's contracting dimensions where they already are in that order, and would
/// otherwise emit a transposing copy of the cotangent.
fn operand_ct(ct: &Tensor, ct_other_free: Vec<usize>, own: &Side, other: &Tensor, other_side: &Side) -> Tensor {
    let mut other_contract = other_side.contract.clone();
    other_contract.sort();
    let paired = |c: &usize| own.contract[other_side.contract.iter().position(|x| x == c).expect("internal: paired dims")];
    if own.batch.is_empty() && ct.ty().num_elements() > other.ty().num_elements() {
        let g = other.dot_general(
            ct,
            &DotDims { lhs_batch: vec![], rhs_batch: vec![], lhs_contract: other_side.free.clone(), rhs_contract: ct_other_free },
        );
        // g: the other operand's contracting dimensions (in order), then own free.
        let mut owner: Vec<usize> = other_contract.iter().map(paired).collect();
        owner.extend(&own.free);
        return g.transpose_if_needed(&back_to_order(&owner));
    }
    let g = ct.dot_general(
        other,
        &DotDims {
            lhs_batch: (0..own.batch.len()).collect(),
            rhs_batch: other_side.batch.clone(),
            lhs_contract: ct_other_free,
            rhs_contract: other_side.free.clone(),
        },
    );
    let mut owner: Vec<usize> = own.batch.clone();
    owner.extend(&own.free);
    owner.extend(other_contract.iter().map(paired));
    g.transpose_if_needed(&back_to_order(&owner))
}

pub(crate) fn vjp(p: &Prim, x: &[Tensor], _y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    let Prim::DotGeneral(d) = p else { return Err(()) };
    let (l, r) = (&x[0], &x[1]);
    let ls = Side { batch: d.lhs_batch.clone(), contract: d.lhs_contract.clone(), free: free(l.rank(), &d.lhs_batch, &d.lhs_contract) };
    let rs = Side { batch: d.rhs_batch.clone(), contract: d.rhs_contract.clone(), free: free(r.rank(), &d.rhs_batch, &d.rhs_contract) };
    // ct dims: batch, lhs free, rhs free.
    let nb = ls.batch.len();
    let ct_lf: Vec<usize> = (nb..nb + ls.free.len()).collect();
    let ct_rf: Vec<usize> = (nb + ls.free.len()..nb + ls.free.len() + rs.free.len()).collect();
    Ok(vec![Some(operand_ct(ct, ct_rf, &ls, r, &rs)), Some(operand_ct(ct, ct_lf, &rs, l, &ls))])
}

impl Tensor {
    /// StableHLO `dot_general` of `self` (lhs) and `rhs` with dimension numbers `dims`: the
    /// output holds the batch dimensions, then the free dimensions of lhs, then those of rhs.
    #[track_caller]
    pub fn dot_general(&self, rhs: &Tensor, dims: &DotDims) -> Tensor {
        Tensor::apply(Prim::DotGeneral(dims.clone()), &[self, rhs])
    }

    /// Matrix product over the last dimension of `self` and the second-to-last of `rhs`
    /// (the last, when `rhs` is a vector); leading dimensions of equal rank are batch
    /// dimensions, and a 2-D `rhs` is shared by every batch.
    #[track_caller]
    pub fn matmul(&self, rhs: &Tensor) -> Tensor {
        let (lr, rr) = (self.rank(), rhs.rank());
        let lc = lr.saturating_sub(1);
        if rr <= 2 {
            return self.dot_general(rhs, &DotDims { lhs_contract: vec![lc], rhs_contract: vec![0], ..Default::default() });
        }
        let nb = lr.saturating_sub(2);
        let batch: Vec<usize> = (0..nb).collect();
        self.dot_general(rhs, &DotDims { lhs_batch: batch.clone(), rhs_batch: batch, lhs_contract: vec![lc], rhs_contract: vec![rr - 2] })
    }

    #[track_caller]
    pub(crate) fn transpose_if_needed(&self, perm: &[usize]) -> Tensor {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            self.clone()
        } else {
            self.transpose(perm)
        }
    }
}
