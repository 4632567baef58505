//! Barriers: scheduling hints to XLA that leave every value unchanged.
//!
//! `optimization_barrier`: the value of operand 0, unchanged, with the promise to XLA that it
//! is only known once every operand is. Rematerialisation routes the inputs of a recomputed
//! block through it, with a cotangent of the backward pass as the other operand, so XLA can
//! neither merge the recomputation with the forward pass (CSE) nor hoist it before the
//! backward pass needs it.
//!
//! `cotangent_barrier`: the value unchanged and nothing emitted for it; its cotangent goes
//! through an `optimization_barrier`, so XLA computes that cotangent once into memory rather
//! than fusing its computation into each op that reads it. The train step puts one on the
//! logits: the loss's gradient over the vocabulary is elementwise work (softmax, one-hot,
//! soft-capping) read by two matmuls, and XLA's TPU compiler otherwise fuses it into both,
//! one kernel of which then took it about a second to compile.
use crate::lower::Emitter;
use crate::prim::Prim;
use crate::trace::Tensor;
use crate::types::TensorType;

pub(crate) fn infer(p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    match (p, x) {
        (Prim::CotangentBarrier, [t]) => Ok((*t).clone()),
        (Prim::CotangentBarrier, _) => Err(format!("expects one operand, got {}", x.len())),
        (_, [t, ..]) => Ok((*t).clone()),
        (_, []) => Err("expects at least one operand".into()),
    }
}

pub(crate) fn lower(p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], _out: &TensorType) -> String {
    if *p == Prim::CotangentBarrier {
        return a[0].0.to_string();
    }
    let operands = a;
    let results: Vec<TensorType> = a.iter().map(|(_, t)| (*t).clone()).collect();
    e.multi_op("stablehlo.optimization_barrier", operands, "", &results).swap_remove(0)
}

pub(crate) fn vjp(p: &Prim, x: &[Tensor], _y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    if *p == Prim::CotangentBarrier {
        return Ok(vec![Some(ct.barrier(&[]))]);
    }
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

    /// This value, unchanged, with its cotangent computed once into memory: the backward
    /// pass routes the cotangent through an `optimization_barrier`, so XLA cannot fuse the
    /// cotangent's computation into the ops that read it (see the module's note). Nothing
    /// is emitted for the forward pass.
    #[track_caller]
    pub fn cotangent_barrier(&self) -> Tensor {
        Tensor::apply(Prim::CotangentBarrier, &[self])
    }
}
