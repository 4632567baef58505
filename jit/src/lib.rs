//! Where graph meets runtime, in the style of `jax.jit`: a `Jit` holds a Rust closure over a
//! tree of traced tensors. Each call derives the argument types and shardings from the
//! arrays given, traces the closure for them (so the cache key and the compiled program
//! cannot disagree), lowers it to StableHLO with the mesh's shardings and the donated
//! parameters, compiles it once per key, and runs it on arrays that stay on the devices.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Errors carry the runtime error they wrap (with its argument index and types); they are rare
// and never on a hot path, so their size does not matter.
#![allow(clippy::result_large_err)]

mod key;

use graph::{Function, Tensor, TensorType, Tree};
pub use key::Key;
use runtime::{Arg, AsHostView, Client, CompileOptions, DeviceArray, Executable, HostArray, Mesh, NamedSharding, PartitionSpec, Program};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Why tracing, lowering, compiling or running a `Jit` function failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tracing the closure (or an error the closure returned), annotating it with shardings
    /// and donation, or lowering it failed; also clashing tree paths of arguments or outputs.
    #[error("cannot trace {name}: {cause}")]
    Trace {
        /// The `Jit`'s name.
        name: String,
        /// The graph error.
        cause: graph::Error,
    },
    /// XLA could not parse or compile the lowered program.
    #[error("cannot compile {name}: {cause}")]
    Compile {
        /// The `Jit`'s name.
        name: String,
        /// The runtime error.
        cause: runtime::Error,
    },
    /// An argument could not be placed on the devices, its spec does not fit the mesh, or it
    /// does not fit the compiled program (type, sharding, devices, or not donated though
    /// the program takes it donated).
    #[error("{name}: argument {path}: {cause}")]
    Argument {
        /// The `Jit`'s name.
        name: String,
        /// The argument's tree path.
        path: String,
        /// The runtime error.
        cause: runtime::Error,
    },
    /// A device argument is placed over a mesh other than the `Jit`'s.
    #[error("{name}: argument {path} is placed over the mesh {actual}, but the function runs over {expected}")]
    WrongMesh {
        /// The `Jit`'s name.
        name: String,
        /// The argument's tree path.
        path: String,
        /// The `Jit`'s mesh, as displayed.
        expected: String,
        /// The argument's mesh, as displayed.
        actual: String,
    },
    /// Running the program failed, or the `Jit` was made by `Jit::lowering_only` and has no
    /// client to run on.
    #[error("{name}: {cause}")]
    Run {
        /// The `Jit`'s name.
        name: String,
        /// The runtime error.
        cause: runtime::Error,
    },
    /// Another runtime error, e.g. while fetching outputs to the host.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
}

/// `std::result::Result` with this crate's `Error` as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a traced closure may return: outputs, or outputs and the trace error it ran into.
pub trait TraceOutput {
    /// The outputs, or the error the closure ran into while tracing.
    fn into_result(self) -> Result<Tree<Tensor>, graph::Error>;
}

impl TraceOutput for Tree<Tensor> {
    fn into_result(self) -> Result<Tree<Tensor>, graph::Error> {
        Ok(self)
    }
}

impl TraceOutput for Result<Tree<Tensor>, graph::Error> {
    fn into_result(self) -> Result<Tree<Tensor>, graph::Error> {
        self
    }
}

/// Counters of a `Jit`'s calls so far (see `Jit::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitStats {
    /// Calls answered from the cache.
    pub hits: usize,
    /// Calls that traced, lowered and compiled.
    pub compiles: usize,
    /// Time spent tracing, lowering and compiling, in all.
    pub compile_time: std::time::Duration,
}

/// A function traced and lowered for one set of argument types and shardings, not compiled:
/// what `Jit` would hand to XLA for a call with such arguments.
pub struct Lowered {
    /// The traced function, annotated with shardings and donation.
    pub function: Function,
    /// Its StableHLO text (with Rust source locations).
    pub stablehlo: String,
    /// The compile options `Jit` uses for it.
    pub options: CompileOptions,
    /// The sharding of each output, as annotated.
    pub out_shardings: Vec<NamedSharding>,
}

struct Entry {
    function: Function,
    executable: Executable,
    /// The sharding of each output, as annotated (kept exactly on the returned arrays).
    out_shardings: Vec<NamedSharding>,
}

type Rule<'c> = Box<dyn Fn(&str, &TensorType) -> Option<PartitionSpec> + 'c>;

