//! XLA's dump files, found by the names XLA gives them, copied to the stage files, and read
//! back (the optimised HLO text, the buffer assignment, the memory usage report) into
//! `summary.txt`.
use crate::dump::{AFTER, AFTER_SPMD, BEFORE, STABLEHLO};
use crate::{bail, Error, Result};
use runtime::Mesh;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// `xla_dump_hlo_pass_re`: the passes of XLA's `spmd-partitioner` pipeline dumped after they
/// run (`shardy-xla` imports the Shardy shardings, `spmd-partitioning` splits the program).
pub const SPMD_PASS_RE: &str = "spmd-partitioning|shardy-xla";

/// The files XLA wrote for one module, by the names XLA 0.x gives them:
/// `module_NNNN.<name>.before_optimizations.txt`, `module_NNNN.<name>.<backend>_after_optimizations.txt`
/// and its `-buffer-assignment.txt` and `-memory-usage-report.txt`, and the pass dump
/// `module_NNNN.<name>.NNNN.spmd-partitioner.after_spmd-partitioning.before_<next pass>.txt`
/// (libtpu: `...xla-partitioner.after_tpu-spmd-partitioning...`).
pub struct XlaFiles {
    /// The HLO before optimisation.
    pub before: PathBuf,
    /// The HLO right after SPMD partitioning (None on one device).
    pub after_spmd: Option<PathBuf>,
    /// The optimised HLO.
    pub after: PathBuf,
    /// XLA's buffer assignment.
    pub buffers: PathBuf,
    /// XLA's memory usage report, where the plugin writes one.
    pub memory: Option<PathBuf>,
}

