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

pub(crate) fn lower(p: &Prim, e: &mut Emitter, a: &[(String, TensorType)], out: &TensorType) -> String {
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
    e.op("stablehlo.dot_general", &[(&a[0].0, &a[0].1), (&a[1].0, &a[1].1)], &attrs, None, out)
}

/// The permutation that puts dimension k (belonging to original dimension `owner[k]`) back
/// in original order.
fn back_to_order(owner: &[usize]) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..owner.len()).collect();
    perm.sort_by_key(|&k| owner[k]);
    perm
}

pub(crate) fn vjp(p: &Prim, x: &[Tensor], _y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    let Prim::DotGeneral(d) = p else { return Err(()) };
    let (l, r) = (&x[0], &x[1]);
    let (lr, rr) = (l.rank(), r.rank());
    let nb = d.lhs_batch.len();
    let lf = free(lr, &d.lhs_batch, &d.lhs_contract);
    let rf = free(rr, &d.rhs_batch, &d.rhs_contract);
    let ct_batch: Vec<usize> = (0..nb).collect();
    let ct_lf: Vec<usize> = (nb..nb + lf.len()).collect();
    let ct_rf: Vec<usize> = (nb + lf.len()..nb + lf.len() + rf.len()).collect();

    // d lhs: contract ct's rhs-free dims with rhs's free dims. Result: batch, lhs free, then
    // rhs's remaining (contracting) dims in rhs order, each standing for its paired lhs dim.
    let gl = ct.dot_general(r, &DotDims {
        lhs_batch: ct_batch.clone(),
        rhs_batch: d.rhs_batch.clone(),
        lhs_contract: ct_rf,
        rhs_contract: rf.clone(),
    });
    let mut rc_sorted = d.rhs_contract.clone();
    rc_sorted.sort();
    let mut owner: Vec<usize> = d.lhs_batch.clone();
    owner.extend(&lf);
    owner.extend(rc_sorted.iter().map(|c| d.lhs_contract[d.rhs_contract.iter().position(|x| x == c).expect("internal")]));
    let gl = gl.transpose_if_needed(&back_to_order(&owner));

    let gr = ct.dot_general(l, &DotDims {
        lhs_batch: ct_batch,
        rhs_batch: d.lhs_batch.clone(),
        lhs_contract: ct_lf,
        rhs_contract: lf,
    });
    let mut lc_sorted = d.lhs_contract.clone();
    lc_sorted.sort();
    let mut owner: Vec<usize> = d.rhs_batch.clone();
    owner.extend(&rf);
    owner.extend(lc_sorted.iter().map(|c| d.rhs_contract[d.lhs_contract.iter().position(|x| x == c).expect("internal")]));
    let gr = gr.transpose_if_needed(&back_to_order(&owner));
    Ok(vec![Some(gl), Some(gr)])
}

impl Tensor {
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
        self.dot_general(rhs, &DotDims {
            lhs_batch: batch.clone(),
            rhs_batch: batch,
            lhs_contract: vec![lc],
            rhs_contract: vec![rr - 2],
        })
    }

    #[track_caller]
    pub(crate) fn transpose_if_needed(&self, perm: &[usize]) -> Tensor {
        if perm.iter().enumerate().all(|(i, &p)| i == p) { self.clone() } else { self.transpose(perm) }
    }
}
