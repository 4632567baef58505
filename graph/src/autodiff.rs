//! Reverse-mode autodiff as a graph transform: the forward nodes are kept, and the backward
//! pass is traced after them with the same primitives (through each primitive's VJP rule),
//! so it lowers like any other code. Backward ops carry the forward op's source location.
use crate::function::{Function, Node, Output, Param, Remat, RematMark};
use crate::prim::Prim;
use crate::trace::{Tensor, TraceState};
use crate::types::TensorType;
use crate::Error;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// Reopens a function's nodes as a trace to append to.
fn reopen(f: &Function) -> (Rc<RefCell<TraceState>>, Vec<Tensor>) {
    let state = Rc::new(RefCell::new(TraceState { nodes: f.nodes.clone(), error: None, loc_override: None }));
    let tensors = (0..f.nodes.len()).map(|id| Tensor { id, trace: state.clone() }).collect();
    (state, tensors)
}

fn check_wrt(f: &Function, wrt: &[usize]) -> Result<(), Error> {
    for &w in wrt {
        let p = f.params.get(w).ok_or_else(|| Error::NoSuchParam { function: f.name.clone(), index: w, count: f.params.len() })?;
        if !p.ty.dtype.is_float() {
            return Err(Error::Invalid(format!(
                "{}: cannot differentiate with respect to parameter {w} ({}: {}): not a float",
                f.name, p.name, p.ty
            )));
        }
    }
    Ok(())
}

/// Runs the backward pass from `seeds` (node id, cotangent) and returns the cotangent of
/// each parameter in `wrt` (zeros where the outputs do not depend on it).
fn backward(f: &Function, x: &[Tensor], seeds: Vec<(usize, Tensor)>, wrt: &[usize]) -> Result<Vec<Tensor>, Error> {
    let n = f.nodes.len();
    let param_node: Vec<usize> = {
        let mut v = vec![usize::MAX; f.params.len()];
        for (i, node) in f.nodes.iter().enumerate() {
            if let Prim::Param(p) = node.prim {
                v[p] = i;
            }
        }
        v
    };
    // Which nodes depend on a parameter we differentiate with respect to.
    let mut needs = vec![false; n];
    for &w in wrt {
        needs[param_node[w]] = true;
    }
    for (i, node) in f.nodes.iter().enumerate() {
        // A scan node's own type is a placeholder: its float results carry the gradient.
        let float = node.ty.dtype.is_float() || matches!(node.prim, Prim::Scan(_));
        if node.prim.is_differentiable() && float && node.inputs.iter().any(|&j| needs[j]) {
            needs[i] = true;
        }
    }
    let mut ct: Vec<Option<Tensor>> = vec![None; n];
    let accumulate = |ct: &mut Vec<Option<Tensor>>, i: usize, g: Tensor| {
        ct[i] = Some(match ct[i].take() {
            None => g,
            Some(prev) => prev + g,
        });
    };
    for (id, seed) in seeds {
        if needs[id] {
            accumulate(&mut ct, id, seed);
        }
    }
    let trace = x[0].trace.clone();
    // Values of recomputed blocks (rematerialisation), by forward node id.
    let mut again: HashMap<usize, Tensor> = HashMap::new();
    let mut recomputed: HashSet<u64> = HashSet::new();
    // The cotangents of each scan node's results, gathered from its `ScanResult` nodes.
    let mut loop_cts: HashMap<usize, Vec<Option<Tensor>>> = HashMap::new();
    for i in (0..n).rev() {
        let node: &Node = &f.nodes[i];
        if let Prim::Scan(s) = &node.prim {
            let Some(cts) = loop_cts.remove(&i) else { continue };
            trace.borrow_mut().loc_override = Some(node.loc);
            let value = |j: usize| again.get(&j).unwrap_or(&x[j]).clone();
            let inputs: Vec<Tensor> = node.inputs.iter().map(|&j| value(j)).collect();
            let wanted: Vec<bool> = node.inputs.iter().map(|&j| needs[j]).collect();
            let grads = crate::scan::vjp(s, &value(i), &inputs, &wanted, &cts)?;
            for (&j, gj) in node.inputs.iter().zip(grads) {
                if let (true, Some(gj)) = (needs[j], gj) {
                    accumulate(&mut ct, j, gj);
                }
            }
            continue;
        }
        let Some(g) = ct[i].take() else { continue };
        if matches!(node.prim, Prim::Param(_)) {
            ct[i] = Some(g);
            continue;
        }
        if let Some(mark) = node.remat {
            if recomputed.insert(mark.region) {
                recompute(f, x, mark, &ct, &g, &mut again);
            }
        }
        if let Prim::ScanResult { index, .. } = node.prim {
            let scan = node.inputs[0];
            let count = match &f.nodes[scan].prim {
                Prim::Scan(s) => s.result_types().len(),
                _ => return Err(Error::Invalid(format!("internal: scan_result at {} reads a {}", node.loc, f.nodes[scan].prim.name()))),
            };
            let slot = &mut loop_cts.entry(scan).or_insert_with(|| vec![None; count])[index];
            *slot = Some(match slot.take() {
                None => g,
                Some(prev) => prev + g,
            });
            continue;
        }
        trace.borrow_mut().loc_override = Some(node.loc);
        let value = |j: usize| again.get(&j).unwrap_or(&x[j]).clone();
        let inputs: Vec<Tensor> = node.inputs.iter().map(|&j| value(j)).collect();
        let grads = node.prim.vjp(&inputs, &value(i), &g).map_err(|()| Error::NoVjp { prim: node.prim.name(), loc: node.loc })?;
        for (&j, gj) in node.inputs.iter().zip(grads) {
            if let (true, Some(gj)) = (needs[j], gj) {
                accumulate(&mut ct, j, gj);
            }
        }
    }
    trace.borrow_mut().loc_override = None;
    Ok(wrt
        .iter()
        .map(|&w| {
            let p = param_node[w];
            ct[p].clone().unwrap_or_else(|| x[p].zeros_like())
        })
        .collect())
}