/// A Rust closure over a tree of traced tensors, compiled on demand (like `jax.jit`): a call
/// with argument types, shardings or donation not seen before traces, lowers and compiles it;
/// later calls with the same ones reuse the executable. `'c` bounds the sharding rule.
pub struct Jit<'c, F> {
    name: String,
    /// None: made by `Jit::lowering_only`, for `lower` (ahead-of-time compilation elsewhere).
    /// Owned (a `Client` is a cheap, shared handle), so a `Jit` can live in any struct.
    client: Option<Client>,
    f: F,
    mesh: Mesh,
    donate: Vec<String>,
    rule: Option<Rule<'c>>,
    cache: RefCell<HashMap<Key, Entry>>,
    last: RefCell<Option<Key>>,
    stats: Cell<JitStats>,
}

impl<'c, F, R> Jit<'c, F>
where
    F: Fn(&Tree<Tensor>) -> R,
    R: TraceOutput,
{
    /// A function of a tree of tensors, compiled for `client`, on one device until
    /// `with_mesh` says otherwise.
    pub fn new(name: &str, client: &Client, f: F) -> Self {
        Self::with_client(name, Some(client), f)
    }

    /// A function that is only ever lowered (`lower`), never called: what compiling ahead of
    /// time for a device topology needs, with no client. Calls are an error.
    pub fn lowering_only(name: &str, f: F) -> Self {
        Self::with_client(name, None, f)
    }

    /// `new` with a client, `lowering_only` without.
    pub fn with_client(name: &str, client: Option<&Client>, f: F) -> Self {
        Jit {
            name: name.to_string(),
            client: client.cloned(),
            f,
            mesh: Mesh::single(),
            donate: Vec::new(),
            rule: None,
            cache: RefCell::new(HashMap::new()),
            last: RefCell::new(None),
            stats: Cell::new(JitStats::default()),
        }
    }

    /// Runs SPMD over `mesh` (device i of the mesh is the client's i-th device).
    pub fn with_mesh(mut self, mesh: Mesh) -> Self {
        self.mesh = mesh;
        self
    }

    /// Parameters at or under `prefix` (e.g. `state`) are donated: their arrays must be moved
    /// in, and the program may reuse their memory for outputs.
    pub fn donate(mut self, prefix: &str) -> Self {
        self.donate.push(prefix.to_string());
        self
    }

    /// How arrays are split over the mesh, by path: used for host arguments and for outputs
    /// (an output with no rule takes the sharding of the argument at the same path, else it
    /// is replicated). Device arguments keep their own sharding.
    pub fn with_rule(mut self, rule: impl Fn(&str, &TensorType) -> Option<PartitionSpec> + 'c) -> Self {
        self.rule = Some(Box::new(rule));
        self
    }

    /// The name given at construction: used in errors and as the name of the traced function
    /// and its StableHLO module.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mesh the function runs over (one device unless `with_mesh` said otherwise).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Cache hits, compilations and time spent compiling, so far.
    pub fn stats(&self) -> JitStats {
        self.stats.get()
    }

    /// Time spent executing this function's programs on the devices so far (see
    /// `Executable::execute_time`).
    pub fn execute_time(&self) -> std::time::Duration {
        self.cache.borrow().values().map(|e| e.executable.execute_time()).sum()
    }

    fn is_donated(&self, path: &str) -> bool {
        self.donate.iter().any(|p| path == p || path.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('.')))
    }

    fn rule_spec(&self, path: &str, ty: &TensorType) -> Option<PartitionSpec> {
        self.rule.as_ref().and_then(|r| r(path, ty))
    }

    /// Runs on arrays on the devices; returns the outputs on the devices. Donated
    /// parameters must be given as `Arg::Donate` (moved in).
    pub fn call(&self, args: Tree<Arg<'_>>) -> Result<Tree<DeviceArray>> {
        let mut key_args = Vec::with_capacity(args.len());
        for (path, a) in args.iter() {
            let s = a.array().sharding();
            if s.mesh != self.mesh && !(s.num_devices() == 1 && self.mesh.num_devices() == 1) {
                return Err(Error::WrongMesh {
                    name: self.name.clone(),
                    path: path.to_string(),
                    expected: self.mesh.to_string(),
                    actual: s.mesh.to_string(),
                });
            }
            key_args.push((path.to_string(), a.array().ty().clone(), s.spec.clone()));
        }
        let key = self.key(key_args);
        self.compile(&key)?;
        let cache = self.cache.borrow();
        let entry = &cache[&key];
        let paths: Vec<String> = args.paths().map(str::to_string).collect();
        let flat: Vec<Arg<'_>> = args.into_leaves().into_iter().map(|(_, a)| a).collect();
        let outputs = entry.executable.call(flat).map_err(|cause| match cause {
            runtime::Error::MustDonate { index }
            | runtime::Error::ArgumentType { index, .. }
            | runtime::Error::ArgumentSharding { index, .. }
            | runtime::Error::ArgumentDevices { index, .. } => {
                Error::Argument { name: self.name.clone(), path: paths[index].clone(), cause }
            }
            cause => Error::Run { name: self.name.clone(), cause },
        })?;
        let mut tree = Tree::new();
        for ((o, array), sharding) in entry.function.outputs.iter().zip(outputs).zip(&entry.out_shardings) {
            let array = array.with_sharding(sharding.clone())?;
            tree.insert(o.name.clone(), array).map_err(|cause| Error::Trace { name: self.name.clone(), cause })?;
        }
        Ok(tree)
    }

    /// Runs on host arrays: places each (split as the rule says, else replicated), calls,
    /// and fetches every output.
    pub fn call_host<A: AsHostView>(&self, args: &Tree<A>) -> Result<Tree<HostArray>> {
        let mut placed = Tree::new();
        for (path, a) in args.iter() {
            let v = a.host_view();
            let spec = self.rule_spec(path, &v.ty()).unwrap_or_else(|| PartitionSpec::replicated(v.dims.len()));
            let sharding = NamedSharding::new(self.mesh.clone(), spec).map_err(|e| Error::Argument {
                name: self.name.clone(),
                path: path.to_string(),
                cause: e.into(),
            })?;
            let array = DeviceArray::place(self.client()?, &v, &sharding).map_err(|cause| Error::Argument {
                name: self.name.clone(),
                path: path.to_string(),
                cause,
            })?;
            // Placed here for this call only, so every argument may be handed over.
            placed.insert(path.to_string(), Arg::Donate(array)).map_err(|cause| Error::Trace { name: self.name.clone(), cause })?;
        }
        let out = self.call(placed)?;
        Ok(out.try_map(|_, a| a.fetch())?)
    }

    /// The function traced and compiled by the latest call, if any.
    pub fn last_function(&self) -> Option<Function> {
        let last = self.last.borrow();
        last.as_ref().and_then(|k| self.cache.borrow().get(k).map(|e| e.function.clone()))
    }

    /// Why a call with arguments of these types and shardings would miss the cache (None:
    /// it would hit).
    pub fn explain_miss(&self, args: &Tree<(TensorType, PartitionSpec)>) -> Option<String> {
        let key = self.key(args.iter().map(|(p, (t, s))| (p.to_string(), t.clone(), s.clone())).collect());
        let cache = self.cache.borrow();
        if cache.contains_key(&key) {
            return None;
        }
        if cache.is_empty() {
            return Some(format!("{}: first call, nothing compiled yet", self.name));
        }
        let reasons = cache.keys().map(|k| k.differences(&key)).min_by_key(|r| r.len()).unwrap_or_default();
        Some(format!("{}: {}", self.name, reasons.join("; ")))
    }

    /// `explain_miss` for host arguments (split as the rule says, else replicated).
    pub fn explain_miss_host<A: AsHostView>(&self, args: &Tree<A>) -> Option<String> {
        let types = args.map(|path, a| {
            let ty = a.host_view().ty();
            let spec = self.rule_spec(path, &ty).unwrap_or_else(|| PartitionSpec::replicated(ty.rank()));
            (ty, spec)
        });
        self.explain_miss(&types)
    }

    fn key(&self, args: Vec<(String, TensorType, PartitionSpec)>) -> Key {
        let donated = args.iter().map(|(p, _, _)| self.is_donated(p)).collect();
        Key { args, mesh: self.mesh.clone(), donated }
    }

    fn client(&self) -> Result<&Client> {
        self.client.as_ref().ok_or_else(|| Error::Run {
            name: self.name.clone(),
            cause: runtime::Error::Argument(
                "this function was made for lowering only (Jit::lowering_only) and has no client to run on".into(),
            ),
        })
    }

    /// Traces, lowers and compiles for `key` unless cached.
    fn compile(&self, key: &Key) -> Result<()> {
        let mut stats = self.stats.get();
        *self.last.borrow_mut() = Some(key.clone());
        if self.cache.borrow().contains_key(key) {
            stats.hits += 1;
            self.stats.set(stats);
            return Ok(());
        }
        let started = std::time::Instant::now();
        let Lowered { function, stablehlo, options, out_shardings } = self.lower_key(key)?;
        let compile_err = |cause| Error::Compile { name: self.name.clone(), cause };
        let program = Program::from_text(&stablehlo).map_err(compile_err)?;
        let executable = self.client()?.compile(&program, &options).map_err(compile_err)?;
        self.cache.borrow_mut().insert(key.clone(), Entry { function, executable, out_shardings });
        stats.compiles += 1;
        stats.compile_time += started.elapsed();
        self.stats.set(stats);
        Ok(())
    }

    /// Traces and lowers for arguments of these types and shardings without compiling or
    /// caching anything: exactly the program and options a call with such arrays compiles
    /// (same donation, parameter and output shardings). No arrays or weights are needed.
    pub fn lower(&self, args: &Tree<(TensorType, PartitionSpec)>) -> Result<Lowered> {
        let key = self.key(args.iter().map(|(p, (t, s))| (p.to_string(), t.clone(), s.clone())).collect());
        for (path, _, spec) in &key.args {
            spec.check(&self.mesh).map_err(|e| Error::Argument { name: self.name.clone(), path: path.clone(), cause: e.into() })?;
        }
        self.lower_key(&key)
    }

    fn lower_key(&self, key: &Key) -> Result<Lowered> {
        let trace_err = |cause| Error::Trace { name: self.name.clone(), cause };
        let function = self.trace(key).map_err(trace_err)?;
        let (function, out_shardings) = self.annotate(function, key).map_err(trace_err)?;
        let stablehlo = function.to_stablehlo().map_err(trace_err)?;
        Ok(Lowered { function, stablehlo, options: CompileOptions::for_mesh(&self.mesh), out_shardings })
    }

    fn trace(&self, key: &Key) -> Result<Function, graph::Error> {
        let types = Tree::from_leaves(key.args.iter().map(|(p, t, _)| (p.clone(), t.clone())))?;
        let mut user_error = None;
        let traced = graph::trace_tree(&self.name, &types, |a| match (self.f)(a).into_result() {
            Ok(t) => t,
            Err(e) => {
                user_error = Some(e);
                Tree::new()
            }
        });
        match user_error {
            Some(e) => Err(e),
            None => traced,
        }
    }

    /// Shardings (over a mesh of more than one device) and donation on the traced function.
    fn annotate(&self, mut f: Function, key: &Key) -> Result<(Function, Vec<NamedSharding>), graph::Error> {
        for (i, d) in key.donated.iter().enumerate() {
            if *d {
                f = f.donate_param(i)?;
            }
        }
        let out_types = f.output_types();
        let specs: Vec<PartitionSpec> = f
            .outputs
            .iter()
            .zip(&out_types)
            .map(|(o, ty)| {
                self.rule_spec(&o.name, ty)
                    .or_else(|| key.args.iter().find(|(p, t, _)| p == &o.name && t == ty).map(|(_, _, s)| s.clone()))
                    .unwrap_or_else(|| PartitionSpec::replicated(ty.rank()))
            })
            .collect();
        if self.mesh.num_devices() > 1 {
            f = f.with_mesh(self.mesh.clone())?;
            for (i, (_, _, spec)) in key.args.iter().enumerate() {
                f = f.shard_param(i, spec.clone())?;
            }
            for (j, spec) in specs.iter().enumerate() {
                f = f.shard_output(j, spec.clone())?;
            }
        }
        let named = specs.into_iter().map(|spec| NamedSharding { mesh: self.mesh.clone(), spec }).collect();
        Ok((f, named))
    }
}

