//! Tracing: user code calls ops on `Tensor` handles; each call appends a node (primitive,
//! inputs, inferred type, the caller's source location) to the trace. Shape errors are
//! recorded (the first one wins) and returned by `trace`, so model code reads like math.
use crate::function::{Function, Node, Output, Param};
use crate::prim::Prim;
use crate::types::{DType, TensorType};
use crate::Error;
use std::cell::RefCell;
use std::fmt;
use std::panic::Location;
use std::rc::Rc;

/// A Rust source location: where the user code that made an op was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    /// The source file's path, as `file!()` gives it.
    pub file: &'static str,
    /// The line, counting from 1.
    pub line: u32,
    /// The column, counting from 1.
    pub col: u32,
}

impl Loc {
    /// The location this is called from, or the first caller outside a chain of
    /// `#[track_caller]` functions.
    #[track_caller]
    pub fn caller() -> Loc {
        let l = Location::caller();
        Loc { file: l.file(), line: l.line(), col: l.column() }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

pub(crate) struct TraceState {
    pub(crate) nodes: Vec<Node>,
    pub(crate) error: Option<Error>,
    /// While differentiating: backward ops take the location of the forward op.
    pub(crate) loc_override: Option<Loc>,
}

thread_local! {
    /// The traces being built on this thread, innermost last (`trace` inside `trace`).
    static ACTIVE: RefCell<Vec<Rc<RefCell<TraceState>>>> = const { RefCell::new(Vec::new()) };
}

/// Marks a trace as the innermost active one while it lives (also when the closure panics).
struct Active;

impl Active {
    fn enter(state: &Rc<RefCell<TraceState>>) -> Active {
        ACTIVE.with(|a| a.borrow_mut().push(state.clone()));
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.borrow_mut().pop());
    }
}

/// A handle on a trace being built: makes values that need no input (constants, iotas,
/// masks) and inlines other functions into it. Get one from any traced value
/// (`x.tracer()`) or, inside the closure given to `trace`, from `Tracer::current()`.
#[derive(Clone)]
pub struct Tracer {
    pub(crate) state: Rc<RefCell<TraceState>>,
}

impl Tracer {
    /// The innermost trace being built on this thread, if any.
    pub fn current() -> Option<Tracer> {
        ACTIVE.with(|a| a.borrow().last().map(|s| Tracer { state: s.clone() }))
    }

    /// Records an error in this trace (the first one wins); `trace` then returns it.
    pub(crate) fn fail(&self, e: Error) {
        let mut st = self.state.borrow_mut();
        if st.error.is_none() {
            st.error = Some(e);
        }
    }
}

/// A traced value. Cheap to clone; ops on it record nodes in its trace.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) id: usize,
    pub(crate) trace: Rc<RefCell<TraceState>>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor(%{}: {})", self.id, self.ty())
    }
}

impl Tensor {
    /// The trace this value belongs to.
    pub fn tracer(&self) -> Tracer {
        Tracer { state: self.trace.clone() }
    }

    /// The value's type (dtype and dims), as inferred when it was traced.
    pub fn ty(&self) -> TensorType {
        self.trace.borrow().nodes[self.id].ty.clone()
    }
    /// The value's dimensions, outermost first (empty for a scalar).
    pub fn dims(&self) -> Vec<i64> {
        self.ty().dims
    }
    /// The value's element type.
    pub fn dtype(&self) -> DType {
        self.ty().dtype
    }
    /// The number of dimensions (0 for a scalar).
    pub fn rank(&self) -> usize {
        self.ty().dims.len()
    }

    /// Records a shape error for the composite op `op` on this value (the first error of a
    /// trace wins) and returns the value itself as a placeholder, so tracing goes on.
    #[track_caller]
    pub(crate) fn fail(&self, op: &'static str, message: String) -> Tensor {
        let loc = Loc::caller();
        let e = Error::Shape { op, inputs: vec![self.ty()], loc, message };
        self.tracer().fail(e);
        self.clone()
    }

