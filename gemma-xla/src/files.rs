//! Writing files so that a crash never leaves a half-written one: write a temporary file in
//! the same directory, fsync it, rename it over the target, fsync the directory.
use crate::{Error, Result};
use std::path::Path;

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(gemma::write_atomic(path, bytes)?)
}

/// Creates `dir` if needed and checks a file can be written in it, before any work is done.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("cannot create output directory {}: {e}", dir.display())))?;
    let probe = dir.join(format!(".gemma-xla-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::Io(format!("output directory {} is not writable: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
