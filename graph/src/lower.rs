//! Lowering a `Function` to StableHLO text (MLIR generic op syntax, which every StableHLO
//! version parses the same way). Each op carries `loc("file.rs":line:col)` of the user code
//! that made it, so XLA's dumps and errors point back into Rust.
use crate::function::Function;
use crate::prim::{Literal, Prim};
use crate::types::{DType, TensorType};
use crate::Error;
use std::fmt::Write;

/// Collects the op lines of one function body and hands out SSA names.
pub(crate) struct Emitter {
    /// The function body: one op per line, each indented by four spaces.
    body: String,
    next: usize,
    loc: String,
    /// The mesh sharding constraints refer to (None: one device, constraints lower to nothing).
    pub(crate) mesh: Option<sharding::Mesh>,
    /// Quoted file names, one per file seen (a handful; nodes alternate between them).
    files: Vec<(&'static str, String)>,
}

/// How a reduce/scatter region combines two scalars.
#[derive(Clone, Copy)]
pub(crate) enum Combiner {
    Add,
    Max,
}

impl Emitter {
    fn fresh(&mut self) -> String {
        self.next += 1;
        let mut digits = itoa::Buffer::new();
        let n = digits.format(self.next - 1);
        let mut name = String::with_capacity(1 + n.len());
        name.push('%');
        name.push_str(n);
        name
    }

    /// Emits `%r = "name"(operands) region {attrs} : (types) -> result` and returns `%r`.
    pub(crate) fn op(
        &mut self,
        name: &str,
        operands: &[(&str, &TensorType)],
        attrs: &str,
        region: Option<(Combiner, DType)>,
        result: &TensorType,
    ) -> String {
        let r = self.fresh();
        let region = region.map(|(c, dt)| self.region(c, dt)).unwrap_or_default();
        // Written straight into the body (this runs once per node of large programs).
        let line = &mut self.body;
        line.push_str("    ");
        line.push_str(&r);
        line.push_str(" = \"");
        line.push_str(name);
        line.push_str("\"(");
        for (k, o) in operands.iter().enumerate() {
            line.push_str(if k == 0 { "" } else { ", " });
            line.push_str(o.0);
        }
        line.push(')');
        line.push_str(&region);
        if !attrs.is_empty() {
            line.push_str(" {");
            line.push_str(attrs);
            line.push('}');
        }
        line.push_str(" : (");
        for (k, o) in operands.iter().enumerate() {
            line.push_str(if k == 0 { "" } else { ", " });
            o.1.write_mlir(line);
        }
        line.push_str(") -> ");
        result.write_mlir(line);
        line.push_str(&self.loc);
        line.push('\n');
        r
    }

    /// Like `op`, for operations with several results; returns their names (`%r#i`).
    pub(crate) fn multi_op(&mut self, name: &str, operands: &[(&str, &TensorType)], attrs: &str, results: &[TensorType]) -> Vec<String> {
        let r = self.fresh();
        let names: Vec<&str> = operands.iter().map(|o| o.0).collect();
        let types: Vec<String> = operands.iter().map(|o| o.1.mlir()).collect();
        let outs: Vec<String> = results.iter().map(|t| t.mlir()).collect();
        let _ = writeln!(
            self.body,
            "    {r}:{} = \"{name}\"({}) {{{attrs}}} : ({}) -> ({}){}",
            results.len(),
            names.join(", "),
            types.join(", "),
            outs.join(", "),
            self.loc
        );
        (0..results.len()).map(|i| format!("{r}#{i}")).collect()
    }

    fn region(&mut self, c: Combiner, dtype: DType) -> String {
        let (a, b, s) = (self.fresh(), self.fresh(), self.fresh());
        let t = TensorType::scalar(dtype).mlir();
        let op = match c {
            Combiner::Add => "stablehlo.add",
            Combiner::Max => "stablehlo.maximum",
        };
        format!(
            " ({{\n    ^bb0({a}: {t}, {b}: {t}):\n      {s} = \"{op}\"({a}, {b}) : ({t}, {t}) -> {t}\n      \"stablehlo.return\"({s}) : ({t}) -> ()\n    }})"
        )
    }

