//! Test support shared by every crate's tests: the repository's paths and fixtures, scratch
//! directories (`tempfile`, removed when dropped), CPU clients whose compilation cache is a
//! directory of their own, and a check for outside tools that fails loudly (a test that
//! cannot run its check never passes).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use runtime::{Client, CompileCache, PluginSpec};
use std::path::{Path, PathBuf};

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
