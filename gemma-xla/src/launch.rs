//! `gemma-xla launch`: one command on the user's machine runs `gemma-xla train ...` on every
//! worker (host) of a Cloud TPU VM slice through `gcloud compute tpus tpu-vm ssh`, as
//! MaxText's multihost runner does: it asks gcloud for the workers and host 0's internal
//! address, checks that the binary is on every worker (`--worker=all`), then starts one ssh
//! per worker with the run's environment (`GEMMA_XLA_PROCESS_ID`, `GEMMA_XLA_NUM_PROCESSES`,
//! `GEMMA_XLA_COORDINATOR`, a fresh `GEMMA_XLA_RUN_TOKEN`), prints each worker's lines
//! prefixed by its index, and fails if any worker fails.
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// The TPU VM (slice) name
    #[arg(long, value_name = "NAME")]
    tpu: String,
    /// Its zone (us-west4-a, ...)
    #[arg(long, value_name = "ZONE")]
    zone: String,
    /// The Google Cloud project [default: gcloud's configured one]
    #[arg(long, value_name = "P")]
    project: Option<String>,
    /// Print the gcloud commands instead of running them (the read-only `describe` that
    /// finds the workers still runs)
    #[arg(long)]
    dry_run: bool,
    /// The gemma-xla binary on the workers (a path, or a name on their PATH)
    #[arg(long, value_name = "PATH", default_value = "gemma-xla")]
    binary: String,
    /// The directory the command runs in on every worker [default: the ssh login directory]
    #[arg(long, value_name = "DIR")]
    workdir: Option<String>,
    /// The port of host 0's coordination service
    #[arg(long, default_value_t = coord::DEFAULT_PORT)]
    port: u16,
    /// The gemma-xla command to run on every worker, after `--` (train ...)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The Cloud SDK's command, found on PATH.
const GCLOUD: &str = "gcloud";

/// `text` quoted for a POSIX shell.
fn quote(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn show(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string()).chain(args.iter().map(|a| quote(a))).collect::<Vec<_>>().join(" ")
}

impl LaunchArgs {
    /// `gcloud compute tpus tpu-vm <verb> NAME --zone Z [--project P]`.
    fn gcloud(&self, verb: &str) -> Vec<String> {
        let mut a: Vec<String> =
            ["compute", "tpus", "tpu-vm", verb, &self.tpu, "--zone", &self.zone].iter().map(|s| s.to_string()).collect();
        if let Some(p) = &self.project {
            a.extend(["--project".to_string(), p.clone()]);
        }
        a
    }
}

/// The workers' internal addresses, in worker order, from `gcloud ... describe --format=json`.
fn workers(describe: &str) -> Result<Vec<String>> {
    let j: serde_json::Value = serde_json::from_str(describe).context("gcloud describe did not print JSON")?;
    let endpoints = j.get("networkEndpoints").and_then(|e| e.as_array()).context("gcloud describe lists no networkEndpoints")?;
    let ips: Vec<String> = endpoints
        .iter()
        .map(|e| e.get("ipAddress").and_then(|a| a.as_str()).map(str::to_string))
        .collect::<Option<_>>()
        .context("a network endpoint without ipAddress")?;
    if ips.is_empty() || ips.len() > 1024 {
        bail!("gcloud describe lists {} workers", ips.len());
    }
    Ok(ips)
}

