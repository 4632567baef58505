//! Writing files so that a crash never leaves a half-written one: write a temporary file in
//! the same directory, fsync it, rename it over the target, fsync the directory.
use anyhow::{Context, Result};
use std::path::Path;

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    gemma::write_atomic(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `dir` if needed and checks a file can be written in it, before any work is done.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let probe = dir.join(format!(".gemma-xla-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("output directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
