//! `scan`: a loop over the leading axis of stacked operands, carrying state from step to
//! step and collecting per-step outputs (JAX's `lax.scan`). The body is traced once, so a
//! model whose layers run through a scan lowers to one `stablehlo.while` whose size does
//! not grow with the number of layers.
//!
//! A `Prim::Scan` node has several results; `Prim::ScanResult` nodes read them. Its VJP is a
//! second scan running the other way over the body's VJP: what the backward step reads of the
//! forward step is either saved by the forward loop as extra stacked outputs or recomputed
//! from the saved carries, as the scan's `Remat` policy says.
use crate::function::{Function, Output, Remat};
use crate::lower::{emit_nodes, Emitter};
use crate::prim::{Cmp, Literal, Prim};
use crate::trace::{trace, Loc, Tensor, Tracer};
use crate::types::{DType, TensorType};
use crate::Error;
use ndarray::{ArrayD, Axis};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// A loop's static description: its body and how the operands map onto the body's
/// parameters.
///
/// The body's parameters are the carries (`carries` of them), then one slice of each stacked
/// input (`xs`; the stacked operand is `[length, ...]` of the slice's type), then the
/// loop-invariant operands. Its outputs are the new carries (the carries' types, in order),
/// then the per-step outputs, which the loop stacks to `[length, ...]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scan {
    /// The loop body.
    pub body: Function,
    /// The number of steps.
    pub length: i64,
    /// How many of the body's leading parameters (and outputs) are carries.
    pub carries: usize,
    /// How many parameters after the carries are slices of stacked operands.
    pub xs: usize,
    /// Steps run from the last index down to 0 (the stacked outputs are still indexed by step
    /// position, not by order of execution).
    pub reverse: bool,
    /// What the backward pass keeps of each step: `None` saves every value the backward step
    /// reads, `Full` saves only the carries and recomputes the step, `SaveDots` saves the
    /// carries and the dot_general results.
    pub remat: Remat,
}

/// Options of `scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanOptions {
    /// Run the steps from the last index down to 0.
    pub reverse: bool,
    /// What the backward pass keeps of each step (see `Scan::remat`).
    pub remat: Remat,
}

/// The type of a `Scan` node itself (its values are read through `ScanResult` nodes).
pub(crate) fn placeholder() -> TensorType {
    TensorType::scalar(DType::Pred)
}

fn stacked(length: i64, ty: &TensorType) -> TensorType {
    let mut dims = vec![length];
    dims.extend(&ty.dims);
    TensorType::new(ty.dtype, &dims)
}

impl Scan {
    /// The number of loop-invariant operands.
    pub fn consts(&self) -> usize {
        self.body.params.len().saturating_sub(self.carries + self.xs)
    }

    /// The number of per-step outputs.
    pub fn ys(&self) -> usize {
        self.body.outputs.len().saturating_sub(self.carries)
    }

    /// The loop's result types: the carries, then the stacked per-step outputs.
    pub fn result_types(&self) -> Vec<TensorType> {
        let outs = self.body.output_types();
        let mut types: Vec<TensorType> = outs.iter().take(self.carries).cloned().collect();
        types.extend(outs.iter().skip(self.carries).map(|t| stacked(self.length, t)));
        types
    }

    /// The body agrees with the counts: enough parameters and outputs, carries in = out.
    fn check(&self) -> Result<(), String> {
        if self.length < 0 {
            return Err(format!("negative length {}", self.length));
        }
        let (params, outs) = (self.body.params.len(), self.body.outputs.len());
        if params < self.carries + self.xs || outs < self.carries {
            return Err(format!(
                "body {} has {params} parameters and {outs} outputs, too few for {} carries and {} stacked inputs",
                self.body.name, self.carries, self.xs
            ));
        }
        let outs = self.body.output_types();
        for (k, (p, o)) in self.body.params.iter().zip(&outs).take(self.carries).enumerate() {
            if p.ty != *o {
                return Err(format!("carry {k} ({}) enters the body as {} and leaves it as {o}", p.name, p.ty));
            }
        }
        Ok(())
    }
}

