//! What a run reports: `OUT/metrics.jsonl` (one object per logged step), a progress bar on a
//! terminal (plain lines otherwise), `OUT/loss.svg` (labelled loss and learning-rate curves),
//! `OUT/loss.png` (the loss curve alone) and a one-screen summary at the end.
use anyhow::{Context, Result};
use data::Dataset;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use train::{Setup, StepMetrics};

pub(crate) struct Log {
    out: PathBuf,
    file: std::fs::File,
    bar: Option<ProgressBar>,
    started: Instant,
    /// Time and step of the previous record, for tokens/s.
    last: (Instant, u64),
    /// (step, loss) of every logged step, earlier runs of a resumed training included.
    losses: Vec<(u64, f64)>,
    /// (step, learning rate) of the same steps.
    lrs: Vec<(u64, f64)>,
    tokens_per_s: Vec<f64>,
    steps: u64,
    /// `OUT/tensorboard/events.out.tfevents.*`: the same scalars for TensorBoard.
    events: data::tensorboard::EventWriter,
}

impl Log {
    pub(crate) fn open(out: &Path, start: u64, steps: u64, resumed: Option<&Path>, setup: &Setup, data: &Dataset) -> Result<Log> {
        let path = out.join("metrics.jsonl");
        // A resumed run keeps the lines up to its checkpoint and drops any logged after it.
        let mut losses = Vec::new();
        let mut lrs = Vec::new();
        let mut kept = String::new();
        if resumed.is_some() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let (Some(s), Some(l)) = (v.get("step").and_then(|s| s.as_u64()), v.get("loss").and_then(|l| l.as_f64())) else { continue };
                if s <= start {
                    kept += line;
                    kept.push('\n');
                    losses.push((s, l));
                    if let Some(lr) = v.get("lr").and_then(|l| l.as_f64()) {
                        lrs.push((s, lr));
                    }
                }
            }
        }
        gemma::write_atomic(&path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let count = |shapes: Vec<(String, Vec<i64>)>| -> i64 { shapes.iter().map(|(_, d)| d.iter().product::<i64>()).sum() };
        let what = match &setup.lora {
            Some(l) => format!(
                "{} LoRA parameters (rank {}, alpha {}, {}; {} frozen)",
                count(setup.trainable()),
                l.rank,
                l.alpha,
                l.targets.join(","),
                count(gemma::param_shapes(&setup.cfg))
            ),
            None => format!("{} parameters", count(setup.trainable())),
        };
        eprintln!(
            "training {what} on {} | mesh {}{} | batch {} x seq {} | steps {}..{steps}{}",
            data.describe(),
            setup.mesh,
            if setup.fsdp { " (fsdp)" } else { "" },
            setup.batch,
            setup.seq,
            start + 1,
            resumed.map_or(String::new(), |p| format!(" | resumed from {}", p.display()))
        );
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(steps);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(start);
            bar
        });
        // A new events file per run (a resumed run adds one beside the earlier ones).
        let events = data::tensorboard::EventWriter::create(&out.join("tensorboard"))?;
        let now = Instant::now();
        Ok(Log {
            out: out.to_path_buf(),
            file,
            bar,
            started: now,
            last: (now, start),
            losses,
            lrs,
            tokens_per_s: Vec::new(),
            steps,
            events,
        })
    }

    /// A step that is not logged: only the bar moves.
    pub(crate) fn tick(&self, step: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
        }
    }

    /// Fetches the step's metrics (three scalars) and writes them.
    pub(crate) fn record(&mut self, metrics: &StepMetrics, tokens_per_step: usize) -> Result<()> {
        let step = metrics.step;
        let (loss, grad_norm, lr) = (metrics.loss()?, metrics.grad_norm()?, metrics.lr()?);
        let now = Instant::now();
        let secs = now.duration_since(self.last.0).as_secs_f64().max(1e-9);
        let tokens_per_s = (step - self.last.1) as f64 * tokens_per_step as f64 / secs;
        self.last = (now, step);
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let line = serde_json::json!({
            "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s, "elapsed_s": elapsed,
        });
        writeln!(self.file, "{line}").with_context(|| format!("cannot write {}", self.out.join("metrics.jsonl").display()))?;
        self.events.scalars(step as i64, &[("loss", loss), ("lr", lr), ("grad_norm", grad_norm), ("tokens_per_s", tokens_per_s)])?;
        self.losses.push((step, loss));
        self.lrs.push((step, lr));
        self.tokens_per_s.push(tokens_per_s);
        let text = format!("loss {loss:.4} grad_norm {grad_norm:.3} lr {lr:.2e} tokens/s {tokens_per_s:.0}");
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(text);
            }
            None => eprintln!("step {step}/{} {text}", self.steps),
        }
        Ok(())
    }

    /// Flushes the metrics, draws loss.png and prints the summary.
    pub(crate) fn finish(&mut self, interrupted: bool) -> Result<()> {
        self.file.sync_all().with_context(|| format!("cannot write {}", self.out.join("metrics.jsonl").display()))?;
        self.events.sync()?;
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let png = self.out.join("loss.png");
        if let Err(e) = plot(&png, &self.losses) {
            eprintln!("warning: cannot draw {}: {e:#}", png.display());
        }
        let svg = self.out.join("loss.svg");
        if let Err(e) = plot_svg(&self.losses, &self.lrs).and_then(|text| Ok(gemma::write_atomic(&svg, text.as_bytes())?)) {
            eprintln!("warning: cannot draw {}: {e:#}", svg.display());
        }
        let first = self.losses.first().map_or(f64::NAN, |l| l.1);
        let (step, last) = self.losses.last().copied().unwrap_or((0, f64::NAN));
        let best = self.losses.iter().map(|l| l.1).fold(f64::INFINITY, f64::min);
        let mean_tps = self.tokens_per_s.iter().sum::<f64>() / self.tokens_per_s.len().max(1) as f64;
        println!("{} at step {step}: loss {first:.4} -> {last:.4} (best {best:.4})", if interrupted { "stopped" } else { "done" });
        println!("time {:.1} s, {mean_tps:.0} tokens/s on average", self.started.elapsed().as_secs_f64());
        println!(
            "wrote {}, {}, {}, {}",
            self.out.join("metrics.jsonl").display(),
            svg.display(),
            png.display(),
            self.out.join("checkpoints").display()
        );
        Ok(())
    }
}

