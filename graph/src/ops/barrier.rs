//! `optimization_barrier`: the value of operand 0, unchanged, with the promise to XLA that it
//! is only known once every operand is. Rematerialisation routes the inputs of a recomputed
//! block through it, with a cotangent of the backward pass as the other operand, so XLA can
//! neither merge the recomputation with the forward pass (CSE) nor hoist it before the
//! backward pass needs it.
use crate::lower::Emitter;
use crate::prim::Prim;
use crate::trace::Tensor;
use crate::types::TensorType;

pub(crate) fn infer(_p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    match x.first() {
        Some(t) => Ok((*t).clone()),
        None => Err("expects at least one operand".into()),
    }
}

pub(crate) fn lower(_p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], _out: &TensorType) -> String {
    let operands = a;
    let results: Vec<TensorType> = a.iter().map(|(_, t)| (*t).clone()).collect();
    e.multi_op("stablehlo.optimization_barrier", operands, "", &results).swap_remove(0)
}

pub(crate) fn vjp(_p: &Prim, x: &[Tensor], _y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    let mut g = vec![Some(ct.clone())];
    g.extend(x.iter().skip(1).map(|_| None));
    Ok(g)
}

impl Tensor {
    /// This value, available only once every tensor of `after` is (XLA's
    /// `optimization_barrier`): nothing computed from it can be merged with computations on
    /// `self` from before the barrier, or moved ahead of `after`.
    #[track_caller]
    pub fn barrier(&self, after: &[&Tensor]) -> Tensor {
        let mut inputs = vec![self];
        inputs.extend(after);
        Tensor::apply(Prim::OptimizationBarrier, &inputs)
    }
}