pub(crate) fn infer(p: &Prim, inputs: &[&TensorType]) -> Result<TensorType, String> {
    match p {
        Prim::Scan(s) => {
            s.check()?;
            if inputs.len() != s.body.params.len() {
                return Err(format!("body {} takes {} operands, got {}", s.body.name, s.body.params.len(), inputs.len()));
            }
            for (k, (t, p)) in inputs.iter().zip(&s.body.params).enumerate() {
                let want = if k >= s.carries && k < s.carries + s.xs { stacked(s.length, &p.ty) } else { p.ty.clone() };
                if **t != want {
                    return Err(format!("operand {k} ({}) must be {want}, got {t}", p.name));
                }
            }
            Ok(placeholder())
        }
        Prim::ScanResult { ty, .. } => match inputs {
            [t] if **t == placeholder() => Ok(ty.clone()),
            _ => Err("expects one operand, a scan".into()),
        },
        _ => Err("internal: not a loop primitive".into()),
    }
}

/// Runs `body` over the leading axis of the stacked tensors `xs` (all of one length, at least
/// one of them), starting from the carries `init`, with the loop-invariant `consts`.
///
/// The closure gets the carries, one slice of each stacked input and the constants (as new
/// traced values: it must not use tensors of the enclosing trace), and returns the new
/// carries (of the carries' types) and the per-step outputs. The result is the final carries
/// and the per-step outputs stacked to `[length, ...]`.
#[track_caller]
pub fn scan<F>(
    name: &str,
    init: &[Tensor],
    xs: &[Tensor],
    consts: &[Tensor],
    opts: ScanOptions,
    body: F,
) -> Result<(Vec<Tensor>, Vec<Tensor>), Error>
where
    F: FnOnce(&[Tensor], &[Tensor], &[Tensor]) -> (Vec<Tensor>, Vec<Tensor>),
{
    let loc = Loc::caller();
    let invalid = |message: String| Error::Invalid(format!("scan {name} at {loc}: {message}"));
    let Some(first) = xs.first() else { return Err(invalid("needs at least one stacked input (its leading axis is the loop)".into())) };
    let length = first.dims().first().copied().ok_or_else(|| invalid(format!("stacked input 0 is a scalar {}", first.ty())))?;
    let mut params: Vec<(String, TensorType)> = Vec::new();
    for (k, t) in init.iter().enumerate() {
        params.push((format!("carry{k}"), t.ty()));
    }
    for (k, t) in xs.iter().enumerate() {
        let d = t.dims();
        if d.first() != Some(&length) {
            return Err(invalid(format!("stacked input {k} is {}, the loop has length {length}", t.ty())));
        }
        params.push((format!("x{k}"), TensorType::new(t.dtype(), &d[1..])));
    }
    for (k, t) in consts.iter().enumerate() {
        params.push((format!("const{k}"), t.ty()));
    }
    let (nc, nx) = (init.len(), xs.len());
    let mut returned = 0;
    let named: Vec<(&str, TensorType)> = params.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let f = trace(name, &named, |p| {
        let (c, y) = body(&p[..nc], &p[nc..nc + nx], &p[nc + nx..]);
        returned = c.len();
        c.into_iter().chain(y).collect()
    })?;
    if returned != nc {
        return Err(invalid(format!("the body returns {returned} carries for {nc} initial ones")));
    }
    let spec = Scan { body: f, length, carries: nc, xs: nx, reverse: opts.reverse, remat: opts.remat };
    spec.check().map_err(invalid)?;
    let inputs: Vec<&Tensor> = init.iter().chain(xs).chain(consts).collect();
    let trace = first.trace.clone();
    if let Some(k) = inputs.iter().position(|t| !Rc::ptr_eq(&t.trace, &trace)) {
        return Err(invalid(format!("operand {k} comes from another trace")));
    }
    let results = apply(&trace, spec, &inputs);
    let ys = results[nc..].to_vec();
    Ok((results[..nc].to_vec(), ys))
}

/// Appends a scan node and one `ScanResult` per result; returns the results.
#[track_caller]
fn apply(trace: &Rc<std::cell::RefCell<crate::trace::TraceState>>, spec: Scan, inputs: &[&Tensor]) -> Vec<Tensor> {
    let types = spec.result_types();
    let node = Tensor::apply_in(trace, Prim::Scan(Rc::new(spec)), inputs);
    types.into_iter().enumerate().map(|(index, ty)| Tensor::apply_in(trace, Prim::ScanResult { index, ty }, &[&node])).collect()
}

