//! What one step of a compiled program runs, counted from XLA's optimised HLO with loop trip
//! counts: how many times each computation runs per step, the matmul FLOPs (dot and
//! convolution) and the collectives with the bytes they move per chip.
//!
//! XLA's cost analysis counts a while loop's body once; a program whose layers run as a loop
//! (`--scan-layers`) would look `layers` times cheaper than it is. Here every computation's
//! work is multiplied by the number of times it runs: the product of the trip counts of the
//! loops around it.
use crate::summary::{attr, axes_of, expand_groups, mesh_groups, parse_instr, strip_layout, Instr, COLLECTIVES};
use runtime::Mesh;
use std::collections::HashMap;

/// One while loop of the program.
#[derive(Debug, Clone, PartialEq)]
pub struct Loop {
    /// The while instruction's name.
    pub name: String,
    /// Its trip count: XLA's `known_trip_count`, or the bound of its condition's
    /// `counter < constant` (None: neither found; the body is then counted once per run).
    pub trips: Option<u64>,
    /// How many times the loop itself runs per step (loops inside loops run more than once).
    pub runs: u64,
}

/// Collectives of one kind over the same mesh axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Collectives {
    /// The opcode (`all-reduce`, `all-gather`, ...; an async `-start` counts as its op).
    pub op: String,
    /// The mesh axes the groups span (`data`, `model`, `data,model`, or `?`).
    pub axes: String,
    /// How many such instructions the program has.
    pub instructions: usize,
    /// How many times they run per step (loop trips included).
    pub runs: u64,
    /// Bytes of their results per chip, summed over the runs.
    pub bytes: u64,
    /// Bytes each chip sends per step, by the ring algorithms' counts: all-reduce
    /// 2(g-1)/g of the array, all-gather (g-1)/g of its result, reduce-scatter (g-1) times its
    /// result, all-to-all (g-1)/g, collective-permute all of it (g: the group size).
    pub sent: u64,
}

/// The counts of one step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepCost {
    /// The while loops, in program order.
    pub loops: Vec<Loop>,
    /// Matmul FLOPs per chip per step, every computation counted as often as it runs.
    pub matmul_flops: f64,
    /// The same with every computation counted once (as XLA's cost analysis counts loops).
    pub matmul_flops_once: f64,
    /// Collectives by kind and axes, in order of first appearance.
    pub collectives: Vec<Collectives>,
    /// Every collective instruction, in program order: where the totals come from.
    pub instances: Vec<Instance>,
}

/// One collective instruction of the program.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The opcode, as in [`Collectives::op`].
    pub op: String,
    /// The mesh axes its groups span, as in [`Collectives::axes`].
    pub axes: String,
    /// The instruction's name.
    pub name: String,
    /// The computation it is in.
    pub computation: String,
    /// Runs per step (loop trips included).
    pub runs: u64,
    /// Bytes of its result per chip, per run.
    pub bytes: u64,
    /// Its `op_name` metadata, which names the source op (`reshape.204`, or JAX's
    /// `jit(step)/transpose(jvp())/while/body/...`).
    pub op_name: String,
}

impl StepCost {
    /// XLA's cost-analysis FLOPs (`xla_flops`, loop bodies counted once) with each loop
    /// body's matmuls added for the trips it leaves out.
    pub fn flops_with_trips(&self, xla_flops: f64) -> f64 {
        xla_flops + (self.matmul_flops - self.matmul_flops_once)
    }

    /// Bytes sent per chip per step over all collectives.
    pub fn sent(&self) -> u64 {
        self.collectives.iter().map(|c| c.sent).sum()
    }
}

struct Module {
    instrs: Vec<Instr>,
    entry: String,
    /// Instruction name -> index in `instrs`.
    by_name: HashMap<String, usize>,
}

impl Module {
    fn parse(text: &str) -> Module {
        let mut instrs = Vec::new();
        let mut entry = String::new();
        let mut computation = String::new();
        for line in text.lines() {
            if !line.starts_with(' ') {
                if let Some(rest) = line.strip_suffix('{') {
                    let is_entry = rest.starts_with("ENTRY ");
                    let head = rest.trim().trim_start_matches("ENTRY ").trim();
                    computation = head.split_whitespace().next().unwrap_or("").trim_start_matches('%').to_string();
                    if is_entry {
                        entry = computation.clone();
                    }
                }
                continue;
            }
            if let Some(i) = parse_instr(line.trim(), &computation) {
                instrs.push(i);
            }
        }
        let by_name = instrs.iter().enumerate().map(|(k, i)| (i.name.clone(), k)).collect();
        Module { instrs, entry, by_name }
    }