/// Recomputes the block `mark` names from its inputs, after the backward pass has reached it:
/// each input goes through an optimization barrier together with the cotangents the block's
/// outputs have by now, so XLA neither merges the recomputation with the forward pass nor
/// runs it early; the block's values are then read from `again` by the VJP rules. Leaves
/// (constants, iota) and, with `Remat::SaveDots`, dot_general results are kept instead.
fn recompute(f: &Function, x: &[Tensor], mark: RematMark, ct: &[Option<Tensor>], g: &Tensor, again: &mut HashMap<usize, Tensor>) {
    let members: Vec<usize> = (0..f.nodes.len()).filter(|&j| f.nodes[j].remat.is_some_and(|m| m.region == mark.region)).collect();
    let inside: HashSet<usize> = members.iter().copied().collect();
    let mut after: Vec<Tensor> = vec![g.clone()];
    after.extend(members.iter().filter_map(|&j| ct[j].clone()));
    let after_refs: Vec<&Tensor> = after.iter().collect();
    let mut fenced: HashMap<usize, Tensor> = HashMap::new();
    let trace = x[0].trace.clone();
    for &j in &members {
        let node = &f.nodes[j];
        trace.borrow_mut().loc_override = Some(node.loc);
        let keep = node.inputs.is_empty() || (mark.policy == Remat::SaveDots && matches!(node.prim, Prim::DotGeneral(_)));
        if keep {
            again.insert(j, x[j].clone());
            continue;
        }
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &k in &node.inputs {
            let t = if inside.contains(&k) {
                again[&k].clone()
            } else if matches!(f.nodes[k].prim, Prim::Constant { .. } | Prim::Iota { .. }) {
                x[k].clone()
            } else {
                fenced.entry(k).or_insert_with(|| x[k].barrier(&after_refs)).clone()
            };
            inputs.push(t);
        }
        let refs: Vec<&Tensor> = inputs.iter().collect();
        again.insert(j, Tensor::apply(node.prim.clone(), &refs));
    }
}

fn finish(f: &Function, state: Rc<RefCell<TraceState>>, params: Vec<Param>, outputs: Vec<Output>, name: String) -> Result<Function, Error> {
    let mut st = state.borrow_mut();
    if let Some(e) = st.error.take() {
        return Err(e);
    }
    Ok(Function { name, params, nodes: std::mem::take(&mut st.nodes), outputs, mesh: f.mesh.clone() })
}

fn grad_outputs(f: &Function, wrt: &[usize], grads: &[Tensor]) -> Vec<Output> {
    wrt.iter()
        .zip(grads)
        .map(|(&w, g)| Output { name: format!("grad.{}", f.params[w].name), id: g.id, sharding: f.params[w].sharding.clone() })
        .collect()
}

