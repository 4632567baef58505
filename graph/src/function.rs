//! A traced function: parameters, a topologically ordered list of single-result nodes (the
//! first `params.len()` are the parameters), and named outputs. Printable as a jaxpr-like
//! text for reading and golden tests.
use crate::prim::Prim;
use crate::trace::Loc;
use crate::types::TensorType;
use crate::Error;
use sharding::{Mesh, PartitionSpec};
use std::fmt;

/// One node of a traced function: a primitive applied to earlier nodes, with its inferred
/// result type and source location.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The operation.
    pub prim: Prim,
    /// Indices into `Function::nodes` of the operands, in order; each is below this node's own index.
    pub inputs: Vec<usize>,
    /// The result type, as the primitive's shape rule inferred it.
    pub ty: TensorType,
    /// Where the user code that made the node was written (for nodes of a backward pass, the
    /// location of the forward op they differentiate).
    pub loc: Loc,
    /// Set on the nodes of a block called with `Function::call_remat`.
    pub remat: Option<RematMark>,
}

/// What the backward pass keeps of a block (JAX's `jax.checkpoint` policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Remat {
    /// Keep every intermediate value (no recomputation).
    #[default]
    None,
    /// Keep only the block's inputs; recompute the rest in the backward pass.
    Full,
    /// Keep the block's inputs and its dot_general results; recompute the rest (norms,
    /// softmax, activations: cheap to recompute, large to keep).
    SaveDots,
}

impl std::str::FromStr for Remat {
    type Err = String;

    fn from_str(s: &str) -> Result<Remat, String> {
        match s {
            "none" => Ok(Remat::None),
            "full" => Ok(Remat::Full),
            "save-dots" => Ok(Remat::SaveDots),
            other => Err(format!("unknown rematerialisation {other:?} (none, full, save-dots)")),
        }
    }
}

impl fmt::Display for Remat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Remat::None => "none",
            Remat::Full => "full",
            Remat::SaveDots => "save-dots",
        })
    }
}

/// Which recomputed block a node belongs to (`region` is unique in the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RematMark {
    /// The block call's id, unique among the remat calls of this process.
    pub region: u64,
    /// What the backward pass keeps of the block.
    pub policy: Remat,
}

/// A parameter of a traced function.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The parameter's name (a tree path for functions traced with `trace_tree`).
    pub name: String,
    /// The parameter's type.
    pub ty: TensorType,
    /// How the argument is laid out over the function's mesh (None: replicated / unsharded).
    pub sharding: Option<PartitionSpec>,
    /// The caller may donate this argument's buffer to the program (e.g. weights in a train step).
    pub donate: bool,
}

/// A named output of a traced function.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The output's name: `out0`, `out1`, ... unless renamed, or a tree path.
    pub name: String,
    /// Index into `Function::nodes` of the node whose value this output is.
    pub id: usize,
    /// How the output is laid out over the function's mesh (None: no sharding annotation).
    pub sharding: Option<PartitionSpec>,
}

/// A traced function: parameters, single-result nodes in topological order (the first
/// `params.len()` are the parameters) and named outputs. Displays as jaxpr-like text and
/// lowers to StableHLO (`to_stablehlo`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Function {
    /// The function's name: used in errors and as the StableHLO module name.
    pub name: String,
    /// The parameters, in positional order (node `i` is `Prim::Param(i)` for each of them).
    pub params: Vec<Param>,
    /// Every node, operands before their users; nodes no output depends on are kept but not
    /// lowered or printed.
    pub nodes: Vec<Node>,
    /// The outputs, in order.
    pub outputs: Vec<Output>,
    /// The device mesh named by the shardings of params and outputs.
    pub mesh: Option<Mesh>,
}

impl Function {
    /// The parameter types, in positional order.
    pub fn param_types(&self) -> Vec<TensorType> {
        self.params.iter().map(|p| p.ty.clone()).collect()
    }

    /// The output types, in order.
    pub fn output_types(&self) -> Vec<TensorType> {
        self.outputs.iter().map(|o| self.nodes[o.id].ty.clone()).collect()
    }

    /// Places the function on a device mesh; shardings of params and outputs name its axes.
    /// Shardings already set must fit the mesh.
    pub fn with_mesh(mut self, mesh: Mesh) -> Result<Function, Error> {
        for (what, spec) in self.params.iter().map(|p| (&p.name, &p.sharding)).chain(self.outputs.iter().map(|o| (&o.name, &o.sharding))) {
            if let Some(spec) = spec {
                spec.check(&mesh).map_err(|e| Error::Sharding { what: what.clone(), cause: e })?;
            }
        }
        self.mesh = Some(mesh);
        Ok(self)
    }

