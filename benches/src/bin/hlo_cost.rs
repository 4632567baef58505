//! One step of an optimised HLO text counted as `gemma-xla compile` counts it
//! (`inspect::cost::step_cost`): while loops and trip counts, matmul FLOPs per chip with and
//! without the trips, and collectives by kind with bytes per chip. Used by benches/compile.sh
//! on both our program and JAX's.
//!
//! hlo_cost HLO.txt MESH [--each]   (MESH e.g. data=2,model=2) prints one JSON line; with
//! `--each`, then one line per collective instruction: runs, op, axes, bytes per run, name,
//! computation and op_name, most bytes first.
use anyhow::{Context, Result};

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(mesh)) = (a.first(), a.get(1)) else { anyhow::bail!("usage: hlo_cost HLO.txt MESH") };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let mesh = runtime::Mesh::parse(mesh)?;
    let c = inspect::cost::step_cost(&text, &mesh);
    let loops: Vec<String> = c.loops.iter().map(|l| l.trips.map_or("null".to_string(), |n| n.to_string())).collect();
    let coll: Vec<String> = c
        .collectives
        .iter()
        .map(|k| {
            format!(
                "{{\"op\": \"{}\", \"axes\": \"{}\", \"instructions\": {}, \"runs\": {}, \"bytes\": {}, \"sent\": {}}}",
                k.op, k.axes, k.instructions, k.runs, k.bytes, k.sent
            )
        })
        .collect();
    println!(
        "{{\"loops\": [{}], \"matmul_flops\": {}, \"matmul_flops_once\": {}, \"sent\": {}, \"collectives\": [{}]}}",
        loops.join(", "),
        c.matmul_flops,
        c.matmul_flops_once,
        c.sent(),
        coll.join(", ")
    );
    if a.iter().any(|x| x == "--each") {
        let mut each = c.instances.clone();
        each.sort_by_key(|i| std::cmp::Reverse(i.runs * i.bytes));
        for i in each {
            println!("{:>6} {} over {} {} B {} in {} ({})", i.runs, i.op, i.axes, i.bytes, i.name, i.computation, i.op_name);
        }
    }
    Ok(())
}