fn run_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("cannot read /dev/urandom for the run token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn launch(a: &LaunchArgs) -> Result<()> {
    if a.command.first().map(String::as_str) != Some("train") {
        bail!("launch runs `gemma-xla train ...` on every worker; got `{}` after --", a.command.join(" "));
    }
    // Which workers: a read-only query, run even with --dry-run.
    let mut describe = a.gcloud("describe");
    describe.push("--format=json".into());
    let o = Command::new(GCLOUD).args(&describe).stdin(Stdio::null()).output().with_context(|| format!("cannot run {}", GCLOUD))?;
    if !o.status.success() {
        bail!("{} failed ({}): {}", show(GCLOUD, &describe), o.status, String::from_utf8_lossy(&o.stderr).trim());
    }
    let ips = workers(&String::from_utf8_lossy(&o.stdout)).with_context(|| format!("TPU {} in {}", a.tpu, a.zone))?;
    let n = ips.len();
    let coordinator = if ips[0].contains(':') { format!("[{}]:{}", ips[0], a.port) } else { format!("{}:{}", ips[0], a.port) };
    let token = if a.dry_run { "<fresh run token>".to_string() } else { run_token()? };
    let cd = a.workdir.as_ref().map_or(String::new(), |d| format!("cd {} && ", quote(d)));

    let check_cmd = format!(
        "{cd}command -v {b} >/dev/null || {{ echo \"gemma-xla launch: {b} is not on $(hostname)\" >&2; exit 127; }}",
        b = quote(&a.binary)
    );
    let mut check = a.gcloud("ssh");
    check.extend(["--worker=all".to_string(), format!("--command={check_cmd}")]);
    let worker_args = |i: usize| {
        let env = format!(
            "GEMMA_XLA_PROCESS_ID={i} GEMMA_XLA_NUM_PROCESSES={n} GEMMA_XLA_COORDINATOR={} GEMMA_XLA_RUN_TOKEN={}",
            quote(&coordinator),
            quote(&token)
        );
        let cmd = format!("{cd}{env} {} {}", quote(&a.binary), a.command.iter().map(|c| quote(c)).collect::<Vec<_>>().join(" "));
        let mut w = a.gcloud("ssh");
        w.extend([format!("--worker={i}"), format!("--command={cmd}")]);
        w
    };
    if a.dry_run {
        println!("{}", show(GCLOUD, &describe));
        println!("{}", show(GCLOUD, &check));
        for i in 0..n {
            println!("{}", show(GCLOUD, &worker_args(i)));
        }
        return Ok(());
    }
    let o = Command::new(GCLOUD).args(&check).stdin(Stdio::null()).output().with_context(|| format!("cannot run {}", GCLOUD))?;
    if !o.status.success() {
        bail!("{} is not on every worker of {} ({}): {}", a.binary, a.tpu, o.status, String::from_utf8_lossy(&o.stderr).trim());
    }
    eprintln!("launching on {n} workers of {} (coordinator {coordinator})", a.tpu);
    // One ssh per worker; each line it prints is prefixed with the worker's index.
    let mut children = Vec::new();
    let mut pumps = Vec::new();
    for i in 0..n {
        let mut child = Command::new(GCLOUD)
            .args(worker_args(i))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} for worker {i}", GCLOUD))?;
        let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        pumps.push(std::thread::spawn(move || prefix(out, i, false)));
        pumps.push(std::thread::spawn(move || prefix(err, i, true)));
        children.push(child);
    }
    let statuses: Vec<_> = children.into_iter().map(|mut c| c.wait()).collect();
    for p in pumps {
        let _ = p.join();
    }
    let failed: Vec<String> = statuses
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Ok(s) if s.success() => None,
            Ok(s) => Some(format!("worker {i} ({s})")),
            Err(e) => Some(format!("worker {i} (cannot wait for it: {e})")),
        })
        .collect();
    if !failed.is_empty() {
        bail!("the run failed on {}", failed.join(", "));
    }
    Ok(())
}

fn prefix(stream: impl Read, worker: usize, to_stderr: bool) {
    for line in BufReader::new(stream).split(b'\n') {
        let Ok(line) = line else { return };
        let text = format!("[{worker}] {}\n", String::from_utf8_lossy(&line));
        let _ = if to_stderr {
            std::io::stderr().lock().write_all(text.as_bytes())
        } else {
            std::io::stdout().lock().write_all(text.as_bytes())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_the_remote_shell() {
        assert_eq!(quote("--steps"), "--steps");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn workers_from_describe() {
        let j = r#"{"networkEndpoints": [{"ipAddress": "10.0.0.2", "port": 8470}, {"ipAddress": "10.0.0.3", "port": 8470}]}"#;
        assert_eq!(workers(j).unwrap(), vec!["10.0.0.2", "10.0.0.3"]);
        assert!(workers("{}").is_err());
        assert!(workers("not json").is_err());
    }
}