    /// Appends `prim` applied to `inputs`; on a shape error records it and returns a
    /// placeholder of the first input's type so tracing can go on to report it.
    #[track_caller]
    pub(crate) fn apply(prim: Prim, inputs: &[&Tensor]) -> Tensor {
        let trace = inputs[0].trace.clone();
        Tensor::apply_in(&trace, prim, inputs)
    }

    #[track_caller]
    pub(crate) fn apply_in(trace: &Rc<RefCell<TraceState>>, prim: Prim, inputs: &[&Tensor]) -> Tensor {
        let mut st = trace.borrow_mut();
        // Not `unwrap_or_else(Loc::caller)`: a function pointer call would lose #[track_caller].
        let loc = match st.loc_override {
            Some(l) => l,
            None => Loc::caller(),
        };
        let types: Vec<TensorType> = inputs.iter().map(|t| st.nodes[t.id].ty.clone()).collect();
        let same_trace = inputs.iter().all(|t| Rc::ptr_eq(&t.trace, trace));
        let ty = if !same_trace {
            Err("inputs come from different traces".to_string())
        } else {
            let refs: Vec<&TensorType> = types.iter().collect();
            prim.infer(&refs)
        };
        let ty = match ty {
            Ok(ty) => ty,
            Err(message) => {
                if st.error.is_none() {
                    st.error = Some(Error::Shape { op: prim.name(), inputs: types.clone(), loc, message });
                }
                types.first().cloned().unwrap_or_default()
            }
        };
        st.nodes.push(Node { prim, inputs: inputs.iter().map(|t| t.id).collect(), ty, loc, remat: None });
        Tensor { id: st.nodes.len() - 1, trace: trace.clone() }
    }
}

/// Traces `f` over parameters of the given names and types into a `Function`.
/// Outputs are named `out0`, `out1`, ... (see `Function::rename_outputs`).
pub fn trace<F>(name: &str, params: &[(&str, TensorType)], f: F) -> Result<Function, Error>
where
    F: FnOnce(&[Tensor]) -> Vec<Tensor>,
{
    let state = Rc::new(RefCell::new(TraceState { nodes: Vec::new(), error: None, loc_override: None }));
    let args: Vec<Tensor> = {
        let mut st = state.borrow_mut();
        params
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| {
                st.nodes.push(Node { prim: Prim::Param(i), inputs: vec![], ty: ty.clone(), loc: Loc::caller(), remat: None });
                Tensor { id: st.nodes.len() - 1, trace: state.clone() }
            })
            .collect()
    };
    if let Some((i, (name, ty))) = params.iter().enumerate().find(|(_, (_, t))| t.dtype.is_complex()) {
        let message = format!("parameter {i} ({name}): {}", crate::prim::complex_refused(ty.dtype));
        state.borrow_mut().error.get_or_insert(Error::Shape { op: "param", inputs: vec![ty.clone()], loc: Loc::caller(), message });
    }
    let outs = {
        let _active = Active::enter(&state);
        f(&args)
    };
    drop(args);
    let outputs = outs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if !Rc::ptr_eq(&t.trace, &state) {
                return Err(Error::Invalid(format!("output {i} of {name} does not belong to its trace")));
            }
            Ok(Output { name: format!("out{i}"), id: t.id, sharding: None })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    drop(outs);
    let mut st = state.borrow_mut();
    if let Some(e) = st.error.take() {
        return Err(e);
    }
    // Tensors that escaped the closure keep the (now unused) trace alive; nothing else does.
    let nodes = std::mem::take(&mut st.nodes);
    drop(st);
    Ok(Function {
        name: name.to_string(),
        params: params.iter().map(|(n, ty)| Param { name: n.to_string(), ty: ty.clone(), sharding: None, donate: false }).collect(),
        nodes,
        outputs,
        mesh: None,
    })
}