/// Gradients of output 0 (a float scalar, the loss) with respect to the parameters `wrt`;
/// the result returns all of `f`'s outputs (the loss first, then any auxiliary outputs),
/// followed by one gradient per `wrt` parameter, named `grad.<param>`.
pub fn value_and_grad(f: &Function, wrt: &[usize]) -> Result<Function, Error> {
    value_and_grad_of(f, &f.outputs, wrt)
}

/// `value_and_grad` with `outputs` standing for `f.outputs` (a reordering of them), so that
/// callers need not copy the whole function to put the loss first.
fn value_and_grad_of(f: &Function, outputs: &[Output], wrt: &[usize]) -> Result<Function, Error> {
    check_wrt(f, wrt)?;
    let loss = outputs.first().ok_or_else(|| Error::Invalid(format!("{} has no outputs", f.name)))?;
    let lt = &f.nodes[loss.id].ty;
    if lt.rank() != 0 || !lt.dtype.is_float() {
        return Err(Error::Invalid(format!(
            "{}: output 0 ({}) must be a float scalar to take its gradient, it is {lt}",
            f.name, loss.name
        )));
    }
    let (state, x) = reopen(f);
    state.borrow_mut().loc_override = Some(f.nodes[loss.id].loc);
    let seed = x[loss.id].scalar_like(1.0);
    let grads = backward(f, &x, vec![(loss.id, seed)], wrt)?;
    let mut outputs = outputs.to_vec();
    outputs.extend(grad_outputs(f, wrt, &grads));
    drop((x, grads));
    finish(f, state, f.params.clone(), outputs, format!("{}_value_and_grad", f.name))
}

/// `value_and_grad` for functions of trees: the loss is the output named `loss`, and the
/// gradients (`grad.<path>`) are taken for every parameter at or under `wrt` (e.g. `params`).
pub fn value_and_grad_tree(f: &Function, loss: &str, wrt: &str) -> Result<Function, Error> {
    let at = f.outputs.iter().position(|o| o.name == loss).ok_or_else(|| {
        let names: Vec<&str> = f.outputs.iter().map(|o| o.name.as_str()).collect();
        Error::Invalid(format!("{}: no output named {loss:?} to differentiate (outputs: {})", f.name, names.join(", ")))
    })?;
    let params = f.params_under(wrt);
    if params.is_empty() {
        return Err(Error::Invalid(format!("{}: no parameters at or under {wrt:?}", f.name)));
    }
    let mut outputs = f.outputs.clone();
    let l = outputs.remove(at);
    outputs.insert(0, l);
    value_and_grad_of(f, &outputs, &params)
}

/// Like `value_and_grad`, returning only the gradients.
pub fn grad(f: &Function, wrt: &[usize]) -> Result<Function, Error> {
    let mut g = value_and_grad(f, wrt)?;
    g.outputs.drain(..f.outputs.len());
    g.name = format!("{}_grad", f.name);
    Ok(g)
}

/// The vector-Jacobian product of any function: takes `f`'s parameters plus one cotangent
/// per output (`ct_<output>`), returns `f`'s outputs and the gradients for `wrt`.
pub fn vjp(f: &Function, wrt: &[usize]) -> Result<Function, Error> {
    check_wrt(f, wrt)?;
    let (state, x) = reopen(f);
    let mut params = f.params.clone();
    let mut seeds = Vec::new();
    for o in &f.outputs {
        let ty: TensorType = f.nodes[o.id].ty.clone();
        let index = params.len();
        params.push(Param { name: format!("ct_{}", o.name), ty: ty.clone(), sharding: o.sharding.clone(), donate: false });
        let node = Node { prim: Prim::Param(index), inputs: vec![], ty, loc: f.nodes[o.id].loc, remat: None };
        let id = {
            let mut st = state.borrow_mut();
            st.nodes.push(node);
            st.nodes.len() - 1
        };
        seeds.push((o.id, Tensor { id, trace: state.clone() }));
    }
    let grads = backward(f, &x, seeds, wrt)?;
    let mut outputs = f.outputs.clone();
    outputs.extend(grad_outputs(f, wrt, &grads));
    drop((x, grads));
    finish(f, state, params, outputs, format!("{}_vjp", f.name))
}
