//! A reference evaluator: runs a `Function` on the host in plain Rust, following StableHLO
//! semantics, with no plugin. Every value is held as f64 whatever its dtype (integers are
//! exact up to 2^53); each node's result, parameters included, is rounded to the node's
//! dtype (f32, bf16, f16 precision; integer range; pred 0/1), so results mirror the program.
use crate::function::{Function, Node};
use crate::prim::{Cmp, DotDims, Literal, Prim};
use crate::types::DType;
use crate::Error;
use half::{bf16, f16};
use ndarray::{ArrayD, Axis, IxDyn, Slice as Range, Zip};

type Arr = ArrayD<f64>;

/// Evaluates `f` at `args` (one per parameter, of the parameter's shape) and returns its
/// outputs. Only the nodes the outputs depend on are evaluated.
pub fn eval(f: &Function, args: &[Arr]) -> Result<Vec<Arr>, Error> {
    check_args(f, args)?;
    check_order(f)?;
    let live = f.live_nodes();
    let mut vals: Vec<Option<Arr>> = vec![None; f.nodes.len()];
    // The results of each scan node.
    let mut loops: std::collections::HashMap<usize, Vec<Arr>> = std::collections::HashMap::new();
    for (i, node) in f.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let fail = |message: String| Error::Eval { op: node.prim.name(), loc: node.loc, message };
        check_node(f, i).map_err(fail)?;
        let x: Vec<&Arr> = node.inputs.iter().map(|&j| vals[j].as_ref().expect("internal: inputs come first and are live")).collect();
        let operand = node.inputs.first().map_or(node.ty.dtype, |&j| f.nodes[j].ty.dtype);
        let v = match &node.prim {
            Prim::Scan(s) => {
                loops.insert(i, crate::scan::eval(s, &x)?);
                ArrayD::zeros(IxDyn(&[]))
            }
            Prim::ScanResult { index, .. } => loops
                .get(&node.inputs[0])
                .and_then(|r| r.get(*index))
                .cloned()
                .ok_or_else(|| fail(format!("operand {} has no result {index}", node.inputs[0])))?,
            _ => eval_node(node, &x, operand, args).map_err(fail)?,
        };
        let want = shape_of(&node.ty.dims).map_err(fail)?;
        if v.shape() != want.as_slice() {
            return Err(fail(format!("internal: result of shape {:?}, its type is {}", v.shape(), node.ty)));
        }
        let d = node.ty.dtype;
        vals[i] = Some(v.mapv_into(|e| round_to(d, e)));
    }
    Ok(f.outputs.iter().map(|o| vals[o.id].clone().expect("internal: outputs are live")).collect())
}

fn check_args(f: &Function, args: &[Arr]) -> Result<(), Error> {
    if args.len() != f.params.len() {
        let names: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
        return Err(Error::Invalid(format!("{}: takes {} arguments ({}), got {}", f.name, f.params.len(), names.join(", "), args.len())));
    }
    for (i, (p, a)) in f.params.iter().zip(args).enumerate() {
        if !a.shape().iter().map(|&d| d as i64).eq(p.ty.dims.iter().copied()) {
            return Err(Error::Invalid(format!("{}: argument {i} ({}: {}) has shape {:?}", f.name, p.name, p.ty, a.shape())));
        }
    }
    Ok(())
}

/// Inputs name earlier nodes and outputs name nodes: liveness and evaluation in order work.
fn check_order(f: &Function) -> Result<(), Error> {
    for (i, node) in f.nodes.iter().enumerate() {
        if node.inputs.iter().any(|&j| j >= i) {
            return Err(Error::Eval {
                op: node.prim.name(),
                loc: node.loc,
                message: format!("inputs {:?} of node {i} are not all earlier nodes", node.inputs),
            });
        }
    }
    match f.outputs.iter().find(|o| o.id >= f.nodes.len()) {
        Some(o) => Err(Error::Invalid(format!("{}: output {} names no node", f.name, o.name))),
        None => Ok(()),
    }
}

/// The invariant `eval_node` relies on: the node's type is what its primitive's shape rule
/// gives for its inputs' types.
fn check_node(f: &Function, i: usize) -> Result<(), String> {
    let node = &f.nodes[i];
    match node.prim {
        Prim::Param(_) => return Ok(()),
        Prim::Constant { .. } | Prim::Iota { .. } => {}
        _ if node.inputs.is_empty() => return Err("has no operands".into()),
        _ => {}
    }
    let types: Vec<_> = node.inputs.iter().map(|&j| &f.nodes[j].ty).collect();
    match node.prim.infer(&types) {
        Ok(t) if t == node.ty => Ok(()),
        Ok(t) => Err(format!("node type {} differs from the inferred {t}", node.ty)),
        Err(m) => Err(m),
    }
}

