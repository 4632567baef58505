//! `sharding_constraint` (JAX's `with_sharding_constraint`): the value is unchanged; the
//! partitioner is told to lay it out as the spec says over the function's mesh. Lowered to
//! Shardy's `sdy.sharding_constraint` when the function runs on a mesh of several devices,
//! to nothing otherwise. Its cotangent gets the same constraint.
use crate::lower::Emitter;
use crate::prim::Prim;
use crate::trace::Tensor;
use crate::types::TensorType;
use sharding::PartitionSpec;

pub(crate) fn infer(p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    let Prim::ShardingConstraint { spec } = p else { unreachable!("internal") };
    if x.len() != 1 {
        return Err(format!("expects one operand, got {}", x.len()));
    }
    if spec.dims.len() != x[0].rank() {
        return Err(format!("the spec {spec} has {} entries for an operand of rank {}", spec.dims.len(), x[0].rank()));
    }
    Ok(x[0].clone())
}

pub(crate) fn lower(p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], out: &TensorType) -> String {
    let Prim::ShardingConstraint { spec } = p else { unreachable!("internal") };
    // Specs were checked against the mesh before lowering (`Function::to_stablehlo_with`).
    match e.mesh.as_ref().and_then(|m| spec.sdy_sharding(m, "mesh").ok()) {
        Some(sharding) => e.op("sdy.sharding_constraint", &[(a[0].0, a[0].1)], &format!("sharding = {sharding}"), None, out),
        None => a[0].0.to_string(),
    }
}

pub(crate) fn vjp(p: &Prim, _x: &[Tensor], _y: &Tensor, ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    let Prim::ShardingConstraint { spec } = p else { return Err(()) };
    Ok(vec![Some(ct.with_sharding_constraint(spec))])
}

impl Tensor {
    /// This value, to be laid out as `spec` says over the function's mesh (JAX's
    /// `with_sharding_constraint`). Without a mesh of several devices it changes nothing.
    #[track_caller]
    pub fn with_sharding_constraint(&self, spec: &PartitionSpec) -> Tensor {
        Tensor::apply(Prim::ShardingConstraint { spec: spec.clone() }, &[self])
    }
}