    fn check_spec(&self, what: &str, ty: &TensorType, spec: &PartitionSpec) -> Result<(), Error> {
        let mesh = self.mesh.as_ref().ok_or_else(|| Error::Invalid(format!("{}: set a mesh before sharding {what}", self.name)))?;
        spec.check(mesh).map_err(|e| Error::Sharding { what: what.to_string(), cause: e })?;
        if spec.dims.len() != ty.rank() {
            return Err(Error::Invalid(format!("{}: {what} is {ty} but its sharding {spec} has {} entries", self.name, spec.dims.len())));
        }
        Ok(())
    }

    /// Sets the partition spec of parameter `i` over the function's mesh.
    pub fn shard_param(mut self, i: usize, spec: PartitionSpec) -> Result<Function, Error> {
        let p = self.params.get(i).ok_or_else(|| Error::NoSuchParam { function: self.name.clone(), index: i, count: self.params.len() })?;
        self.check_spec(&format!("parameter {i} ({})", p.name), &p.ty, &spec)?;
        self.params[i].sharding = Some(spec);
        Ok(self)
    }

    /// Sets the partition spec of output `i` over the function's mesh.
    pub fn shard_output(mut self, i: usize, spec: PartitionSpec) -> Result<Function, Error> {
        let o =
            self.outputs.get(i).ok_or_else(|| Error::Invalid(format!("{}: no output {i} (it has {})", self.name, self.outputs.len())))?;
        let ty = self.nodes[o.id].ty.clone();
        self.check_spec(&format!("output {i} ({})", o.name), &ty, &spec)?;
        self.outputs[i].sharding = Some(spec);
        Ok(self)
    }

    /// Marks parameter `i` as donated (`jax.buffer_donor`): callers hand its buffer over.
    pub fn donate_param(mut self, i: usize) -> Result<Function, Error> {
        let count = self.params.len();
        let p = self.params.get_mut(i).ok_or_else(|| Error::NoSuchParam { function: self.name.clone(), index: i, count })?;
        p.donate = true;
        Ok(self)
    }

    /// Renames the outputs in order (extra names are ignored).
    pub fn rename_outputs(mut self, names: &[&str]) -> Function {
        for (o, n) in self.outputs.iter_mut().zip(names) {
            o.name = n.to_string();
        }
        self
    }

    /// Which nodes the outputs depend on.
    pub fn live_nodes(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for o in &self.outputs {
            live[o.id] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for &j in &self.nodes[i].inputs {
                    live[j] = true;
                }
            }
        }
        live
    }

    /// Number of nodes per primitive name, for tests and diagnostics.
    pub fn count(&self, prim_name: &str) -> usize {
        self.nodes.iter().filter(|n| n.prim.name() == prim_name).count()
    }
}

/// Short variable names for the printed form: a, b, ..., z, ba, bb, ...
fn var_name(mut i: usize) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (i % 26) as u8);
        i /= 26;
        if i == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).expect("internal: ascii")
}

impl fmt::Display for Function {
    /// A jaxpr-like listing of the live nodes:
    /// `{ lambda x:f32[2,3] w:f32[3,2]. let c:f32[2,2] = dot_general[...] x w in (c) }`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let live = self.live_nodes();
        let mut names = vec![String::new(); self.nodes.len()];
        let mut next = 0;
        let mut params = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Prim::Param(p) = node.prim {
                names[i] = self.params[p].name.clone();
                params.push(format!("{}:{}", names[i], self.params[p].ty));
            }
        }
        writeln!(f, "{{ lambda {}. let", params.join(" "))?;
        for (i, node) in self.nodes.iter().enumerate() {
            if !live[i] || matches!(node.prim, Prim::Param(_)) {
                continue;
            }
            while self.params.iter().any(|p| p.name == var_name(next)) {
                next += 1;
            }
            names[i] = var_name(next);
            next += 1;
            let args: Vec<&str> = node.inputs.iter().map(|&j| names[j].as_str()).collect();
            let params = node.prim.params_text();
            let params = if params.is_empty() { String::new() } else { format!("[{params}]") };
            let args = if args.is_empty() { String::new() } else { format!(" {}", args.join(" ")) };
            writeln!(f, "    {}:{} = {}{}{args}", names[i], node.ty, node.prim.name(), params)?;
        }
        let outs: Vec<String> = self.outputs.iter().map(|o| format!("{}={}", o.name, names[o.id])).collect();
        write!(f, "  in ({}) }}", outs.join(", "))
    }
}
