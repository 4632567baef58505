//! A compiled-function cache in the style of `jax.jit`: a `Jit` holds a function that
//! traces (and possibly differentiates) a graph for given input types; each distinct list of
//! input types is traced, lowered and compiled once, and later calls reuse the executable.
use crate::{Error, Result};
use graph::{DType, Function, TensorType};
use runtime::{AsHostView, Client, CompileOptions, ElementType, Executable, HostArray, Program};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

pub fn element_type(d: DType) -> ElementType {
    match d {
        DType::F32 => ElementType::F32,
        DType::Bf16 => ElementType::Bf16,
        DType::F16 => ElementType::F16,
        DType::F64 => ElementType::F64,
        DType::S32 => ElementType::S32,
        DType::S64 => ElementType::S64,
        DType::U32 => ElementType::U32,
        DType::U64 => ElementType::U64,
        DType::Pred => ElementType::Pred,
    }
}

pub fn dtype_of(e: ElementType) -> Option<DType> {
    Some(match e {
        ElementType::F32 => DType::F32,
        ElementType::Bf16 => DType::Bf16,
        ElementType::F16 => DType::F16,
        ElementType::F64 => DType::F64,
        ElementType::S32 => DType::S32,
        ElementType::S64 => DType::S64,
        ElementType::U32 => DType::U32,
        ElementType::U64 => DType::U64,
        ElementType::Pred => DType::Pred,
        _ => return None,
    })
}

fn type_of<A: AsHostView>(a: &A) -> Result<TensorType> {
    let v = a.host_view();
    let dtype = dtype_of(v.dtype).ok_or_else(|| Error::Unsupported(format!("arrays of {} are not supported by graph", v.dtype)))?;
    Ok(TensorType::new(dtype, v.dims))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitStats {
    /// Calls answered from the cache.
    pub hits: usize,
    /// Calls that traced, lowered and compiled.
    pub compiles: usize,
}

struct Entry {
    function: Function,
    executable: Executable,
}

pub struct Jit<'c, B> {
    name: String,
    build: B,
    client: &'c Client,
    cache: RefCell<HashMap<Vec<TensorType>, Entry>>,
    stats: Cell<JitStats>,
}

impl<'c, B> Jit<'c, B>
where
    B: Fn(&[TensorType]) -> Result<Function, graph::Error>,
{
    /// `build` traces the function for the given input types (it may also differentiate it).
    pub fn new(name: &str, client: &'c Client, build: B) -> Self {
        Jit { name: name.to_string(), build, client, cache: RefCell::new(HashMap::new()), stats: Cell::new(JitStats::default()) }
    }

    pub fn stats(&self) -> JitStats {
        self.stats.get()
    }

    /// Runs on whole host arrays, compiling on the first call for these input types.
    pub fn call<A: AsHostView>(&self, args: &[A]) -> Result<Vec<HostArray>> {
        let key: Vec<TensorType> = args.iter().map(type_of).collect::<Result<_>>()?;
        let mut stats = self.stats.get();
        if !self.cache.borrow().contains_key(&key) {
            let function = (self.build)(&key).map_err(|cause| Error::Trace { name: self.name.clone(), cause })?;
            let program = Program::from_text(&function.to_stablehlo())?;
            let partitions = function.mesh.as_ref().map_or(1, |m| m.num_devices());
            let options = if partitions == 1 {
                CompileOptions::single_device()
            } else {
                CompileOptions::spmd(partitions, runtime::Partitioner::Shardy)
            };
            let executable = self
                .client
                .compile(&program, &options)
                .map_err(|cause| Error::Compile { name: self.name.clone(), cause })?;
            self.cache.borrow_mut().insert(key.clone(), Entry { function, executable });
            stats.compiles += 1;
        } else {
            stats.hits += 1;
        }
        self.stats.set(stats);
        let cache = self.cache.borrow();
        let entry = &cache[&key];
        Ok(entry.executable.run(self.client, args)?)
    }

    /// The traced function used for these arguments, if compiled already.
    pub fn function_for<A: AsHostView>(&self, args: &[A]) -> Option<Function> {
        let key: Vec<TensorType> = args.iter().map(type_of).collect::<Result<_>>().ok()?;
        self.cache.borrow().get(&key).map(|e| e.function.clone())
    }

    /// Why a call with `args` would miss the cache (None: it would hit).
    pub fn explain_miss<A: AsHostView>(&self, args: &[A]) -> Option<String> {
        let key: Vec<TensorType> = match args.iter().map(type_of).collect::<Result<_>>() {
            Ok(k) => k,
            Err(e) => return Some(e.to_string()),
        };
        let cache = self.cache.borrow();
        if cache.contains_key(&key) {
            return None;
        }
        if cache.is_empty() {
            return Some(format!("{}: first call, nothing compiled yet", self.name));
        }
        // Explain against the closest cached signature.
        let reasons = cache
            .keys()
            .map(|k| {
                if k.len() != key.len() {
                    return vec![format!("{} arguments instead of {}", key.len(), k.len())];
                }
                k.iter()
                    .zip(&key)
                    .enumerate()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(i, (a, b))| format!("argument {i} is {b}, compiled for {a}"))
                    .collect()
            })
            .min_by_key(|r: &Vec<String>| r.len())
            .unwrap_or_default();
        Some(format!("{}: {}", self.name, reasons.join("; ")))
    }
}
