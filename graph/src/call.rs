//! Functions calling functions (JAX's eval_jaxpr): `Function::call` inlines a traced
//! function's live nodes into the trace being built, so `value_and_grad(loss)` can run
//! inside a train-step trace and be differentiated again. And tracing over trees of named
//! arguments: `trace_tree` flattens the tree to positional parameters in its fixed order.
use crate::function::{Function, Node, Remat, RematMark};
use crate::prim::{Literal, Prim};
use crate::trace::{trace, Loc, Tensor, Tracer};
use crate::tree::Tree;
use crate::types::TensorType;
use crate::Error;
use std::rc::Rc;

/// A process-wide fresh id for a recomputed block.
fn next_region() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Function {
    /// Inlines this function into the trace of `args` (or, with no arguments, the innermost
    /// trace being built) and returns its outputs there. Arguments must match the parameter
    /// types; a mismatch is recorded as a trace error (reported when the enclosing `trace`
    /// returns), and placeholders are returned. Parameter shardings and donation of the
    /// callee do not carry over; its ops keep their own source locations.
    #[track_caller]
    pub fn call(&self, args: &[Tensor]) -> Vec<Tensor> {
        self.call_inner(args, Loc::caller(), Remat::None)
    }

    /// `call`, with the inlined nodes marked so that the backward pass recomputes them from
    /// the block's inputs instead of keeping their values (JAX's `jax.checkpoint`), as
    /// `policy` says. `Remat::None` is a plain `call`.
    #[track_caller]
    pub fn call_remat(&self, args: &[Tensor], policy: Remat) -> Vec<Tensor> {
        self.call_inner(args, Loc::caller(), policy)
    }

    fn call_inner(&self, args: &[Tensor], loc: Loc, policy: Remat) -> Vec<Tensor> {
        let mark = (policy != Remat::None).then(|| RematMark { region: next_region(), policy });
        let Some(tracer) = args.first().map(Tensor::tracer).or_else(Tracer::current) else {
            return Vec::new(); // nowhere to record: not tracing and nothing to trace with
        };
        if let Some(e) = self.check_call(args, &tracer, loc) {
            tracer.fail(e);
            return self.placeholders(&tracer, loc);
        }
        let live = self.live_nodes();
        let mut map = vec![usize::MAX; self.nodes.len()];
        let mut st = tracer.state.borrow_mut();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Prim::Param(p) = node.prim {
                map[i] = args[p].id;
            } else if live[i] {
                let inputs = node.inputs.iter().map(|&j| map[j]).collect();
                st.nodes.push(Node { prim: node.prim.clone(), inputs, ty: node.ty.clone(), loc: node.loc, remat: mark.or(node.remat) });
                map[i] = st.nodes.len() - 1;
            }
        }
        drop(st);
        self.outputs.iter().map(|o| Tensor { id: map[o.id], trace: tracer.state.clone() }).collect()
    }

    fn check_call(&self, args: &[Tensor], tracer: &Tracer, loc: Loc) -> Option<Error> {
        let call_error = |message: String| Some(Error::Call { function: self.name.clone(), loc, message });
        if args.len() != self.params.len() {
            return call_error(format!("takes {} arguments, got {}", self.params.len(), args.len()));
        }
        for (i, (a, p)) in args.iter().zip(&self.params).enumerate() {
            if !Rc::ptr_eq(&a.trace, &tracer.state) {
                return call_error(format!("argument {i} ({}) comes from another trace", p.name));
            }
            if a.ty() != p.ty {
                return call_error(format!("argument {i} ({}) must be {}, got {}", p.name, p.ty, a.ty()));
            }
        }
        None
    }

    /// Zeros of the output types, standing in after a failed call.
    fn placeholders(&self, tracer: &Tracer, loc: Loc) -> Vec<Tensor> {
        let mut st = tracer.state.borrow_mut();
        let mut out = Vec::new();
        for o in &self.outputs {
            let ty: TensorType = self.nodes[o.id].ty.clone();
            let value = if ty.dtype.is_float() { Literal::Float(vec![0.0]) } else { Literal::Int(vec![0]) };
            st.nodes.push(Node { prim: Prim::Constant { ty: ty.clone(), value }, inputs: vec![], ty, loc, remat: None });
            out.push(Tensor { id: st.nodes.len() - 1, trace: tracer.state.clone() });
        }
        out
    }

    /// `call` with arguments and results as trees named like the parameters and outputs.
    #[track_caller]
    pub fn call_tree(&self, args: &Tree<Tensor>) -> Tree<Tensor> {
        let loc = Loc::caller();
        let mut flat = Vec::with_capacity(self.params.len());
        for p in &self.params {
            match args.get(&p.name) {
                Some(t) => flat.push(t.clone()),
                None => {
                    if let Some(tracer) = args.values().next().map(Tensor::tracer).or_else(Tracer::current) {
                        tracer.fail(Error::Call { function: self.name.clone(), loc, message: format!("no argument named {:?}", p.name) });
                        let outs = self.placeholders(&tracer, loc);
                        return self.outputs.iter().zip(outs).map(|(o, t)| (o.name.clone(), t)).collect_tree();
                    }
                    return Tree::new();
                }
            }
        }
        let outs = self.call(&flat);
        self.outputs.iter().zip(outs).map(|(o, t)| (o.name.clone(), t)).collect_tree()
    }

    /// The parameters as a tree of types (paths are the parameter names).
    pub fn param_tree(&self) -> Tree<TensorType> {
        self.params.iter().map(|p| (p.name.clone(), p.ty.clone())).collect_tree()
    }

    /// The outputs as a tree of types.
    pub fn output_tree(&self) -> Tree<TensorType> {
        self.outputs.iter().map(|o| (o.name.clone(), self.nodes[o.id].ty.clone())).collect_tree()
    }

    /// Positions of the parameters at or under `prefix` (e.g. `params`), for `grad`.
    pub fn params_under(&self, prefix: &str) -> Vec<usize> {
        let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        (0..names.len()).filter(|&i| names[i] == prefix || names[i].strip_prefix(prefix).is_some_and(|r| r.starts_with('.'))).collect()
    }
}

/// Builds a tree from (path, value) pairs whose paths are known to be valid and distinct
/// (they come from a `Function`'s names, which `trace_tree` checked).
trait CollectTree<T> {
    fn collect_tree(self) -> Tree<T>;
}

impl<T, I: Iterator<Item = (String, T)>> CollectTree<T> for I {
    fn collect_tree(self) -> Tree<T> {
        let mut t = Tree::new();
        for (p, v) in self {
            // Names that are not tree paths (e.g. `out0`) are still valid single segments;
            // a clash cannot happen for the distinct names of one function.
            let _ = t.insert(p, v);
        }
        t
    }
}

/// Traces `f` over a tree of named arguments into a `Function` whose parameters are the
/// tree's leaves in flattening order (named by their paths) and whose outputs are the
/// leaves of the returned tree, likewise.
pub fn trace_tree<F>(name: &str, args: &Tree<TensorType>, f: F) -> Result<Function, Error>
where
    F: FnOnce(&Tree<Tensor>) -> Tree<Tensor>,
{
    let params: Vec<(&str, TensorType)> = args.iter().map(|(p, t)| (p, t.clone())).collect();
    let mut names = Vec::new();
    let function = trace(name, &params, |flat| {
        let tree = Tree::from_leaves(args.paths().zip(flat.iter().cloned())).expect("internal: the paths come from a tree");
        let out = f(&tree);
        names = out.paths().map(str::to_string).collect();
        out.into_leaves().into_iter().map(|(_, t)| t).collect()
    })?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(function.rename_outputs(&refs))
}