/// The loss curve as a PNG: loss against step, drawn without text (no fonts needed; loss.svg
/// has the labels). Drawn into a temporary file beside `path`, then renamed over it.
fn plot(path: &Path, losses: &[(u64, f64)]) -> Result<()> {
    let tmp =
        path.with_file_name(format!(".{}.tmp-{}.png", path.file_name().map_or("plot".into(), |n| n.to_string_lossy()), std::process::id()));
    let drawn = draw_png(&tmp, losses).and_then(|()| {
        if tmp.exists() {
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        }
        Ok(())
    });
    if drawn.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drawn
}

/// The loss (left axis) and learning rate (right axis) against step as SVG, with a title,
/// axis labels and tick numbers (SVG text: no font is needed to write it).
pub(crate) fn plot_svg(losses: &[(u64, f64)], lrs: &[(u64, f64)]) -> Result<String> {
    use plotters::prelude::*;
    let e = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let finite = |v: &[(u64, f64)]| v.iter().copied().filter(|p| p.1.is_finite()).collect::<Vec<_>>();
        let (losses, lrs) = (finite(losses), finite(lrs));
        let x0 = losses.first().map_or(0.0, |l| l.0 as f64);
        let x1 = losses.last().map_or(1.0, |l| l.0 as f64).max(x0 + 1.0);
        let range = |v: &[(u64, f64)]| {
            let lo = v.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let hi = v.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            if lo.is_finite() && hi.is_finite() {
                let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-6).max(1e-12);
                (lo - pad)..(hi + pad)
            } else {
                0.0..1.0
            }
        };
        let mut chart = ChartBuilder::on(&root)
            .caption("training loss and learning rate", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .right_y_label_area_size(72)
            .build_cartesian_2d(x0..x1, range(&losses))
            .map_err(e)?
            .set_secondary_coord(x0..x1, range(&lrs));
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .draw()
            .map_err(e)?;
        chart.configure_secondary_axes().y_desc("learning rate").y_label_formatter(&|y| format!("{y:.1e}")).draw().map_err(e)?;
        chart
            .draw_series(LineSeries::new(losses.iter().map(|&(s, l)| (s as f64, l)), &BLUE))
            .map_err(e)?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_secondary_series(LineSeries::new(lrs.iter().map(|&(s, l)| (s as f64, l)), &RED))
            .map_err(e)?
            .label("learning rate")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(text)
}

fn draw_png(path: &Path, losses: &[(u64, f64)]) -> Result<()> {
    use plotters::prelude::*;
    if losses.len() < 2 {
        return Ok(());
    }
    let (x0, x1) = (losses[0].0 as f64, losses[losses.len() - 1].0 as f64);
    let lo = losses.iter().map(|l| l.1).fold(f64::INFINITY, f64::min);
    let hi = losses.iter().map(|l| l.1).fold(f64::NEG_INFINITY, f64::max);
    let root = BitMapBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), lo..hi.max(lo + 1e-6))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_mesh().x_labels(0).y_labels(0).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.draw_series(LineSeries::new(losses.iter().map(|&(s, l)| (s as f64, l)), &BLUE)).map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_svg_plot_has_a_title_axis_labels_and_tick_numbers() {
        let losses: Vec<(u64, f64)> = (1..=40).map(|s| (s, 5.0 / (s as f64).sqrt())).collect();
        let lrs: Vec<(u64, f64)> = (1..=40).map(|s| (s, 3e-3 * (s as f64 / 40.0))).collect();
        let svg = super::plot_svg(&losses, &lrs).unwrap();
        let texts: Vec<&str> =
            svg.split("<text").skip(1).map(|t| t.split('>').nth(1).unwrap_or("").split('<').next().unwrap_or("").trim()).collect();
        for want in ["training loss and learning rate", "step", "loss", "learning rate"] {
            assert!(texts.contains(&want), "no {want:?} label among {texts:?}");
        }
        // Tick numbers on the step axis and on both value axes.
        assert!(texts.iter().any(|t| *t == "40" || *t == "35"), "{texts:?}");
        assert!(
            texts.iter().filter(|t| t.parse::<f64>().is_ok_and(|v| (0.5..6.0).contains(&v)) && t.contains('.')).count() >= 3,
            "{texts:?}"
        );
        assert!(texts.iter().filter(|t| t.contains("e-")).count() >= 3, "{texts:?}");
        // Two curves.
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
    }
}
