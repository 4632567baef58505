//! What compiling ahead of time for a TPU v5e slice tells: XLA's out-of-memory refusals read
//! back, plan's advice for a program that does not fit, the mesh laid over the hosts, the
//! collectives grouped by kind and axes, and the FLOP count a train step should have.
use crate::plan;
use crate::{human_bytes, Result};
use gemma::rules;
use graph::Remat;
use runtime::{Mesh, Topology};
use train::Setup;

/// HBM per TPU v5e chip (public figure).
pub const V5E_HBM: u64 = 16 << 30;
/// Peak bf16 FLOP/s per TPU v5e chip (public figure).
pub const V5E_PEAK_FLOPS: f64 = 197e12;

/// Counts of summary.txt's collective lines by opcode and mesh axes, in order of first
/// appearance, each with its first op's name and shape as an example.
pub fn group_collectives(lines: &[String]) -> Vec<(usize, String, String)> {
    let mut groups: Vec<(usize, String, String)> = Vec::new();
    for l in lines.iter().step_by(2) {
        let l = l.trim_start();
        let (Some((op, rest)), Some(over)) = (l.split_once(' '), l.rfind(" over ")) else { continue };
        let axes = l[over + 6..].split(", replica_groups").next().unwrap_or("?");
        let kind = format!("{op} over {axes}");
        let (name, shape) = rest[..over.saturating_sub(op.len() + 1).min(rest.len())].split_once(": ").unwrap_or((rest, ""));
        let shape = if shape.len() > 60 { format!("a tuple of {} arrays", shape.matches('[').count()) } else { shape.to_string() };
        match groups.iter_mut().find(|g| g.1 == kind) {
            Some(g) => g.0 += 1,
            None => groups.push((1, kind, format!("{name}: {shape}"))),
        }
    }
    groups
}

/// The two figures of XLA's TPU out-of-memory refusal ("... the total memory required for HLO
/// temporaries (17.16G) exceeds available HBM (15.75G) ..."), when `text` is one.
pub fn hbm_oom(text: &str) -> Option<(String, String)> {
    if !text.contains("CompileTimeHbmOom") && !text.contains("Ran out of memory on HBM") {
        return None;
    }
    let needed = text.split_once("required for ")?.1.split_once('(')?.1.split_once(')')?.0;
    let available = text.split_once("available HBM (")?.1.split_once(')')?.0;
    Some((needed.to_string(), available.to_string()))
}

/// Why program `what` (needing `used` bytes per chip) does not fit a v5e chip, and the
/// meshes to try; `c` is the compute dtype's bytes.
pub fn does_not_fit(what: &str, setup: &Setup, c: u64, remat: Remat, chips: usize, used: u64) -> Result<String> {
    Ok(format!(
        "{} does not fit a v5e chip: it needs {} per chip, {} more than its {} HBM{}",
        what,
        human_bytes(used),
        human_bytes(used - V5E_HBM),
        human_bytes(V5E_HBM),
        fit_advice(setup, c, remat, chips)?
    ))
}

/// `c` is the compute dtype's bytes. The text:
/// `. gemma-xla plan's estimate per chip: ...; X dominate (...). Meshes plan estimates to fit
/// at this batch: ...` (or why none does), for a program that does not fit.
pub fn fit_advice(setup: &Setup, c: u64, remat: Remat, chips: usize) -> Result<String> {
    let (cfg, batch, seq) = (&setup.cfg, setup.batch as i64, setup.seq as i64);
    let mut s = String::new();
    let step = |fsdp| plan::Step { fsdp, batch, seq, c, remat };
    let est = plan::estimate(cfg, &setup.mesh, &step(setup.fsdp))?;
    let parts = [
        ("weights (compute copy, f32 master, gradients, FSDP gathers)", est.weights + est.master_weights + est.gradients + est.fsdp_gather),
        ("optimizer state (AdamW m and v)", est.adam_m + est.adam_v),
        ("activations", est.activations),
    ];
    let (name, most) = parts.iter().max_by_key(|(_, b)| *b).map(|(n, b)| (*n, *b)).unwrap_or(("?", 0));
    s += &format!(
        ". gemma-xla plan's estimate per chip: {}; {name} dominate ({})",
        parts.iter().map(|(n, b)| format!("{n} {}", human_bytes(*b))).collect::<Vec<_>>().join(", "),
        human_bytes(most)
    );
    let fits: Vec<String> = [setup.fsdp, true]
        .iter()
        .flat_map(|&fsdp| rules::working_meshes(cfg, chips as i64, fsdp).into_iter().map(move |m| (m, fsdp)))
        .filter_map(|(m, fsdp)| {
            let t = plan::estimate(cfg, &m, &step(fsdp)).ok()?.total();
            (t <= V5E_HBM && rules::check_batch(batch, &m).is_ok())
                .then(|| format!("{m}{} ({})", if fsdp { " --fsdp" } else { "" }, human_bytes(t)))
        })
        .collect();
    let mut unique = fits.clone();
    unique.dedup();
    if unique.is_empty() {
        s += &format!(
            ". No data,model mesh of {chips} chips fits by plan's estimate at batch {batch} x seq {seq}; {}. Use a larger slice or a smaller batch",
            rules::suggest_meshes(cfg, chips as i64, true)
        );
    } else {
        s += &format!(". Meshes plan estimates to fit at this batch: {}", unique.join(", "));
    }
    Ok(s)
}