    fn shape_of(&self, operand: &str) -> Option<&str> {
        let name = operand.trim().rsplit(' ').next()?.trim_start_matches('%');
        let name = name.split('#').next()?;
        self.by_name.get(name).map(|&k| self.instrs[k].shape.as_str())
    }

    /// The trip count of a while loop: XLA's annotation, or its condition's bound.
    fn trips(&self, w: &Instr) -> Option<u64> {
        if let Some(n) = w.line.split("\"known_trip_count\":{\"n\":\"").nth(1) {
            return n.split('"').next()?.parse().ok();
        }
        let cond = attr(&w.line, "condition=")?.trim_start_matches('%');
        let root = self.instrs.iter().find(|i| i.computation == cond && i.line.starts_with("ROOT "))?;
        if root.opcode != "compare" {
            return None;
        }
        let direction = attr(&root.line, "direction=")?;
        let operands = operands(&root.line)?;
        let constant = |k: usize| -> Option<i64> {
            let name = operands.get(k)?.trim().rsplit(' ').next()?.trim_start_matches('%');
            let c = &self.instrs[*self.by_name.get(name)?];
            (c.opcode == "constant").then_some(())?;
            c.line.split("constant(").nth(1)?.split(')').next()?.trim().parse().ok()
        };
        // The counters of our loops and XLA's start at 0 and step by 1.
        let n = match direction {
            "LT" => constant(1),
            "GT" => constant(0),
            "LE" => constant(1).map(|c| c + 1),
            _ => None,
        }?;
        u64::try_from(n).ok()
    }
}