/// A `Jit` over positional arguments: the closure gets a slice of tensors and returns a
/// vector; arguments and outputs are the tree leaves `0`, `1`, ... in order.
pub fn flat<'c, G, R>(name: &str, client: &'c Client, g: G) -> Jit<'c, impl Fn(&Tree<Tensor>) -> Result<Tree<Tensor>, graph::Error>>
where
    G: Fn(&[Tensor]) -> R,
    R: FlatOutput,
{
    Jit::new(name, client, move |tree: &Tree<Tensor>| {
        let xs: Vec<Tensor> = tree.values().cloned().collect();
        let outs = g(&xs).into_result()?;
        Tree::from_leaves(outs.into_iter().enumerate().map(|(i, t)| (i.to_string(), t)))
    })
}

/// What a positional closure may return.
pub trait FlatOutput {
    /// The outputs in order, or the error the closure ran into while tracing.
    fn into_result(self) -> Result<Vec<Tensor>, graph::Error>;
}

impl FlatOutput for Vec<Tensor> {
    fn into_result(self) -> Result<Vec<Tensor>, graph::Error> {
        Ok(self)
    }
}

impl FlatOutput for Result<Vec<Tensor>, graph::Error> {
    fn into_result(self) -> Result<Vec<Tensor>, graph::Error> {
        self
    }
}

impl<'c, F, R> Jit<'c, F>
where
    F: Fn(&Tree<Tensor>) -> R,
    R: TraceOutput,
{
    /// Positional host call for `flat` functions: arguments `0`, `1`, ...; outputs in order.
    pub fn call_flat<A: AsHostView>(&self, args: &[A]) -> Result<Vec<HostArray>> {
        let tree = Tree::from_leaves(args.iter().enumerate().map(|(i, a)| (i.to_string(), a.host_view())))
            .map_err(|cause| Error::Trace { name: self.name.clone(), cause })?;
        Ok(self.call_host(&tree)?.into_leaves().into_iter().map(|(_, a)| a).collect())
    }
}