// ---- lowering

fn zeros(ty: &TensorType) -> Literal {
    if ty.num_elements() == 0 {
        Literal::Empty
    } else if ty.dtype.is_float() {
        Literal::Float(vec![0.0])
    } else {
        Literal::Int(vec![0])
    }
}

/// Lowers a scan to `stablehlo.while` over (step, carries, stacked inputs, constants, stacked
/// outputs); returns the SSA values of the scan's results.
pub(crate) fn lower(s: &Scan, e: &mut Emitter, args: &[(&str, &TensorType)], locations: bool) -> Vec<String> {
    let loc = e.loc_text();
    let (c, nx, nk) = (s.carries, s.xs, s.consts());
    let i32t = TensorType::scalar(DType::S32);
    let predt = TensorType::scalar(DType::Pred);
    let ys_types: Vec<TensorType> = s.result_types().split_off(c);
    let mut operands: Vec<(String, TensorType)> = vec![(e.scalar(DType::S32, 0.0), i32t.clone())];
    operands.extend(args.iter().map(|(n, t)| (n.to_string(), (*t).clone())));
    for t in &ys_types {
        let z = e.constant(t, &zeros(t));
        operands.push((z, t.clone()));
    }
    let mut outer = String::new();
    e.swap_body(&mut outer);
    // The condition: step < length.
    let cond_args: Vec<String> = operands.iter().map(|_| e.fresh_name()).collect();
    let limit = e.scalar(DType::S32, s.length as f64);
    let more = Prim::Compare(Cmp::Lt).lower(e, &[(&cond_args[0], &i32t), (&limit, &i32t)], &predt);
    e.write_return(&[(&more, &predt)]);
    let mut cond = String::new();
    e.swap_body(&mut cond);
    // The body: slice the stacked inputs at this step's position, run the body, write its
    // outputs into the stacked outputs, count the step.
    let body_args: Vec<String> = operands.iter().map(|_| e.fresh_name()).collect();
    let step = &body_args[0];
    let pos = if s.reverse {
        let last = e.scalar(DType::S32, (s.length - 1) as f64);
        Prim::Sub.lower(e, &[(&last, &i32t), (step, &i32t)], &i32t)
    } else {
        step.clone()
    };
    let zero = e.scalar(DType::S32, 0.0);
    let mut params: Vec<String> = body_args[1..1 + c].to_vec();
    for j in 0..nx {
        let whole = &operands[1 + c + j].1;
        let slice = &s.body.params[c + j].ty;
        let one = stacked(1, slice);
        let mut starts: Vec<(&str, &TensorType)> = vec![(&body_args[1 + c + j], whole), (&pos, &i32t)];
        starts.extend(std::iter::repeat_n((zero.as_str(), &i32t), slice.rank()));
        let block = Prim::DynamicSlice { sizes: one.dims.clone() }.lower(e, &starts, &one);
        params.push(Prim::Reshape { dims: slice.dims.clone() }.lower(e, &[(&block, &one)], slice));
    }
    params.extend(body_args[1 + c + nx..1 + c + nx + nk].iter().cloned());
    let live = s.body.live_nodes();
    let outs = emit_nodes(&s.body, e, &params, &live, locations);
    e.restore_loc(loc.clone());
    let out_types = s.body.output_types();
    let mut next: Vec<(String, TensorType)> = Vec::new();
    let one_step = e.scalar(DType::S32, 1.0);
    next.push((Prim::Add.lower(e, &[(step, &i32t), (&one_step, &i32t)], &i32t), i32t.clone()));
    for k in 0..c {
        next.push((outs[k].clone(), out_types[k].clone()));
    }
    for (k, arg) in body_args.iter().enumerate().skip(1 + c).take(nx + nk) {
        next.push((arg.clone(), operands[k].1.clone()));
    }
    for (j, whole) in ys_types.iter().enumerate() {
        let y = &out_types[c + j];
        let one = stacked(1, y);
        let block = Prim::Reshape { dims: one.dims.clone() }.lower(e, &[(&outs[c + j], y)], &one);
        let acc = &body_args[1 + c + nx + nk + j];
        let mut update: Vec<(&str, &TensorType)> = vec![(acc, whole), (&block, &one), (&pos, &i32t)];
        update.extend(std::iter::repeat_n((zero.as_str(), &i32t), y.rank()));
        next.push((Prim::DynamicUpdateSlice.lower(e, &update, whole), whole.clone()));
    }
    let refs: Vec<(&str, &TensorType)> = next.iter().map(|(n, t)| (n.as_str(), t)).collect();
    e.write_return(&refs);
    let mut body = String::new();
    e.swap_body(&mut body);
    e.swap_body(&mut outer);
    let block_args = |names: &[String]| -> String {
        names.iter().zip(&operands).map(|(n, (_, t))| format!("{n}: {}", t.mlir())).collect::<Vec<_>>().join(", ")
    };
    let types = operands.iter().map(|(_, t)| t.mlir()).collect::<Vec<_>>().join(", ");
    let names = operands.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    let w = e.fresh_name();
    let text = format!(
        "    {w}:{} = \"stablehlo.while\"({names}) ({{\n    ^bb0({}):\n{cond}    }}, {{\n    ^bb0({}):\n{body}    }}) : ({types}) -> ({types}){loc}\n",
        operands.len(),
        block_args(&cond_args),
        block_args(&body_args),
    );
    e.push_text(&text);
    let mut results: Vec<String> = (0..c).map(|k| format!("{w}#{}", 1 + k)).collect();
    results.extend((0..ys_types.len()).map(|j| format!("{w}#{}", 1 + c + nx + nk + j)));
    results
}