/// The operand list of an instruction line, split at top-level commas.
fn operands(line: &str) -> Option<Vec<&str>> {
    let body = line.strip_prefix("ROOT ").unwrap_or(line);
    let (_, rest) = body.split_once(" = ")?;
    // The operand list follows the result shape and the opcode.
    let (_, after) = crate::summary::split_shape(rest)?;
    let inner = &after[after.find('(')? + 1..];
    let (mut depth, mut parts, mut from) = (0i32, Vec::new(), 0);
    for (i, c) in inner.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ')' if depth == 0 => {
                if !inner[from..i].trim().is_empty() {
                    parts.push(&inner[from..i]);
                }
                return Some(parts);
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    None
}

/// `bf16[4,64]` -> (2 bytes, [4, 64]); None for tuples, tokens and unknown types.
fn array(shape: &str) -> Option<(u64, Vec<u64>)> {
    let shape = strip_layout(shape);
    let (ty, dims) = shape.trim().split_once('[')?;
    let bytes = match ty {
        "pred" | "s8" | "u8" | "f8e4m3fn" | "f8e5m2" => 1,
        "bf16" | "f16" | "s16" | "u16" => 2,
        "f32" | "s32" | "u32" => 4,
        "f64" | "s64" | "u64" | "c64" => 8,
        "c128" => 16,
        _ => return None,
    };
    let dims = dims.strip_suffix(']')?;
    let dims: Vec<u64> =
        if dims.is_empty() { Vec::new() } else { dims.split(',').map(|d| d.trim().parse().ok()).collect::<Option<_>>()? };
    Some((bytes, dims))
}

/// Bytes of a shape, tuples summed.
fn shape_bytes(shape: &str) -> u64 {
    let s = strip_layout(shape);
    let s = s.trim().trim_start_matches('(').trim_end_matches(')');
    split_top(s)
        .iter()
        .filter_map(|part| array(part.trim().trim_start_matches("/*index=").split("*/").last()?))
        .map(|(b, d)| b * d.iter().product::<u64>())
        .sum()
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut parts, mut from) = (0i32, Vec::new(), 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' | '{' => depth += 1,
            ']' | ')' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[from..]);
    parts
}

/// The index list of an attribute like `lhs_contracting_dims={1,2}`.
fn dims_attr(line: &str, key: &str) -> Vec<usize> {
    attr(line, key)
        .map(|v| v.trim().trim_start_matches('{').trim_end_matches('}').split(',').filter_map(|d| d.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Multiply-add FLOPs (2 per multiply-accumulate) of a dot or convolution instruction.
fn matmul_flops(m: &Module, i: &Instr) -> f64 {
    let Some((_, out)) = array(&i.shape) else { return 0.0 };
    let out_elems = out.iter().product::<u64>() as f64;
    let Some(ops) = operands(&i.line) else { return 0.0 };
    match i.opcode.as_str() {
        "dot" => {
            let Some((_, lhs)) = ops.first().and_then(|o| m.shape_of(o)).and_then(array) else { return 0.0 };
            let k: u64 = dims_attr(&i.line, "lhs_contracting_dims=").iter().filter_map(|&d| lhs.get(d)).product();
            2.0 * out_elems * k as f64
        }
        "convolution" => conv_flops(m, i, &ops, &out).unwrap_or(0.0),
        _ => 0.0,
    }
}

/// A convolution's FLOPs as XLA counts them: 2 per multiply-accumulate of a valid (output,
/// kernel) position pair, padding and dilation left out (the TPU compiler writes batched
/// matmuls as convolutions whose padded windows mostly fall outside the input).
fn conv_flops(m: &Module, i: &Instr, ops: &[&str], out: &[u64]) -> Option<f64> {
    let (_, lhs) = array(m.shape_of(ops.first()?)?)?;
    let (_, rhs) = array(m.shape_of(ops.get(1)?)?)?;
    // dim_labels=b01f_01io->b01f
    let labels = attr(&i.line, "dim_labels=")?;
    let (inputs, out_labels) = labels.split_once("->")?;
    let (lhs_labels, rhs_labels) = inputs.split_once('_')?;
    let (lhs_l, rhs_l, out_l): (Vec<char>, Vec<char>, Vec<char>) =
        (lhs_labels.chars().collect(), rhs_labels.chars().collect(), out_labels.chars().collect());
    if lhs_l.len() != lhs.len() || rhs_l.len() != rhs.len() || out_l.len() != out.len() {
        return None;
    }
    // window={size=1x2 pad=0_0x1_1 stride=1x1 lhs_dilate=1x1 rhs_dilate=1x1}
    let window = attr(&i.line, "window=").unwrap_or("{}").trim_matches(|c| c == '{' || c == '}').to_string();
    let field = |key: &str| -> Vec<String> {
        window.split_whitespace().find_map(|f| f.strip_prefix(key)).map(|v| v.split('x').map(str::to_string).collect()).unwrap_or_default()
    };
    let (size, pad, stride, lhs_dil, rhs_dil) =
        (field("size="), field("pad="), field("stride="), field("lhs_dilate="), field("rhs_dilate="));
    let num = |v: &[String], k: usize, default: i64| v.get(k).and_then(|x| x.parse().ok()).unwrap_or(default);
    let spatial: Vec<char> = rhs_l.iter().copied().filter(|c| c.is_ascii_digit()).collect();
    let mut pairs: f64 = 1.0;
    let mut out_spatial: u64 = 1;
    for (k, d) in spatial.iter().enumerate() {
        let n = lhs[lhs_l.iter().position(|c| c == d)?] as i64;
        let mo = out[out_l.iter().position(|c| c == d)?] as i64;
        let w = num(&size, k, rhs[rhs_l.iter().position(|c| c == d)?] as i64);
        let lo = pad.get(k).and_then(|p| p.split('_').next()?.parse().ok()).unwrap_or(0i64);
        let (st, ld, rd) = (num(&stride, k, 1), num(&lhs_dil, k, 1), num(&rhs_dil, k, 1));
        if mo.saturating_mul(w) > 1 << 26 {
            return None;
        }
        let extent = (n - 1) * ld + 1;
        let mut valid = 0i64;
        for o in 0..mo {
            for t in 0..w {
                let pos = o * st + t * rd - lo;
                if pos >= 0 && pos < extent && pos % ld == 0 {
                    valid += 1;
                }
            }
        }
        pairs *= valid as f64;
        out_spatial *= mo as u64;
    }
    let others = out.iter().product::<u64>() / out_spatial.max(1);
    let input_features = rhs[rhs_l.iter().position(|&c| c == 'i')?];
    Some(2.0 * others as f64 * pairs * input_features as f64)
}

/// Counts one step of the optimised HLO `after` of a program over `mesh`.
pub fn step_cost(after: &str, mesh: &Mesh) -> StepCost {
    let m = Module::parse(after);
    // Who calls each computation, and how many times per run of the caller.
    let mut callers: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    let mut loops = Vec::new();
    for i in &m.instrs {
        let mut call = |key: &str, times: u64| {
            if let Some(v) = attr(&i.line, key) {
                for c in v.trim_matches(|c| c == '{' || c == '}').split(',') {
                    callers.entry(c.trim().trim_start_matches('%').to_string()).or_default().push((i.computation.clone(), times));
                }
            }
        };
        if i.opcode == "while" {
            let trips = m.trips(i);
            call("body=", trips.unwrap_or(1));
            call("condition=", trips.map_or(1, |n| n + 1));
            loops.push((i, trips));
        }
        for key in ["calls=", "to_apply=", "branch_computations=", "true_computation=", "false_computation="] {
            call(key, 1);
        }
    }
    let mut runs: HashMap<String, u64> = HashMap::new();
    fn runs_of(c: &str, entry: &str, callers: &HashMap<String, Vec<(String, u64)>>, memo: &mut HashMap<String, u64>, depth: usize) -> u64 {
        if c == entry {
            return 1;
        }
        if let Some(&r) = memo.get(c) {
            return r;
        }
        // The call graph is acyclic; the depth bound only guards against a malformed text.
        if depth > 64 {
            return 1;
        }
        let r = callers
            .get(c)
            .map(|v| {
                v.iter()
                    .map(|(caller, n)| runs_of(caller, entry, callers, memo, depth + 1).saturating_mul(*n))
                    .fold(0u64, u64::saturating_add)
            })
            .unwrap_or(0);
        memo.insert(c.to_string(), r);
        r
    }
    let mut runs_for = |c: &str| runs_of(c, &m.entry, &callers, &mut runs, 0);
    let mut cost = StepCost::default();
    for (w, trips) in &loops {
        cost.loops.push(Loop { name: w.name.clone(), trips: *trips, runs: runs_for(&w.computation) });
    }
    for i in &m.instrs {
        let r = runs_for(&i.computation);
        if r == 0 {
            continue;
        }
        if matches!(i.opcode.as_str(), "dot" | "convolution") {
            let f = matmul_flops(&m, i);
            cost.matmul_flops += f * r as f64;
            cost.matmul_flops_once += f;
        }
        if !COLLECTIVES.contains(&i.opcode.as_str()) {
            continue;
        }
        let op = i.opcode.trim_end_matches("-start").to_string();
        let groups = attr(&i.line, "replica_groups=").or_else(|| attr(&i.line, "source_target_pairs="));
        let expanded = groups.and_then(|g| expand_groups(g).or_else(|| mesh_groups(g, mesh)));
        let axes = expanded.as_ref().map(|g| axes_of(g, mesh)).unwrap_or_else(|| "?".into());
        let g = expanded.as_ref().and_then(|g| g.first()).map_or(1, |g| g.len().max(1)) as f64;
        // An async start's result holds its operand and its output: count the output.
        let bytes = if i.opcode.ends_with("-start") && op != "all-reduce" {
            let s = strip_layout(&i.shape);
            let inner = s.trim().trim_start_matches('(').trim_end_matches(')').to_string();
            split_top(&inner).get(1).map_or_else(|| shape_bytes(&i.shape), |p| shape_bytes(p))
        } else {
            shape_bytes(&i.shape)
        };
        let sent = match op.as_str() {
            "all-reduce" => 2.0 * (g - 1.0) / g * bytes as f64,
            "all-gather" | "all-to-all" => (g - 1.0) / g * bytes as f64,
            "reduce-scatter" => (g - 1.0) * bytes as f64,
            _ => bytes as f64,
        };
        cost.instances.push(Instance {
            op: op.clone(),
            axes: axes.clone(),
            name: i.name.clone(),
            computation: i.computation.clone(),
            runs: r,
            bytes,
            op_name: crate::summary::op_name(&i.line).unwrap_or_default().to_string(),
        });
        match cost.collectives.iter_mut().find(|c| c.op == op && c.axes == axes) {
            Some(c) => {
                c.instructions += 1;
                c.runs += r;
                c.bytes += bytes * r;
                c.sent += sent as u64 * r;
            }
            None => cost.collectives.push(Collectives { op, axes, instructions: 1, runs: r, bytes: bytes * r, sent: sent as u64 * r }),
        }
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"HloModule m, entry_computation_layout={()->f32[]}

%cond (p: (s32[], f32[8,4])) -> pred[] {
  %p = (s32[], f32[8,4]) parameter(0)
  %gte = s32[]{:T(128)} get-tuple-element(%p), index=0
  %c = s32[]{:T(128)} constant(6)
  ROOT %lt = pred[]{:T(512)} compare(%p#0, %c), direction=LT
}

%fused (a: f32[8,4], b: f32[4,4]) -> f32[8,4] {
  %a = f32[8,4]{1,0} parameter(0)
  %b = f32[4,4]{1,0} parameter(1)
  ROOT %d = f32[8,4]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (q: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %q = (s32[], f32[8,4]) parameter(0)
  %x = f32[8,4]{1,0} get-tuple-element(%q), index=1
  %w = f32[4,4]{1,0} constant({...})
  %f = f32[8,4]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused
  %ar = f32[8,4]{1,0} all-reduce(%f), replica_groups={{0,1},{2,3}}, to_apply=%add
  %i = s32[] get-tuple-element(%q), index=0
  ROOT %t = (s32[], f32[8,4]) tuple(%i, %ar)
}

ENTRY %main (arg: f32[8,4]) -> f32[8,4] {
  %arg = f32[8,4]{1,0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,4]) tuple(%zero, %arg)
  %loop = (s32[], f32[8,4]) while(%init), condition=%cond, body=%body
  %out = f32[8,4]{1,0} get-tuple-element(%loop), index=1
  %k = f32[4,4]{1,0} constant({...})
  %d2 = f32[8,4]{1,0} dot(%out, %k), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %ag = f32[16,4]{1,0} all-gather(%d2), replica_groups={{0,2},{1,3}}, dimensions={0}
}
"#;

    #[test]
    fn loop_bodies_count_once_per_trip() {
        let mesh = Mesh::parse("data=2,model=2").unwrap();
        let c = step_cost(TEXT, &mesh);
        assert_eq!(c.loops, vec![Loop { name: "loop".into(), trips: Some(6), runs: 1 }]);
        // One 8x4x4 matmul in the body (6 trips) and one after it.
        let one = 2.0 * 8.0 * 4.0 * 4.0;
        assert_eq!(c.matmul_flops, 7.0 * one);
        assert_eq!(c.matmul_flops_once, 2.0 * one);
        assert_eq!(c.flops_with_trips(1000.0), 1000.0 + 5.0 * one);
        // A batched matmul written as a convolution with a padded window of 2 over a
        // dimension of 1: one valid kernel position per output.
        let conv = TEXT.replace(
            "%d2 = f32[8,4]{1,0} dot(%out, %k), lhs_contracting_dims={1}, rhs_contracting_dims={0}",
            "%k3 = f32[1,4,4]{2,1,0} constant({...})\n  %o3 = f32[8,1,4]{2,1,0} reshape(%out)\n  %d2 = f32[8,2,4]{2,1,0:T(8,128)} convolution(%o3, %k3), window={size=2 pad=1_1 rhs_reversal=1}, dim_labels=b0f_0io->b0f",
        );
        let c2 = step_cost(&conv, &mesh);
        assert_eq!(c2.matmul_flops - 6.0 * one, 2.0 * 8.0 * 2.0 * 4.0 * 1.0 * 4.0 / 1.0);
        // The all-reduce over model runs 6 times: 128 bytes each, 2(g-1)/g of it sent.
        let ar = &c.collectives[0];
        assert_eq!(
            (ar.op.as_str(), ar.axes.as_str(), ar.instructions, ar.runs, ar.bytes, ar.sent),
            ("all-reduce", "model", 1, 6, 6 * 128, 6 * 128)
        );
        let ag = &c.collectives[1];
        assert_eq!((ag.op.as_str(), ag.axes.as_str(), ag.runs, ag.bytes, ag.sent), ("all-gather", "data", 1, 256, 128));
    }

    #[test]
    fn known_trip_counts_win_and_unknown_ones_count_once() {
        let mesh = Mesh::parse("data=2,model=2").unwrap();
        let known =
            TEXT.replace("condition=%cond, body=%body", "condition=%cond, body=%body, backend_config={\"known_trip_count\":{\"n\":\"3\"}}");
        assert_eq!(step_cost(&known, &mesh).loops[0].trips, Some(3));
        let unknown = TEXT.replace("direction=LT", "direction=NE");
        let c = step_cost(&unknown, &mesh);
        assert_eq!(c.loops[0].trips, None);
        assert_eq!(c.matmul_flops, c.matmul_flops_once);
    }
}
