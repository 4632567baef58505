//! Test support shared by every crate's tests: the repository's paths and fixtures, scratch
//! directories (`tempfile`, removed when dropped), CPU clients whose compilation cache is a
//! directory of their own, and a check for outside tools that fails loudly (a test that
//! cannot run its check never passes).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use runtime::{Client, CompileCache, PluginSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives in the repository").to_path_buf()
}

/// `fixtures/<name>` at the repository's root (tiny checkpoints and outside reference values).
pub fn fixtures(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

/// A fresh scratch directory, removed when the value is dropped; `tag` appears in its name.
pub fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("gemma-xla-{tag}-")).tempdir().expect("cannot create a scratch directory")
}

/// A CPU client with `devices` devices and a compilation cache in a directory of its own
/// (returned with it; the cache lives as long as the directory).
pub fn cpu_client(devices: usize) -> (Client, tempfile::TempDir) {
    let cache = scratch("compile-cache");
    let mut client = Client::open(&PluginSpec::Cpu, Some(devices)).expect("cannot open the CPU plugin");
    client.set_compile_cache(Some(CompileCache::new(cache.path())));
    (client, cache)
}

/// Panics, naming the test's need, when `program` cannot be run here: a test that needs a tool
/// fails without it rather than passing unchecked.
pub fn require_tool(program: &str, why: &str) {
    if let Err(e) = std::process::Command::new(program).arg("--version").output() {
        panic!("this test needs {program} ({why}), which cannot be run here: {e}");
    }
}

/// A fresh scratch directory that outlives the test (for a command's outputs a test reads
/// after the command ends, and for looking at after a failure); `tag` appears in its name.
pub fn scratch_dir(tag: &str) -> PathBuf {
    scratch(tag).keep()
}

/// The `gemma-xla` binary `bin` (a test passes `env!("CARGO_BIN_EXE_gemma-xla")`) as a command
/// run from the repository's root, with a compilation cache of this test binary's own
/// (`GEMMA_XLA_COMPILE_CACHE`): its tests share compiled programs with each other, never with
/// the user's cache or another test binary.
pub fn gemma_xla(bin: &str) -> Command {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    let cache = CACHE.get_or_init(|| scratch_dir("compile-cache"));
    let mut command = Command::new(bin);
    command.current_dir(repo()).env("GEMMA_XLA_COMPILE_CACHE", cache);
    command
}

/// `command` with the multi-host environment (`GEMMA_XLA_PROCESS_ID` and the rest, the TPU
/// worker variables) removed, so a test runs one process unless it says otherwise.
pub fn single_host(command: &mut Command) -> &mut Command {
    for v in [
        "GEMMA_XLA_PROCESS_ID",
        "GEMMA_XLA_NUM_PROCESSES",
        "GEMMA_XLA_COORDINATOR",
        "GEMMA_XLA_RUN_TOKEN",
        "TPU_WORKER_ID",
        "TPU_WORKER_HOSTNAMES",
    ] {
        command.env_remove(v);
    }
    command
}

/// XLA's glog lines in `stderr` (`W0000 ...`, `E1205 ...`): a warning or error from a plugin.
pub fn xla_log_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            let b = l.as_bytes();
            b.len() > 5 && (b[0] == b'W' || b[0] == b'E') && b[1..5].iter().all(u8::is_ascii_digit)
        })
        .collect()
}

/// Every tensor of a safetensors file (f64 or f32) as its shape and f64 values, by name.
pub fn safetensors_f64(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let values: Vec<f64> = match t.dtype() {
                safetensors::Dtype::F64 => t.data().chunks(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
                safetensors::Dtype::F32 => t.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64).collect(),
                other => panic!("{}: {name} has dtype {other:?}, not f64 or f32", path.display()),
            };
            (name, (t.shape().to_vec(), values))
        })
        .collect()
}

/// The JSON lines of a file (blank lines skipped).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

/// A command's stdout and stderr together, asserting it succeeded.
pub fn succeeded(o: &std::process::Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "the command failed ({:?}):\n{out}\n{err}", o.status);
    format!("{out}{err}")
}

/// A command's stderr, asserting it failed with exit status 1 (a clear error, not a panic,
/// an abort or a signal).
pub fn failed(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "expected exit 1, got {:?}\n{err}", o.status.code());
    assert!(!err.contains("panicked"), "{err}");
    err
}