/// `[0,1,2,3 | 4,5,6,7]`: the mesh's device ids in mesh order, `|` between hosts.
pub fn layout_text(topo: &Topology, mesh: &Mesh, ids: &[i64]) -> String {
    let process = |id: i64| topo.devices().iter().find(|d| i64::from(d.id) == id).map_or(-1, |d| d.process_index);
    let mut s = String::from("[");
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 {
            s += if process(ids[i - 1]) != process(id) { " | " } else { "," };
        }
        if ids.len() > 32 && i == 16 {
            s += &format!("... ({} more)", ids.len() - 16);
            break;
        }
        s += &id.to_string();
    }
    let model = mesh.axis_size("model").unwrap_or(1) as usize;
    let per_host = ids.len() / topo.num_processes().max(1);
    let within = model <= per_host && per_host.checked_rem(model) == Some(0);
    format!("{s}] (model={model} {} a host's {per_host} chips)", if within { "inside" } else { "spans more than" })
}

/// Training FLOPs per token by the usual count: 6 per parameter (forward 2, backward 4; the
/// tied embedding counted once, as the unembedding matmul) plus attention's scores and
/// weighted sum, 12 x layers x seq x heads x head_dim (causal masking not discounted).
pub fn expected_train_flops(cfg: &gemma::Config, seq: f64) -> f64 {
    let attention = 12.0 * cfg.num_hidden_layers as f64 * seq * (cfg.num_attention_heads * cfg.head_dim) as f64;
    6.0 * rules::param_count(cfg) as f64 + attention
}

/// `1.25 s`, `3.10 ms`, `12.00 us`.
pub fn seconds_text(s: f64) -> String {
    match s {
        s if s >= 1.0 => format!("{s:.2} s"),
        s if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        s => format!("{:.2} us", s * 1e6),
    }
}

/// `1.234 TFLOP`: a FLOP count in decimal units.
pub fn flops_text(f: f64) -> String {
    let units = [(1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")];
    match units.iter().find(|(u, _)| f >= *u) {
        Some((u, name)) => format!("{:.3} {name}", f / u),
        None => format!("{f:.0} FLOP"),
    }
}

#[cfg(test)]
mod tests {
    use super::hbm_oom;

    #[test]
    fn reads_xla_tpu_out_of_memory_refusals() {
        // As libtpu 0.0.52 words it (7B, v5e:2x4, data=2,model=4 --fsdp --remat full, batch 8 x 2048).
        let text = "compiling train-step for v5e:2x4: PJRT_Compile failed with RESOURCE_EXHAUSTED (8): E1000: CompileTimeHbmOom: \
                    Ran out of memory on HBM, the total memory required for HLO temporaries (17.16G) exceeds available HBM \
                    (15.75G). HLO module: train_step.";
        assert_eq!(hbm_oom(text), Some(("17.16G".to_string(), "15.75G".to_string())));
        assert_eq!(hbm_oom("PJRT_Compile failed with INVALID_ARGUMENT (3): bad mesh"), None);
        // Recognised but not in the expected words: no figures, the error stays XLA's own.
        assert_eq!(hbm_oom("CompileTimeHbmOom: something else"), None);
    }
}