fn shape_of(dims: &[i64]) -> Result<Vec<usize>, String> {
    dims.iter().map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension in {dims:?}"))).collect()
}

/// One node's value from its operands' values; `from` is the dtype of its first operand.
fn eval_node(node: &Node, x: &[&Arr], from: DType, args: &[Arr]) -> Result<Arr, String> {
    use Prim::*;
    let out = shape_of(&node.ty.dims)?;
    let dtype = node.ty.dtype;
    match &node.prim {
        Param(k) => args.get(*k).cloned().ok_or_else(|| format!("parameter {k} out of range")),
        Constant { value, .. } => constant(dtype, value, &out),
        Iota { dim, .. } => Ok(ArrayD::from_shape_fn(IxDyn(&out), |ix| ix[*dim] as f64)),
        RngBitGenerator { .. } => Err("its bits are implementation-defined (StableHLO leaves the \
            algorithm's output to the implementation), so there is no reference for it"
            .into()),
        Neg | Exp | Log | Sqrt | Rsqrt | Tanh | Logistic | Abs | Sign | Sin | Cos | StopGradient => Ok(x[0].mapv(unary(&node.prim))),
        ShardingConstraint { .. } | OptimizationBarrier | CotangentBarrier => Ok(x[0].clone()),
        Convert { dtype: to } => Ok(x[0].mapv(|v| convert(from, *to, v))),
        BitcastConvert { dtype: to } => Ok(x[0].mapv(|v| from_bits(*to, to_bits(from, v)))),
        Add | Sub | Mul | Div | Pow | Max | Min | And | Or | ShiftRightLogical | Compare(_) => {
            Ok(Zip::from(x[0]).and(x[1]).map_collect(|&a, &b| binary(&node.prim, from, a, b)))
        }
        Select => Ok(Zip::from(x[0]).and(x[1]).and(x[2]).map_collect(|&m, &a, &b| if m != 0.0 { a } else { b })),
        DotGeneral(d) => dot_general(d, x[0], x[1], &out),
        ReduceSum { axes } | ReduceMax { axes } => Ok(reduce(&node.prim, dtype, x[0], axes)),
        Gather => gather(x[0], x[1], &out),
        ScatterAdd => scatter_add(dtype, x[0], x[1], x[2]),
        _ => shape_op(&node.prim, x, &out),
    }
}

// ---- dtypes: rounding, integer ranges, conversions

/// `x` as a value of `d`: rounded to its float precision, or truncated and saturated to
/// its integer range, or 0/1 for pred.
fn round_to(d: DType, x: f64) -> f64 {
    match d {
        DType::F64 => x,
        DType::F32 => x as f32 as f64,
        DType::Bf16 => bf16::from_f64(x).to_f64(),
        DType::F16 => f16::from_f64(x).to_f64(),
        DType::Pred => f64::from(u8::from(x != 0.0)),
        d if d.is_int() => saturate(d, x),
        _ => x,
    }
}

/// Integer width of `d`, at most 64 (pred counts as 1 bit).
fn width(d: DType) -> u32 {
    d.bits().clamp(1, 64)
}

fn int_range(d: DType) -> (i128, i128) {
    let b = width(d);
    if d.is_unsigned() {
        (0, (1i128 << b) - 1)
    } else {
        (-(1i128 << (b - 1)), (1i128 << (b - 1)) - 1)
    }
}

/// Truncates toward zero and clamps to the range of `d` (NaN gives 0), as XLA converts.
fn saturate(d: DType, x: f64) -> f64 {
    let (lo, hi) = int_range(d);
    ((x.trunc() as i128).clamp(lo, hi)) as f64
}

/// Two's complement wrap-around of `v` to the width and signedness of `d`.
fn wrap_int(d: DType, v: i128) -> f64 {
    let b = width(d);
    let m = v.rem_euclid(1i128 << b);
    let signed_high = !d.is_unsigned() && d != DType::Pred && m >= 1i128 << (b - 1);
    (if signed_high { m - (1i128 << b) } else { m }) as f64
}