// ---- the reference evaluator

/// The scan's results from its operands' values, running the body with `graph::eval`.
pub(crate) fn eval(s: &Scan, x: &[&ArrayD<f64>]) -> Result<Vec<ArrayD<f64>>, Error> {
    let (c, nx) = (s.carries, s.xs);
    let n = usize::try_from(s.length).map_err(|_| Error::Invalid(format!("scan of negative length {}", s.length)))?;
    let mut carry: Vec<ArrayD<f64>> = x[..c].iter().map(|a| (*a).clone()).collect();
    let mut ys: Vec<Vec<ArrayD<f64>>> = vec![Vec::with_capacity(n); s.ys()];
    for step in 0..n {
        let pos = if s.reverse { n - 1 - step } else { step };
        let mut args = carry;
        args.extend(x[c..c + nx].iter().map(|a| a.index_axis(Axis(0), pos).to_owned()));
        args.extend(x[c + nx..].iter().map(|a| (*a).clone()));
        let mut out = crate::eval::eval(&s.body, &args)?;
        let y = out.split_off(c);
        carry = out;
        for (acc, v) in ys.iter_mut().zip(y) {
            acc.push(v);
        }
    }
    let mut results = carry;
    for (acc, ty) in ys.iter_mut().zip(s.result_types().split_off(c)) {
        if s.reverse {
            acc.reverse();
        }
        let shape: Vec<usize> = ty.dims.iter().map(|&d| d as usize).collect();
        let stackedv = if acc.is_empty() {
            ArrayD::zeros(shape)
        } else {
            let views: Vec<_> = acc.iter().map(|a| a.view()).collect();
            ndarray::stack(Axis(0), &views).map_err(|e| Error::Invalid(format!("scan: stacking outputs: {e}")))?
        };
        results.push(stackedv);
    }
    Ok(results)
}

// ---- the VJP

/// Which nodes `roots` depend on, not looking past the nodes in `stops`.
fn liveness(f: &Function, roots: &[usize], stops: &HashSet<usize>) -> Vec<bool> {
    let mut live = vec![false; f.nodes.len()];
    for &r in roots {
        live[r] = true;
    }
    for i in (0..f.nodes.len()).rev() {
        if live[i] && !stops.contains(&i) {
            for &j in &f.nodes[i].inputs {
                live[j] = true;
            }
        }
    }
    live
}

/// The node of each parameter of `f`.
fn param_nodes(f: &Function) -> Vec<usize> {
    let mut v = vec![usize::MAX; f.params.len()];
    for (i, node) in f.nodes.iter().enumerate() {
        if let Prim::Param(p) = node.prim {
            v[p] = i;
        }
    }
    v
}

