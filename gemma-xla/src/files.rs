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

/// Refuses to write `output` when it is one of `inputs`: the same path once canonical, or the
/// same file by device and inode (a hard link). An output never overwrites an input.
pub fn refuse_input_as_output(output: &Path, inputs: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let canonical = |p: &Path| -> Option<std::path::PathBuf> {
        p.canonicalize().ok().or_else(|| {
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(parent.canonicalize().ok()?.join(p.file_name()?))
        })
    };
    let out_id = std::fs::metadata(output).ok().map(|m| (m.dev(), m.ino()));
    let out_path = canonical(output);
    for input in inputs {
        let same_file = out_id.is_some() && std::fs::metadata(input).ok().map(|m| (m.dev(), m.ino())) == out_id;
        if same_file || (out_path.is_some() && canonical(input) == out_path) {
            return Err(Error::OutputIsInput { output: output.display().to_string(), input: input.display().to_string() });
        }
    }
    Ok(())
}