impl XlaFiles {
    /// The files of the last module XLA optimised in `dir`; `sharded`: the SPMD pass dump
    /// must be there too.
    pub fn find(dir: &Path, sharded: bool) -> Result<XlaFiles> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::from(e).context(format!("XLA wrote no dump to {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("module_") && n.ends_with(".txt"))
            .collect();
        names.sort();
        // The module of the program: the last one XLA optimised.
        let Some(after) = names.iter().rev().find(|n| n.ends_with("after_optimizations.txt")).cloned() else {
            bail!(
                "XLA wrote no module_*after_optimizations.txt to {} (its files: {}); this plugin may ignore the dump options",
                dir.display(),
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            );
        };
        let module = after.split('.').take(2).collect::<Vec<_>>().join(".") + ".";
        let stem = after.trim_end_matches(".txt");
        let find = |pred: &dyn Fn(&str) -> bool| names.iter().find(|n| n.starts_with(&module) && pred(n)).map(|n| dir.join(n));
        let missing =
            |what: &str| Error::Invalid(format!("XLA's dump in {} has no {what} for {}", dir.display(), module.trim_end_matches('.')));
        let before = find(&|n| n.ends_with(".before_optimizations.txt")).ok_or_else(|| missing("before_optimizations.txt"))?;
        let buffers = find(&|n| n == format!("{stem}-buffer-assignment.txt")).ok_or_else(|| missing("buffer-assignment.txt"))?;
        let memory = find(&|n| n == format!("{stem}-memory-usage-report.txt"));
        // The CPU and GPU compilers name the pass spmd-partitioning, libtpu tpu-spmd-partitioning.
        let after_spmd = find(&|n| n.contains(".after_spmd-partitioning.") || n.contains(".after_tpu-spmd-partitioning."));
        if sharded && after_spmd.is_none() {
            return Err(missing("spmd-partitioner.after_spmd-partitioning pass dump"));
        }
        Ok(XlaFiles { before, after_spmd, after: dir.join(after), buffers, memory })
    }
}

/// Copies the stages to `out` and returns the summary text.
pub fn write_stages(out: &Path, f: &XlaFiles, what: &str, mesh: &Mesh, fsdp: bool) -> Result<String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::from(e).context(format!("cannot read XLA's dump {}", p.display())));
    let before = read(&f.before)?;
    let after = read(&f.after)?;
    let buffers = read(&f.buffers)?;
    let memory = f.memory.as_deref().map(read).transpose()?;
    data::files::write_atomic(&out.join(BEFORE), before.as_bytes())?;
    data::files::write_atomic(&out.join(AFTER), after.as_bytes())?;
    if let Some(p) = &f.after_spmd {
        data::files::write_atomic(&out.join(AFTER_SPMD), read(p)?.as_bytes())?;
    }
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "program: {what}")?;
    writeln!(w, "mesh: {mesh}{} ({} device(s))", if fsdp { " fsdp" } else { "" }, mesh.num_devices())?;
    writeln!(w, "stages: {} (ours), {} <- xla/{}", STABLEHLO, BEFORE, name(&f.before))?;
    match &f.after_spmd {
        Some(p) => writeln!(w, "        {} <- xla/{}", AFTER_SPMD, name(p))?,
        None => writeln!(w, "        {}: none: one device, XLA runs no SPMD partitioning", AFTER_SPMD)?,
    }
    writeln!(w, "        {} <- xla/{}", AFTER, name(&f.after))?;

    let hlo = Hlo::parse(&after);
    let sources = source_map(&before);
    writeln!(w, "\nops after optimisation (outside fusion bodies and reducers): {}", hlo.top_level().count())?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for i in hlo.top_level() {
        *counts.entry(i.opcode.as_str()).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (op, n) in counts.iter().take(15) {
        writeln!(w, "  {n:>6} {op}")?;
    }
    if counts.len() > 15 {
        writeln!(w, "  ({} more opcodes)", counts.len() - 15)?;
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for i in hlo.top_level().filter(|i| i.opcode == "fusion") {
        *kinds.entry(attr(&i.line, "kind=").unwrap_or("?")).or_default() += 1;
    }
    let fusion_list: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    writeln!(
        w,
        "fusions: {} ({})",
        kinds.values().sum::<usize>(),
        if fusion_list.is_empty() { "none".into() } else { fusion_list.join(", ") }
    )?;

    let lines = collective_lines(&hlo, &sources, mesh);
    writeln!(w, "\ncollectives: {}", lines.len() / 2)?;
    for l in &lines {
        writeln!(w, "{l}")?;
    }

    writeln!(w, "\nlargest buffers (xla/{}):", name(&f.buffers))?;
    let assignment = Buffers::parse(&buffers);
    for v in assignment.largest(10) {
        writeln!(w, "  {:>12} {} {} ({})", bytes(v.size), v.shape, v.name, v.allocation)?;
    }
    writeln!(w, "\nmemory per device (XLA's buffer assignment: the sum of its allocations):")?;
    writeln!(w, "  total {}", bytes(assignment.total()))?;
    for (kind, n) in assignment.by_kind() {
        writeln!(w, "    {kind:<22} {}", bytes(n))?;
    }
    if let (Some(m), Some(p)) = (&memory, &f.memory) {
        if let Some(line) = m.lines().find(|l| l.starts_with("Total bytes:")) {
            writeln!(w, "  xla/{}: {}", name(p), line.trim())?;
        }
    }

    let located = Located::count(&hlo, &sources);
    writeln!(w, "\nsource locations (every instruction after optimisation, fusion bodies included):")?;
    writeln!(
        w,
        "  {} of {} instructions located: {} by their own source_file metadata, {} by op_name through {}{}",
        located.direct + located.via_op_name,
        located.total,
        located.direct,
        located.via_op_name,
        BEFORE,
        if located.via_op_name > 0 { " (XLA's Shardy round trip drops source_file/source_line and keeps op_name)" } else { "" }
    )?;
    for (loc, n) in located.top(12) {
        writeln!(w, "  {n:>6} {loc}")?;
    }
    Ok(s)
}

/// The collectives of an optimised HLO text (outside fusion bodies), two lines each as
/// `summary.txt` prints them: the op, its shape, the mesh axes it runs over and its groups;
/// then its op_name and source line (found through `before`, the HLO before optimisation).
pub fn collectives(after: &str, before: &str, mesh: &Mesh) -> Vec<String> {
    collective_lines(&Hlo::parse(after), &source_map(before), mesh)
}

fn collective_lines(hlo: &Hlo, sources: &HashMap<String, String>, mesh: &Mesh) -> Vec<String> {
    let mut out = Vec::new();
    for c in hlo.top_level().filter(|i| COLLECTIVES.contains(&i.opcode.as_str())) {
        let groups = attr(&c.line, "replica_groups=").or_else(|| attr(&c.line, "source_target_pairs="));
        let expanded = groups.and_then(|g| expand_groups(g).or_else(|| mesh_groups(g, mesh)));
        let over = expanded.as_ref().map(|g| axes_of(g, mesh)).unwrap_or_else(|| "?".into());
        out.push(format!(
            "  {} %{}: {} over {over}, replica_groups={}{}",
            c.opcode,
            c.name,
            c.shape,
            expanded.map(|g| format_groups(&g)).or(groups.map(str::to_string)).unwrap_or_else(|| "(all)".into()),
            attr(&c.line, "channel_id=").map(|id| format!(" channel_id={id}")).unwrap_or_default()
        ));
        let from = locate(c, sources).map(|l| format!(" at {l}")).unwrap_or_default();
        out.push(format!("      op_name={}{from}", op_name(&c.line).unwrap_or("-")));
    }
    out
}

pub(crate) const COLLECTIVES: [&str; 9] = [
    "all-reduce",
    "all-reduce-start",
    "all-gather",
    "all-gather-start",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-permute-start",
    "collective-broadcast",
];

/// One HLO instruction line.
pub(crate) struct Instr {
    pub(crate) computation: String,
    pub(crate) name: String,
    pub(crate) shape: String,
    pub(crate) opcode: String,
    pub(crate) line: String,
}

struct Hlo {
    instrs: Vec<Instr>,
    /// Computations called as fusion bodies or reducers.
    called: HashSet<String>,
}

impl Hlo {
    fn parse(text: &str) -> Hlo {
        let mut instrs = Vec::new();
        let mut called = HashSet::new();
        let mut computation = String::new();
        for line in text.lines() {
            if !line.starts_with(' ') {
                if let Some(rest) = line.strip_suffix('{') {
                    let head = rest.trim().trim_start_matches("ENTRY ").trim();
                    computation = head.split_whitespace().next().unwrap_or("").trim_start_matches('%').to_string();
                }
                continue;
            }
            let Some(i) = parse_instr(line.trim(), &computation) else { continue };
            for key in ["calls=", "to_apply="] {
                if let Some(v) = attr(line, key) {
                    called.extend(v.split(',').map(|c| c.trim().trim_start_matches('%').to_string()));
                }
            }
            instrs.push(i);
        }
        Hlo { instrs, called }
    }

    /// Instructions that run as such: not inside fusion bodies or reducers.
    fn top_level(&self) -> impl Iterator<Item = &Instr> {
        self.instrs.iter().filter(|i| !self.called.contains(&i.computation))
    }
}

/// What follows `name = ` in an instruction line, split into the result shape (a tuple's
/// parentheses, layouts such as `{:T(128)}` included) and the rest (`opcode(operands), ...`).
pub(crate) fn split_shape(rest: &str) -> Option<(&str, &str)> {
    if !rest.starts_with('(') {
        return rest.split_once(' ');
    }
    let mut depth = 0;
    let end = rest.char_indices().find_map(|(i, c)| {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        (depth == 0).then_some(i)
    })?;
    Some((&rest[..=end], rest[end + 1..].trim_start()))
}

/// `[ROOT ]%name = shape opcode(operands), attributes`.
pub(crate) fn parse_instr(line: &str, computation: &str) -> Option<Instr> {
    let line_body = line.strip_prefix("ROOT ").unwrap_or(line);
    let (name, rest) = line_body.split_once(" = ")?;
    let name = name.trim_start_matches('%').to_string();
    let (shape, rest) = split_shape(rest)?;
    let opcode = rest.split('(').next()?.trim().to_string();
    if opcode.is_empty() || opcode.contains(' ') {
        return None;
    }
    Some(Instr { computation: computation.to_string(), name, shape: strip_layout(shape), opcode, line: line.to_string() })
}

/// `f32[4,64]{1,0}` -> `f32[4,64]` (also inside tuples).
pub(crate) fn strip_layout(shape: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in shape.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The value of `key` in an instruction line (up to the next top-level `, ` ; braces,
/// brackets and quotes kept together).
pub(crate) fn attr<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}")).map(|i| i + 1).or_else(|| line.find(&format!(",{key}")).map(|i| i + 1))? + key.len();
    let rest = &line[start..];
    let (mut depth, mut quoted) = (0i32, false);
    for (i, c) in rest.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' | '[' | '(' if !quoted => depth += 1,
            '}' | ']' | ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
        if depth < 0 {
            return Some(&rest[..i]);
        }
    }
    Some(rest)
}

pub(crate) fn op_name(line: &str) -> Option<&str> {
    let meta = attr(line, "metadata=")?;
    let start = meta.find("op_name=\"")? + 9;
    meta[start..].split('"').next()
}

fn own_source(line: &str) -> Option<String> {
    let meta = attr(line, "metadata=")?;
    let file = meta.split("source_file=\"").nth(1)?.split('"').next()?;
    let line_no = meta.split("source_line=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?;
    (file != "-" && !file.is_empty()).then(|| format!("{file}:{line_no}"))
}

/// Instruction name -> `file:line` in the HLO before optimisation (where our locations are).
fn source_map(before: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for line in before.lines().filter(|l| l.starts_with(' ')) {
        if let (Some(i), Some(loc)) = (parse_instr(line.trim(), ""), own_source(line)) {
            m.insert(i.name, loc);
        }
    }
    m
}

/// The source of an optimised instruction: its own metadata, else the instruction its
/// op_name names before optimisation (the first of a combined `(a:b:c)`).
fn locate(i: &Instr, sources: &HashMap<String, String>) -> Option<String> {
    own_source(&i.line).or_else(|| {
        let names = op_name(&i.line)?.trim_start_matches('(').trim_end_matches(')');
        names.split(':').find_map(|n| sources.get(n).cloned())
    })
}

struct Located {
    total: usize,
    direct: usize,
    via_op_name: usize,
    counts: HashMap<String, usize>,
}

impl Located {
    fn count(hlo: &Hlo, sources: &HashMap<String, String>) -> Located {
        let mut l = Located { total: 0, direct: 0, via_op_name: 0, counts: HashMap::new() };
        for i in hlo.instrs.iter().filter(|i| !matches!(i.opcode.as_str(), "parameter" | "tuple" | "get-tuple-element")) {
            l.total += 1;
            let loc = match own_source(&i.line) {
                Some(loc) => {
                    l.direct += 1;
                    loc
                }
                None => match locate(i, sources) {
                    Some(loc) => {
                        l.via_op_name += 1;
                        loc
                    }
                    None => continue,
                },
            };
            *l.counts.entry(loc).or_default() += 1;
        }
        l
    }

    fn top(&self, n: usize) -> Vec<(&str, usize)> {
        let mut v: Vec<(&str, usize)> = self.counts.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }
}

/// `{{0,1},{2,3}}`, or the iota form `[G,S]<=[d0,d1,...]` with an optional `T(perm)`.
pub(crate) fn expand_groups(text: &str) -> Option<Vec<Vec<i64>>> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (shape, rest) = rest.split_once("]<=[")?;
        let (dims, perm) = rest.split_once(']')?;
        let shape: Vec<usize> = shape.split(',').map(|d| d.trim().parse().ok()).collect::<Option<_>>()?;
        let dims: Vec<usize> = dims.split(',').map(|d| d.trim().parse().ok()).collect::<Option<_>>()?;
        let perm: Vec<usize> = match perm.strip_prefix("T(").and_then(|p| p.strip_suffix(')')) {
            Some(p) => p.split(',').map(|d| d.trim().parse().ok()).collect::<Option<_>>()?,
            None => (0..dims.len()).collect(),
        };
        let n: usize = dims.iter().product();
        if shape.len() != 2 || shape[0] * shape[1] != n || perm.len() != dims.len() {
            return None;
        }
        // Element j of the transposed array: its index in the transposed dims, mapped back.
        let tdims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let ids: Vec<i64> = (0..n)
            .map(|mut j| {
                let mut idx = vec![0; dims.len()];
                for k in (0..tdims.len()).rev() {
                    idx[perm[k]] = j % tdims[k];
                    j /= tdims[k];
                }
                idx.iter().zip(&dims).fold(0, |acc, (&i, &d)| acc * d + i) as i64
            })
            .collect();
        return Some(ids.chunks(shape[1]).map(<[i64]>::to_vec).collect());
    }
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let groups: Vec<Vec<i64>> = inner
        .split('}')
        .map(|g| g.trim_start_matches(',').trim_start_matches('{'))
        .filter(|g| !g.is_empty())
        .map(|g| g.split(',').map(|d| d.trim().parse().ok()).collect::<Option<_>>())
        .collect::<Option<_>>()?;
    Some(groups)
}

/// XLA's mesh form `mesh['axis_0'=2,'axis_1'=2] {'axis_1'}`: the devices that differ only
/// along the listed axes, every axis when none are listed (`mesh['axis_0'=4]`: one group of
/// all). XLA's axis_k is the k-th axis of our mesh when the sizes agree, or the k-th of our
/// axes longer than 1 (XLA leaves out axes of size 1).
pub(crate) fn mesh_groups(text: &str, mesh: &Mesh) -> Option<Vec<Vec<i64>>> {
    let rest = text.trim().strip_prefix("mesh[")?;
    let (axes, listed) = rest.split_once(']')?;
    let sizes: Vec<(String, i64)> = axes
        .split(',')
        .map(|a| {
            let (n, s) = a.split_once('=')?;
            Some((n.trim().trim_matches('\'').to_string(), s.trim().parse().ok()?))
        })
        .collect::<Option<_>>()?;
    let ours = mesh.axes();
    let same = |picked: &[usize]| picked.len() == sizes.len() && picked.iter().zip(&sizes).all(|(&k, (_, n))| ours[k].1 == *n);
    let all: Vec<usize> = (0..ours.len()).collect();
    let longer: Vec<usize> = (0..ours.len()).filter(|&k| ours[k].1 > 1).collect();
    let to_ours = if same(&all) {
        all
    } else if same(&longer) {
        longer
    } else {
        return None;
    };
    let listed = listed.trim();
    let listed: Vec<usize> = if listed.is_empty() {
        to_ours.clone()
    } else {
        listed
            .trim_start_matches('{')
            .trim_end_matches('}')
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(|a| sizes.iter().position(|(n, _)| n == a.trim().trim_matches('\'')).map(|i| to_ours[i]))
            .collect::<Option<_>>()?
    };
    let mut groups: BTreeMap<Vec<i64>, Vec<i64>> = BTreeMap::new();
    for d in 0..mesh.num_devices() {
        let key: Vec<i64> = mesh.coords(d).iter().enumerate().filter(|(k, _)| !listed.contains(k)).map(|(_, c)| *c).collect();
        groups.entry(key).or_default().push(d);
    }
    Some(groups.into_values().collect())
}

fn format_groups(groups: &[Vec<i64>]) -> String {
    let inner: Vec<String> = groups.iter().map(|g| format!("{{{}}}", g.iter().map(i64::to_string).collect::<Vec<_>>().join(","))).collect();
    format!("{{{}}}", inner.join(","))
}

/// The mesh axes whose coordinate changes within the groups (device i of the mesh is
/// partition i).
pub(crate) fn axes_of(groups: &[Vec<i64>], mesh: &Mesh) -> String {
    let mut axes: Vec<&str> = Vec::new();
    for (k, (axis, _)) in mesh.axes().iter().enumerate() {
        if groups.iter().any(|g| g.iter().any(|&d| d < mesh.num_devices() && mesh.coords(d)[k] != mesh.coords(g[0])[k])) {
            axes.push(axis);
        }
    }
    if axes.is_empty() {
        "no axis".into()
    } else {
        axes.join("+")
    }
}

struct Value {
    name: String,
    size: u64,
    shape: String,
    allocation: String,
}

/// XLA's `BufferAssignment:` text: `allocation N: size S, <kind>...` followed by its
/// ` value: <id name @0> (size=..,offset=..): shape` lines.
struct Buffers {
    allocations: Vec<(u64, String)>,
    values: Vec<Value>,
}

impl Buffers {
    fn parse(text: &str) -> Buffers {
        let mut b = Buffers { allocations: Vec::new(), values: Vec::new() };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("allocation ") {
                let Some((_, rest)) = rest.split_once(": size ") else { continue };
                let mut parts = rest.splitn(3, ", ");
                let size = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let _page = parts.next();
                let kind = parts.next().unwrap_or("").split(['|', ':']).next().unwrap_or("").trim().trim_end_matches(", shape").to_string();
                b.allocations.push((size, kind));
            } else if let Some(rest) = line.strip_prefix(" value: <") {
                let Some((head, tail)) = rest.split_once("> (size=") else { continue };
                let name = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let size = tail.split(',').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let shape = strip_layout(tail.split_once("): ").map_or("", |(_, s)| s));
                let allocation = b.allocations.last().map(|(_, k)| k.clone()).unwrap_or_default();
                b.values.push(Value { name, size, shape, allocation });
            }
        }
        b
    }

    fn total(&self) -> u64 {
        self.allocations.iter().map(|(s, _)| s).sum()
    }

    /// Bytes by allocation kind (parameter, output, preallocated-temp, constant, thread-local).
    fn by_kind(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (size, kind) in &self.allocations {
            let k = kind.split([' ', ',']).next().unwrap_or("other");
            let k = if k.is_empty() { "other" } else { k };
            *m.entry(k.to_string()).or_default() += size;
        }
        m
    }

    fn largest(&self, n: usize) -> Vec<&Value> {
        let mut seen = HashSet::new();
        let mut v: Vec<&Value> = self.values.iter().filter(|v| seen.insert(v.name.as_str())).collect();
        v.sort_by(|a, b| b.size.cmp(&a.size).then(a.name.cmp(&b.name)));
        v.truncate(n);
        v
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iota_replica_groups_expand_to_device_lists() {
        assert_eq!(expand_groups("[2,2]<=[4]"), Some(vec![vec![0, 1], vec![2, 3]]));
        assert_eq!(expand_groups("[2,2]<=[2,2]T(1,0)"), Some(vec![vec![0, 2], vec![1, 3]]));
        assert_eq!(expand_groups("{{0,2},{1,3}}"), Some(vec![vec![0, 2], vec![1, 3]]));
        let mesh = Mesh::parse("data=2,model=2").unwrap();
        assert_eq!(axes_of(&[vec![0, 1], vec![2, 3]], &mesh), "model");
        assert_eq!(axes_of(&[vec![0, 2], vec![1, 3]], &mesh), "data");
        assert_eq!(axes_of(&[vec![0, 1, 2, 3]], &mesh), "data+model");
        assert_eq!(mesh_groups("mesh['axis_0'=2,'axis_1'=2] {'axis_0'}", &mesh), Some(vec![vec![0, 2], vec![1, 3]]));
        assert_eq!(mesh_groups("mesh['axis_0'=2,'axis_1'=2] {'axis_1'}", &mesh), Some(vec![vec![0, 1], vec![2, 3]]));
        // No axes listed: one group of every device.
        assert_eq!(mesh_groups("mesh['axis_0'=2,'axis_1'=2]", &mesh), Some(vec![vec![0, 1, 2, 3]]));
        // XLA leaves out our axes of size 1: its axis_0 is our data=4.
        let fsdp = Mesh::parse("data=4,model=1").unwrap();
        let groups = mesh_groups("mesh['axis_0'=4]", &fsdp).unwrap();
        assert_eq!((groups.clone(), axes_of(&groups, &fsdp)), (vec![vec![0, 1, 2, 3]], "data".to_string()));
        let tp = Mesh::parse("data=1,model=2").unwrap();
        assert_eq!(axes_of(&mesh_groups("mesh['axis_0'=2] {'axis_0'}", &tp).unwrap(), &tp), "model");
        assert_eq!(mesh_groups("mesh['axis_0'=3]", &fsdp), None, "sizes that match no axes");
        let line = "%ag = bf16[8]{0} all-gather(%x), channel_id=1, replica_groups=mesh['axis_0'=4], dimensions={0}";
        assert_eq!(attr(line, "replica_groups="), Some("mesh['axis_0'=4]"));
    }

    #[test]
    fn instructions_and_attributes_parse() {
        let line = "%all-reduce = (f32[4]{0}, f32[]) all-reduce(%a, %b), channel_id=5, replica_groups=[2,2]<=[4], \
                    to_apply=%add, metadata={op_name=\"(dot.1:dot.2)\"}";
        let i = parse_instr(line, "main").unwrap();
        assert_eq!((i.name.as_str(), i.shape.as_str(), i.opcode.as_str()), ("all-reduce", "(f32[4], f32[])", "all-reduce"));
        assert_eq!(attr(line, "replica_groups="), Some("[2,2]<=[4]"));
        assert_eq!(attr(line, "channel_id="), Some("5"));
        assert_eq!(op_name(line), Some("(dot.1:dot.2)"));
        let sources = HashMap::from([("dot.2".to_string(), "a.rs:3".to_string())]);
        assert_eq!(locate(&i, &sources).as_deref(), Some("a.rs:3"));
        let own = "%x = f32[] add(%a, %b), metadata={source_file=\"m.rs\" source_line=12 source_end_line=12}";
        assert_eq!(own_source(own).as_deref(), Some("m.rs:12"));
    }
}