/// Cotangents of the scan's operands (`x`, with `needs` saying which ones are wanted) from
/// the cotangents of its results (`cts`; `None` where a result has none). `node` is the scan
/// node in the trace being differentiated: it is extended in place to also output what the
/// backward loop reads of each step.
pub(crate) fn vjp(s: &Scan, node: &Tensor, x: &[Tensor], needs: &[bool], cts: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, Error> {
    let (c, nx, nk, ny) = (s.carries, s.xs, s.consts(), s.ys());
    let body = &s.body;
    let float = |k: usize| body.params[k].ty.dtype.is_float();
    // Every float carry (cotangents flow through them from step to step), and the wanted
    // float stacked and loop-invariant operands.
    let wrt: Vec<usize> = (0..body.params.len()).filter(|&k| float(k) && (k < c || needs[k])).collect();
    let v = crate::autodiff::vjp(body, &wrt)?;
    let nb = body.nodes.len();
    let grad_ids: Vec<usize> = (0..wrt.len()).map(|w| v.outputs[body.outputs.len() + w].id).collect();
    let all = liveness(&v, &grad_ids, &HashSet::new());
    let mut read_back = vec![false; v.nodes.len()];
    for (node, _) in v.nodes.iter().zip(&all).skip(nb).filter(|(_, l)| **l) {
        for &j in &node.inputs {
            read_back[j] = true;
        }
    }
    // Values worth saving: computed (not parameters, constants or iotas) by the forward step,
    // and not a nested scan node itself (its results are saved instead).
    let saveable =
        |j: usize| j < nb && all[j] && !v.nodes[j].inputs.is_empty() && !matches!(v.nodes[j].prim, Prim::Param(_) | Prim::Scan(_));
    let saved: Vec<usize> = match s.remat {
        Remat::None => saved_without_remat(&v, nb, &read_back, &saveable),
        Remat::Full => Vec::new(),
        Remat::SaveDots => (0..nb).filter(|&j| saveable(j) && matches!(v.nodes[j].prim, Prim::DotGeneral(_))).collect(),
    };
    let stops: HashSet<usize> = saved.iter().copied().collect();
    let live = liveness(&v, &grad_ids, &stops);
    let pv = param_nodes(&v);
    let pb = param_nodes(body);
    let saved_carries: Vec<usize> = (0..c).filter(|&k| live[pv[k]]).collect();
    let used_xs: Vec<usize> = (0..nx).filter(|&j| live[pv[c + j]]).collect();

    // The forward loop, extended to output the saved carries and values of each step.
    let mut ext = body.clone();
    for &k in &saved_carries {
        ext.outputs.push(Output { name: format!("saved.carry{k}"), id: pb[k], sharding: None });
    }
    for &j in &saved {
        ext.outputs.push(Output { name: format!("saved.{j}"), id: j, sharding: None });
    }
    let extended = Scan { body: ext, ..s.clone() };
    let before = s.result_types().len();
    let all_types = extended.result_types();
    node.trace.borrow_mut().nodes[node.id].prim = Prim::Scan(Rc::new(extended));
    let residuals: Vec<Tensor> = all_types
        .into_iter()
        .enumerate()
        .skip(before)
        .map(|(index, ty)| Tensor::apply_in(&node.trace, Prim::ScanResult { index, ty }, &[node]))
        .collect();
    let (saved_carry_values, saved_values) = residuals.split_at(saved_carries.len());

    // The backward step: carries are the carries' cotangents and the constants' gradients
    // summed so far; stacked inputs are the saved values and the outputs' cotangents.
    let carry_wrt: Vec<usize> = wrt.iter().copied().filter(|&k| k < c).collect();
    let const_wrt: Vec<usize> = wrt.iter().copied().filter(|&k| k >= c + nx).collect();
    let xs_wrt: Vec<usize> = wrt.iter().copied().filter(|&k| k >= c && k < c + nx).collect();
    let y_cts: Vec<usize> = (0..ny).filter(|&j| cts[c + j].is_some() && body.output_types()[c + j].dtype.is_float()).collect();
    let mut params: Vec<(String, TensorType)> = Vec::new();
    for &k in &carry_wrt {
        params.push((format!("ct.carry{k}"), body.params[k].ty.clone()));
    }
    for &k in &const_wrt {
        params.push((format!("grad.const{k}"), body.params[k].ty.clone()));
    }
    let bw_carries = params.len();
    for &k in &saved_carries {
        params.push((format!("carry{k}"), body.params[k].ty.clone()));
    }
    for &j in &used_xs {
        params.push((format!("x{j}"), body.params[c + j].ty.clone()));
    }
    for &j in &saved {
        params.push((format!("saved{j}"), v.nodes[j].ty.clone()));
    }
    let out_types = body.output_types();
    for &j in &y_cts {
        params.push((format!("ct.y{j}"), out_types[c + j].clone()));
    }
    let bw_xs = params.len() - bw_carries;
    for k in c + nx..c + nx + nk {
        params.push((format!("const{k}"), body.params[k].ty.clone()));
    }
    let named: Vec<(&str, TensorType)> = params.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let mut inline_error = None;
    let bw = trace(&format!("{}_bwd", body.name), &named, |p| {
        let mut it = p.iter().cloned();
        let mut subst: HashMap<usize, Tensor> = HashMap::new();
        let ct_carry: Vec<Tensor> = carry_wrt.iter().map(|_| it.next().expect("internal: counted")).collect();
        let acc: Vec<Tensor> = const_wrt.iter().map(|_| it.next().expect("internal: counted")).collect();
        for &k in &saved_carries {
            subst.insert(pv[k], it.next().expect("internal: counted"));
        }
        for &j in &used_xs {
            subst.insert(pv[c + j], it.next().expect("internal: counted"));
        }
        for &j in &saved {
            subst.insert(j, it.next().expect("internal: counted"));
        }
        let ct_y: Vec<Tensor> = y_cts.iter().map(|_| it.next().expect("internal: counted")).collect();
        for &id in &pv[c + nx..c + nx + nk] {
            subst.insert(id, it.next().expect("internal: counted"));
        }
        // With remat, what the step recomputes from (saved carries and values, this step's
        // slices) goes through an optimization barrier with the incoming cotangents, as a
        // rematerialised block outside a loop does: XLA then keeps the recomputation apart
        // from the backward step's own work.
        if s.remat != Remat::None {
            let after: Vec<Tensor> = ct_carry.iter().chain(&ct_y).cloned().collect();
            let refs: Vec<&Tensor> = after.iter().collect();
            let fenced: Vec<usize> =
                saved_carries.iter().map(|&k| pv[k]).chain(used_xs.iter().map(|&j| pv[c + j])).chain(saved.iter().copied()).collect();
            for id in fenced {
                let t = subst[&id].barrier(&refs);
                subst.insert(id, t);
            }
        }
        // The VJP's cotangent parameters: one per body output, after the body's parameters.
        let tracer = Tracer::current().expect("internal: inside trace");
        for o in 0..body.outputs.len() {
            let id = pv[body.params.len() + o];
            let given = if o < c {
                carry_wrt.iter().position(|&k| k == o).map(|w| ct_carry[w].clone())
            } else {
                y_cts.iter().position(|&j| j == o - c).map(|w| ct_y[w].clone())
            };
            let t = given.unwrap_or_else(|| tracer.scalar(out_types[o].dtype, 0.0).broadcast_to(&out_types[o].dims));
            subst.insert(id, t);
        }
        let grads = match inline(&v, &live, &subst, &grad_ids, &tracer) {
            Ok(g) => g,
            Err(e) => {
                inline_error = Some(e);
                return Vec::new();
            }
        };
        let mut outs = Vec::new();
        for &k in &carry_wrt {
            outs.push(grads[wrt.iter().position(|&w| w == k).expect("internal: in wrt")].clone());
        }
        for (a, &k) in acc.iter().zip(&const_wrt) {
            outs.push(a + &grads[wrt.iter().position(|&w| w == k).expect("internal: in wrt")]);
        }
        for &k in &xs_wrt {
            outs.push(grads[wrt.iter().position(|&w| w == k).expect("internal: in wrt")].clone());
        }
        outs
    });
    if let Some(e) = inline_error {
        return Err(e);
    }
    let bw = bw?;

    // The backward loop over the forward loop's saved values, in the other direction.
    let zeros_like = |t: &Tensor| t.zeros_like();
    let mut inputs: Vec<Tensor> = Vec::new();
    for &k in &carry_wrt {
        inputs.push(cts[k].clone().unwrap_or_else(|| zeros_like(&x[k])));
    }
    for &k in &const_wrt {
        inputs.push(zeros_like(&x[k]));
    }
    inputs.extend(saved_carry_values.iter().cloned());
    inputs.extend(used_xs.iter().map(|&j| x[c + j].clone()));
    inputs.extend(saved_values.iter().cloned());
    inputs.extend(y_cts.iter().map(|&j| cts[c + j].clone().expect("internal: present")));
    inputs.extend(x[c + nx..].iter().cloned());
    let spec = Scan { body: bw, length: s.length, carries: bw_carries, xs: bw_xs, reverse: !s.reverse, remat: s.remat };
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let results = apply(&node.trace, spec, &refs);
    let mut grads: Vec<Option<Tensor>> = vec![None; x.len()];
    let mut r = results.into_iter();
    for &k in carry_wrt.iter().chain(&const_wrt).chain(&xs_wrt) {
        grads[k] = r.next();
    }
    Ok(grads)
}

/// What the forward loop saves when nothing is to be recomputed (`Remat::None`): the values
/// the backward step reads, except that a conversion, layout op (convert, broadcast,
/// reshape, transpose, sharding constraint) or simple arithmetic (add, subtract, multiply,
/// negate, min/max, compare, select) is redone from its operands rather than stored for
/// every step, its operands being saved (or redone) in its place. Matmuls, reductions and
/// transcendental functions (tanh, exp, rsqrt, ...) are stored. Measured on the 28-layer step
/// for v5e:2x2 (benches/compile.sh): storing also the arithmetic (as JAX's `lax.scan` does)
/// takes 2.38 instead of 1.48 GiB of temporaries per chip, and for Gemma 2B FSDP lets XLA
/// gather weights more often (28.5 against 26.2 GiB sent per chip per step); redoing also
/// the transcendental functions saves more memory (1.19 GiB) but makes XLA's TPU compile
/// about 10% slower.
fn saved_without_remat(v: &Function, nb: usize, read_back: &[bool], saveable: &dyn Fn(usize) -> bool) -> Vec<usize> {
    let cheap = |p: &Prim| {
        use Prim::*;
        matches!(
            p,
            Convert { .. }
                | BitcastConvert { .. }
                | StopGradient
                | BroadcastInDim { .. }
                | Reshape { .. }
                | Transpose { .. }
                | ShardingConstraint { .. }
                | CotangentBarrier
                | Neg
                | Add
                | Sub
                | Mul
                | Max
                | Min
                | And
                | Or
                | Compare(_)
                | Select
        )
    };
    let mut needed: Vec<bool> = read_back[..nb].to_vec();
    let mut saved = Vec::new();
    for j in (0..nb).rev() {
        if !needed[j] || !saveable(j) {
            continue;
        }
        if cheap(&v.nodes[j].prim) {
            for &k in &v.nodes[j].inputs {
                needed[k] = true;
            }
        } else {
            saved.push(j);
        }
    }
    saved.reverse();
    saved
}

/// Copies the live nodes of `f` into the trace of `tracer`, node `i` standing for `subst[i]`
/// where given (every live parameter must be); returns the values of `roots`.
fn inline(f: &Function, live: &[bool], subst: &HashMap<usize, Tensor>, roots: &[usize], tracer: &Tracer) -> Result<Vec<Tensor>, Error> {
    let mut map: Vec<Option<Tensor>> = vec![None; f.nodes.len()];
    for (i, node) in f.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        if let Some(t) = subst.get(&i) {
            map[i] = Some(t.clone());
            continue;
        }
        if matches!(node.prim, Prim::Param(_)) {
            return Err(Error::Invalid(format!("internal: scan VJP: parameter node {i} of {} has no value", f.name)));
        }
        let inputs: Vec<usize> = node
            .inputs
            .iter()
            .map(|&j| map[j].as_ref().map(|t| t.id).ok_or(j))
            .collect::<Result<_, _>>()
            .map_err(|j| Error::Invalid(format!("internal: scan VJP: node {j} of {} is read but was not copied", f.name)))?;
        let mut st = tracer.state.borrow_mut();
        st.nodes.push(crate::function::Node { prim: node.prim.clone(), inputs, ty: node.ty.clone(), loc: node.loc, remat: node.remat });
        map[i] = Some(Tensor { id: st.nodes.len() - 1, trace: tracer.state.clone() });
    }
    roots.iter().map(|&r| map[r].clone().ok_or_else(|| Error::Invalid(format!("internal: scan VJP: output node {r} not copied")))).collect()
}