fn convert(from: DType, to: DType, x: f64) -> f64 {
    match to {
        DType::Pred => f64::from(u8::from(x != 0.0)),
        d if d.is_int() && from.is_float() => saturate(d, x),
        d if d.is_int() => wrap_int(d, x as i128),
        _ => x,
    }
}

/// The bit pattern of `x` held as a value of `d`, in the low bits.
fn to_bits(d: DType, x: f64) -> u64 {
    match d {
        DType::F64 => x.to_bits(),
        DType::F32 => u64::from((x as f32).to_bits()),
        DType::Bf16 => u64::from(bf16::from_f64(x).to_bits()),
        DType::F16 => u64::from(f16::from_f64(x).to_bits()),
        DType::Pred => u64::from(x != 0.0),
        d => ((x as i128 as u128) & ((1u128 << width(d)) - 1)) as u64,
    }
}

fn from_bits(d: DType, bits: u64) -> f64 {
    match d {
        DType::F64 => f64::from_bits(bits),
        DType::F32 => f64::from(f32::from_bits(bits as u32)),
        DType::Bf16 => bf16::from_bits(bits as u16).to_f64(),
        DType::F16 => f16::from_bits(bits as u16).to_f64(),
        DType::Pred => (bits & 1) as f64,
        d => wrap_int(d, i128::from(bits)),
    }
}

// ---- elementwise

fn unary(p: &Prim) -> fn(f64) -> f64 {
    match p {
        Prim::Neg => |v| -v,
        Prim::Exp => f64::exp,
        Prim::Log => f64::ln,
        Prim::Sqrt => f64::sqrt,
        Prim::Rsqrt => |v| 1.0 / v.sqrt(),
        Prim::Tanh => f64::tanh,
        Prim::Logistic => |v| 1.0 / (1.0 + (-v).exp()),
        Prim::Abs => f64::abs,
        // 0 and NaN map to themselves; f64::signum would give 1 for 0.
        Prim::Sign => |v| {
            if v == 0.0 || v.is_nan() {
                v
            } else {
                v.signum()
            }
        },
        Prim::Sin => f64::sin,
        Prim::Cos => f64::cos,
        _ => |v| v,
    }
}

/// A binary elementwise op on operands of dtype `d`. Integer arithmetic is exact in i128
/// and wraps to the width of `d`.
fn binary(p: &Prim, d: DType, a: f64, b: f64) -> f64 {
    use Prim::*;
    let bit = |x: bool| f64::from(u8::from(x));
    if let Compare(c) = p {
        return bit(match c {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        });
    }
    if d == DType::Pred {
        return match p {
            And => bit(a != 0.0 && b != 0.0),
            _ => bit(a != 0.0 || b != 0.0),
        };
    }
    match p {
        Max | Min if a.is_nan() || b.is_nan() => f64::NAN,
        Max => a.max(b),
        Min => a.min(b),
        _ if d.is_int() => int_binary(p, d, a as i128, b as i128),
        Add => a + b,
        Sub => a - b,
        Mul => a * b,
        Div => a / b,
        Pow => a.powf(b),
        _ => f64::NAN,
    }
}

fn int_binary(p: &Prim, d: DType, a: i128, b: i128) -> f64 {
    use Prim::*;
    let v = match p {
        Add => a + b,
        Sub => a - b,
        Mul => a * b,
        // Truncates toward zero; x / 0 is -1 (all ones), as XLA defines it.
        Div if b == 0 => -1,
        Div => a / b,
        Pow => int_pow(a, b),
        And => a & b,
        Or => a | b,
        ShiftRightLogical => {
            let bits = i128::from(width(d));
            let u = a.rem_euclid(1i128 << bits);
            if (0..bits).contains(&b) {
                u >> b
            } else {
                0
            }
        }
        _ => 0,
    };
    wrap_int(d, v)
}