    /// A constant of type `ty` from a literal (splat when it holds one value).
    pub(crate) fn constant(&mut self, ty: &TensorType, value: &Literal) -> String {
        let mut attrs = String::with_capacity(48);
        attrs.push_str("value = dense<");
        write_dense(&mut attrs, ty, value);
        attrs.push_str("> : ");
        ty.write_mlir(&mut attrs);
        self.op("stablehlo.constant", &[], &attrs, None, ty)
    }

    /// The source location written after each op from now on.
    pub(crate) fn set_loc(&mut self, loc: crate::trace::Loc) {
        let k = match self.files.iter().position(|f| f.0 == loc.file) {
            Some(k) => k,
            None => {
                self.files.push((loc.file, quoted(loc.file)));
                self.files.len() - 1
            }
        };
        let mut digits = itoa::Buffer::new();
        self.loc.clear();
        self.loc.push_str(" loc(");
        self.loc.push_str(&self.files[k].1);
        self.loc.push(':');
        self.loc.push_str(digits.format(loc.line));
        self.loc.push(':');
        self.loc.push_str(digits.format(loc.col));
        self.loc.push(')');
    }

    /// The location text written after ops (`" loc(...)"` or empty).
    pub(crate) fn loc_text(&self) -> String {
        self.loc.clone()
    }

    /// Restores a location text saved with `loc_text`.
    pub(crate) fn restore_loc(&mut self, loc: String) {
        self.loc = loc;
    }

    /// Swaps the op lines collected so far for `body` (to write a region's ops apart).
    pub(crate) fn swap_body(&mut self, body: &mut String) {
        std::mem::swap(&mut self.body, body);
    }

    /// Appends raw text (whole lines) to the body.
    pub(crate) fn push_text(&mut self, text: &str) {
        self.body.push_str(text);
    }

    /// Emits a region's terminator `"stablehlo.return"(values)`.
    pub(crate) fn write_return(&mut self, values: &[(&str, &TensorType)]) {
        let names: Vec<&str> = values.iter().map(|v| v.0).collect();
        let types: Vec<String> = values.iter().map(|v| v.1.mlir()).collect();
        let _ = writeln!(self.body, "      \"stablehlo.return\"({}) : ({}) -> (){}", names.join(", "), types.join(", "), self.loc);
    }

    /// A fresh SSA name, e.g. for a block argument.
    pub(crate) fn fresh_name(&mut self) -> String {
        self.fresh()
    }

    pub(crate) fn scalar(&mut self, dtype: DType, v: f64) -> String {
        let lit = if dtype.is_float() { Literal::Float(vec![v]) } else { Literal::Int(vec![v as i64]) };
        self.constant(&TensorType::scalar(dtype), &lit)
    }
}

/// Appends the MLIR text of one element.
fn write_element(out: &mut String, dtype: DType, v: f64, i: i64) {
    match dtype {
        DType::Pred => out.push_str(if i != 0 { "true" } else { "false" }),
        d if d.is_int() => out.push_str(itoa::Buffer::new().format(i)),
        d => write_float(out, d, v),
    }
}

/// A float literal MLIR parses exactly: shortest round-trip decimal with a '.', or the bit
/// pattern in hex for infinities and NaN.
fn write_float(out: &mut String, dtype: DType, v: f64) {
    if !v.is_finite() {
        let _ = match dtype {
            DType::F64 => write!(out, "0x{:016X}", v.to_bits()),
            DType::F32 => write!(out, "0x{:08X}", (v as f32).to_bits()),
            DType::Bf16 => write!(out, "0x{:04X}", half::bf16::from_f64(v).to_bits()),
            _ => write!(out, "0x{:04X}", half::f16::from_f64(v).to_bits()),
        };
        return;
    }
    let start = out.len();
    let _ = match dtype {
        DType::F64 => write!(out, "{v:e}"),
        DType::F32 => write!(out, "{:e}", v as f32),
        DType::Bf16 => write!(out, "{:e}", half::bf16::from_f64(v).to_f32()),
        _ => write!(out, "{:e}", half::f16::from_f64(v).to_f32()),
    };
    // `{:e}` writes `1e0` for 1: MLIR wants a '.' in a float literal.
    if let Some(at) = out[start..].find('e').map(|k| start + k) {
        if !out[start..at].contains('.') {
            out.insert_str(at, ".0");
        }
    }
}

/// The elements of a dense literal: one value when it holds one (a splat), else nested
/// `[[a, b], [c, d]]` lists following the dims.
fn write_dense(out: &mut String, ty: &TensorType, value: &Literal) {
    let n = match value {
        Literal::Float(v) => v.len(),
        Literal::Int(v) => v.len(),
        Literal::Empty => 0,
    };
    let element = |out: &mut String, k: usize| match value {
        Literal::Float(v) => write_element(out, ty.dtype, v[k], v[k] as i64),
        Literal::Int(v) => write_element(out, ty.dtype, v[k] as f64, v[k]),
        Literal::Empty => {}
    };
    if n == 1 {
        element(out, 0);
    } else {
        write_nested(out, &ty.dims, 0, n, &element);
    }
}

fn write_nested(out: &mut String, dims: &[i64], offset: usize, n: usize, element: &dyn Fn(&mut String, usize)) {
    match dims.split_first() {
        None => {
            if offset < n {
                element(out, offset);
            }
        }
        Some((&rows, rest)) => {
            let chunk: usize = rest.iter().product::<i64>() as usize;
            out.push('[');
            for i in 0..rows as usize {
                if i > 0 {
                    out.push_str(", ");
                }
                write_nested(out, rest, offset + i * chunk, n, element);
            }
            out.push(']');
        }
    }
}

fn symbol(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.is_empty() {
        "main".into()
    } else {
        s
    }
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// How `Function::to_stablehlo_with` writes the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerOptions {
    /// Each op carries `loc("file.rs":line:col)` of the Rust code that made it (default).
    /// Off: no locations (stable text for golden files).
    pub locations: bool,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions { locations: true }
    }
}