/// a^b with wrapping multiplication; negative exponents give 0 except for bases 1 and -1.
fn int_pow(a: i128, b: i128) -> i128 {
    if b < 0 {
        return match a {
            1 => 1,
            -1 if b % 2 == 0 => 1,
            -1 => -1,
            _ => 0,
        };
    }
    let (mut base, mut e, mut acc) = (a, b, 1i128);
    while e > 0 {
        if e & 1 == 1 {
            acc = acc.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    acc
}

// ---- leaves, dot, reductions, indexing

fn constant(d: DType, value: &Literal, out: &[usize]) -> Result<Arr, String> {
    let v: Vec<f64> = match value {
        Literal::Float(v) => v.clone(),
        // Integer literals are two's complement bit patterns (u64 values above i64::MAX).
        Literal::Int(v) => v.iter().map(|&i| if d.is_int() { wrap_int(d, i128::from(i)) } else { i as f64 }).collect(),
        Literal::Empty => Vec::new(),
    };
    match v.as_slice() {
        [one] => Ok(ArrayD::from_elem(IxDyn(out), *one)),
        _ => ArrayD::from_shape_vec(IxDyn(out), v).map_err(|e| format!("constant data: {e}")),
    }
}

/// Operand `a` with its axes permuted by `perm`, as a row-major [d0, d1, d2] array.
fn to_3d(a: &Arr, perm: &[usize], dims: [usize; 3]) -> Result<ndarray::Array3<f64>, String> {
    let mut sorted = perm.to_vec();
    sorted.sort_unstable();
    if sorted != (0..a.ndim()).collect::<Vec<_>>() {
        return Err(format!("dimension numbers {perm:?} must name each of the {} dimensions once", a.ndim()));
    }
    let v: Vec<f64> = a.view().permuted_axes(IxDyn(perm)).iter().copied().collect();
    ndarray::Array3::from_shape_vec(dims, v).map_err(|e| format!("internal: {e}"))
}

fn dot_general(d: &DotDims, l: &Arr, r: &Arr, out: &[usize]) -> Result<Arr, String> {
    let free = |rank: usize, batch: &[usize], contract: &[usize]| -> Vec<usize> {
        (0..rank).filter(|i| !batch.contains(i) && !contract.contains(i)).collect()
    };
    let (lf, rf) = (free(l.ndim(), &d.lhs_batch, &d.lhs_contract), free(r.ndim(), &d.rhs_batch, &d.rhs_contract));
    let size = |a: &Arr, axes: &[usize]| axes.iter().map(|&i| a.shape()[i]).product::<usize>();
    let (b, m, k, n) = (size(l, &d.lhs_batch), size(l, &lf), size(l, &d.lhs_contract), size(r, &rf));
    // lhs as [batch, free, contract], rhs as [batch, contract, free]: pairs line up in order.
    let l3 = to_3d(l, &[&d.lhs_batch[..], &lf, &d.lhs_contract].concat(), [b, m, k])?;
    let r3 = to_3d(r, &[&d.rhs_batch[..], &d.rhs_contract, &rf].concat(), [b, k, n])?;
    let mut o = Vec::with_capacity(b * m * n);
    for i in 0..b {
        o.extend(l3.index_axis(Axis(0), i).dot(&r3.index_axis(Axis(0), i)).iter());
    }
    ArrayD::from_shape_vec(IxDyn(out), o).map_err(|e| format!("internal: {e}"))
}

fn reduce(p: &Prim, d: DType, x: &Arr, axes: &[usize]) -> Arr {
    let lowest = if d.is_int() { int_range(d).0 as f64 } else { f64::NEG_INFINITY };
    let mut r = x.clone();
    // Axes are increasing (the shape rule checks): remove the last first.
    for &a in axes.iter().rev() {
        r = match p {
            Prim::ReduceSum { .. } => r.sum_axis(Axis(a)),
            _ => r.fold_axis(Axis(a), lowest, |&m, &v| if m.is_nan() || v.is_nan() { f64::NAN } else { m.max(v) }),
        };
    }
    r
}

/// Rows of `table` [V, ...] at `ids` [...]: [ids..., rest...]; ids are clamped to [0, V-1].
fn gather(table: &Arr, ids: &Arr, out: &[usize]) -> Result<Arr, String> {
    let v = table.shape()[0];
    let row: usize = table.shape()[1..].iter().product();
    if v == 0 && !ids.is_empty() {
        return Err("gather from a table with no rows".into());
    }
    let flat: Vec<f64> = table.iter().copied().collect();
    let mut o = Vec::with_capacity(ids.len() * row);
    for &id in ids {
        let i = (id as i64).clamp(0, v as i64 - 1) as usize;
        o.extend_from_slice(&flat[i * row..(i + 1) * row]);
    }
    ArrayD::from_shape_vec(IxDyn(out), o).map_err(|e| format!("internal: {e}"))
}

/// `table` with update rows added at `ids`, one at a time in the table's dtype; updates at
/// out-of-range ids are skipped.
fn scatter_add(d: DType, table: &Arr, ids: &Arr, updates: &Arr) -> Result<Arr, String> {
    let v = table.shape()[0];
    let row: usize = table.shape()[1..].iter().product();
    let mut flat: Vec<f64> = table.iter().copied().collect();
    let upd: Vec<f64> = updates.iter().copied().collect();
    for (k, &id) in ids.iter().enumerate() {
        let Ok(i) = usize::try_from(id as i64) else {
            continue;
        };
        if i >= v {
            continue;
        }
        for j in 0..row {
            flat[i * row + j] = round_to(d, flat[i * row + j] + upd[k * row + j]);
        }
    }
    ArrayD::from_shape_vec(table.raw_dim(), flat).map_err(|e| format!("internal: {e}"))
}

// ---- data movement

fn reshape(x: &Arr, dims: &[usize]) -> Result<Arr, String> {
    ArrayD::from_shape_vec(IxDyn(dims), x.iter().copied().collect()).map_err(|e| format!("internal: {e}"))
}

/// Start indices from scalar operands, clamped so that a block of `sizes` fits in `dims`.
fn starts(idx: &[&Arr], dims: &[usize], sizes: &[usize]) -> Vec<usize> {
    idx.iter()
        .zip(dims.iter().zip(sizes))
        .map(|(i, (&d, &s))| {
            let v = i.first().copied().unwrap_or(0.0) as i64;
            v.clamp(0, d.saturating_sub(s) as i64) as usize
        })
        .collect()
}

fn shape_op(p: &Prim, x: &[&Arr], out: &[usize]) -> Result<Arr, String> {
    use Prim::*;
    let a = x[0];
    match p {
        BroadcastInDim { broadcast_dims, .. } => broadcast_in_dim(a, broadcast_dims, out),
        Reshape { .. } => reshape(a, out),
        Transpose { perm } => Ok(a.view().permuted_axes(IxDyn(perm)).to_owned()),
        Slice { start, limit, strides } => Ok(a
            .slice_each_axis(|ax| {
                let i = ax.axis.index();
                Range::new(start[i] as isize, Some(limit[i] as isize), strides[i] as isize)
            })
            .to_owned()),
        DynamicSlice { .. } => {
            let at = starts(&x[1..], a.shape(), out);
            Ok(a.slice_each_axis(|ax| {
                let i = ax.axis.index();
                Range::from(at[i]..at[i] + out[i])
            })
            .to_owned())
        }
        DynamicUpdateSlice => {
            let u = x[1];
            let at = starts(&x[2..], a.shape(), u.shape());
            let mut o = a.clone();
            o.slice_each_axis_mut(|ax| {
                let i = ax.axis.index();
                Range::from(at[i]..at[i] + u.shape()[i])
            })
            .assign(u);
            Ok(o)
        }
        Concatenate { dim } => {
            let views: Vec<_> = x.iter().map(|t| t.view()).collect();
            ndarray::concatenate(Axis(*dim), &views).map_err(|e| format!("internal: {e}"))
        }
        Pad { low, interior, .. } => pad(a, x[1].first().copied().unwrap_or(0.0), low, interior, out),
        _ => Err(format!("internal: {} has no evaluator", p.name())),
    }
}

fn broadcast_in_dim(a: &Arr, broadcast_dims: &[usize], out: &[usize]) -> Result<Arr, String> {
    // Operand dimension i sits at broadcast_dims[i] (increasing), 1 elsewhere.
    let mut ones = vec![1; out.len()];
    for (i, &d) in broadcast_dims.iter().enumerate() {
        ones[d] = a.shape()[i];
    }
    let r = reshape(a, &ones)?;
    let b = r.broadcast(IxDyn(out)).ok_or_else(|| format!("internal: cannot broadcast to {out:?}"))?;
    Ok(b.to_owned())
}

/// Operand element i of each dimension lands at low + i * (interior + 1); the rest is `v`.
fn pad(a: &Arr, v: f64, low: &[i64], interior: &[i64], out: &[usize]) -> Result<Arr, String> {
    let mut o = ArrayD::from_elem(IxDyn(out), v);
    for (ix, &e) in a.indexed_iter() {
        let at: Vec<usize> = (0..a.ndim()).map(|i| low[i] as usize + ix[i] * (interior[i] as usize + 1)).collect();
        *o.get_mut(IxDyn(&at)).ok_or("internal: padded index out of range")? = e;
    }
    Ok(o)
}