impl Function {
    /// StableHLO text of this function as `@main` of a module named after it, each op with
    /// its Rust source location. Fails when a sharding does not fit the mesh or the function.
    pub fn to_stablehlo(&self) -> Result<String, Error> {
        self.to_stablehlo_with(LowerOptions::default())
    }

    /// `to_stablehlo` with options.
    pub fn to_stablehlo_with(&self, options: LowerOptions) -> Result<String, Error> {
        let live = self.live_nodes();
        let mesh = self.mesh.clone().filter(|m| m.num_devices() > 1);
        self.check_constraints(mesh.as_ref(), &live)?;
        // The whole module goes into one buffer: the header (which depends only on the
        // parameters and outputs), then the body op by op, then the return. About 180 bytes
        // per node in large programs; allocating it once spares copying megabytes.
        let header = self.module_header()?;
        let mut e = Emitter {
            body: String::with_capacity(header.len() + 200 * self.nodes.len() + 1024),
            next: 0,
            loc: String::new(),
            mesh,
            files: Vec::new(),
        };
        e.body.push_str(&header);
        let params: Vec<String> = (0..self.params.len()).map(|p| format!("%arg{p}")).collect();
        let results = emit_nodes(self, &mut e, &params, &live, options.locations);
        let mut out = e.body;
        out.push_str("    \"func.return\"(");
        for (k, r) in results.iter().enumerate() {
            out.push_str(if k == 0 { "" } else { ", " });
            out.push_str(r);
        }
        out.push_str(") : (");
        for (k, o) in self.outputs.iter().enumerate() {
            out.push_str(if k == 0 { "" } else { ", " });
            self.nodes[o.id].ty.write_mlir(&mut out);
        }
        out.push_str(") -> ()\n  }\n}\n");
        Ok(out)
    }

    /// The module's opening lines up to and including `func.func ... {`: the partition count,
    /// the mesh, and every parameter and result with its name, sharding and donation.
    fn module_header(&self) -> Result<String, Error> {
        let partitions = self.mesh.as_ref().map_or(1, |m| m.num_devices());
        let mut out = format!(
            "module @{} attributes {{mhlo.num_partitions = {partitions} : i32, mhlo.num_replicas = 1 : i32}} {{\n",
            symbol(&self.name)
        );
        if let Some(mesh) = &self.mesh {
            out += &format!("  {}\n", mesh.sdy_declaration("mesh"));
        }
        let sharding_attr = |what: &str, spec: &Option<sharding::PartitionSpec>, ty: &TensorType| -> Result<Option<String>, Error> {
            let Some(spec) = spec else { return Ok(None) };
            let Some(mesh) = self.mesh.as_ref() else {
                return Err(Error::Invalid(format!("{}: {what} has a sharding but the function has no mesh", self.name)));
            };
            if spec.dims.len() != ty.rank() {
                return Err(Error::Invalid(format!(
                    "{}: {what} is {ty} but its sharding {spec} has {} entries",
                    self.name,
                    spec.dims.len()
                )));
            }
            let text = spec.sdy_sharding(mesh, "mesh").map_err(|cause| Error::Sharding { what: what.to_string(), cause })?;
            Ok(Some(format!("sdy.sharding = {text}")))
        };
        let mut params = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let mut attrs = vec![format!("mhlo.frontend_attributes = {{name = {}}}", quoted(&p.name))];
            attrs.extend(sharding_attr(&format!("parameter {}", p.name), &p.sharding, &p.ty)?);
            if p.donate {
                attrs.push("jax.buffer_donor = true".into());
            }
            params.push(format!("%arg{i}: {} {{{}}}", p.ty.mlir(), attrs.join(", ")));
        }
        let mut results = Vec::new();
        for o in &self.outputs {
            let ty = &self.nodes[o.id].ty;
            let mut attrs = vec![format!("jax.result_info = {}", quoted(&o.name))];
            attrs.extend(sharding_attr(&format!("output {}", o.name), &o.sharding, ty)?);
            results.push(format!("{} {{{}}}", ty.mlir(), attrs.join(", ")));
        }
        out += &format!("  func.func public @main({}) -> ({}) {{\n", params.join(", "), results.join(", "));
        Ok(out)
    }
}

/// Emits the live nodes of `f` (a whole program or a loop body) into `e`'s body, parameter
/// `p` being the SSA value `params[p]`, and returns the SSA values of `f`'s outputs.
pub(crate) fn emit_nodes(f: &Function, e: &mut Emitter, params: &[String], live: &[bool], locations: bool) -> Vec<String> {
    let mut names: Vec<String> = vec![String::new(); f.nodes.len()];
    // The results of each loop, by node.
    let mut loops: std::collections::HashMap<usize, Vec<String>> = std::collections::HashMap::new();
    for (i, node) in f.nodes.iter().enumerate() {
        if let Prim::Param(p) = node.prim {
            names[i] = params[p].clone();
            continue;
        }
        if !live[i] {
            continue;
        }
        if locations {
            e.set_loc(node.loc);
        }
        let args: Vec<(&str, &TensorType)> = node.inputs.iter().map(|&j| (names[j].as_str(), &f.nodes[j].ty)).collect();
        names[i] = match &node.prim {
            Prim::Scan(s) => {
                let results = crate::scan::lower(s, e, &args, locations);
                loops.insert(i, results);
                String::new()
            }
            Prim::ScanResult { index, .. } => loops.get(&node.inputs[0]).and_then(|r| r.get(*index)).cloned().unwrap_or_default(),
            prim => prim.lower(e, &args, &node.ty),
        };
    }
    f.outputs.iter().map(|o| names[o.id].clone()).collect()
}

impl Function {
    /// Sharding constraints must name axes of the mesh (when there is one to lower them for).
    fn check_constraints(&self, mesh: Option<&sharding::Mesh>, live: &[bool]) -> Result<(), Error> {
        let Some(mesh) = mesh else { return Ok(()) };
        for (node, _) in self.nodes.iter().zip(live).filter(|(_, l)| **l) {
            match &node.prim {
                Prim::ShardingConstraint { spec } => {
                    spec.check(mesh).map_err(|cause| Error::Sharding { what: format!("sharding_constraint at {}", node.loc), cause })?
                }
                Prim::Scan(s) => s.body.check_constraints(Some(mesh), &s.body.live_nodes())?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// `array<i64: 1, 2>`
pub(crate) fn i64_array(v: &[i64]) -> String {
    let mut digits = itoa::Buffer::new();
    let mut out = String::with_capacity(12 + 4 * v.len());
    out.push_str("array<i64");
    for (k, &x) in v.iter().enumerate() {
        out.push_str(if k == 0 { ": " } else { ", " });
        out.push_str(digits.format(x));
    }
    out.push('>');
    out
}

/// `array<i64: ...>` of dimension numbers.
pub(crate) fn dims_array(v: &[usize]) -> String {
    i64_array(&v.iter().map(|&x| x as i64).collect::<Vec<_>>())
}

/// `[1, 2]`
pub(crate) fn list(v: &[usize]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
