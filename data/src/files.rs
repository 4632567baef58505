//! Writing files so that a crash never leaves a half-written one: write a temporary file in
//! the same directory, fsync it, rename it over the target, fsync the directory. And
//! replacing a whole set of outputs so that no directory mixes the outputs of two runs.
use crate::{Error, Result};
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of
/// the directory.
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
/// An output file's directory must exist (checked before any work, so none is lost).
pub fn require_parent_dir(out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::Io(format!("cannot write {}: directory {} does not exist", out.display(), parent.display())));
        }
    }
    Ok(())
}

/// Refuses to write `output` when it is one of `inputs` (the same file, by device and inode,
/// also through links).
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

/// The manifest `run` writes next to its outputs.
pub const MANIFEST: &str = "manifest.json";

/// `out_<i>.npy`
pub fn is_output_name(name: &str) -> bool {
    name.strip_prefix("out_").and_then(|r| r.strip_suffix(".npy")).is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// Files only gemma-xla puts in an output directory: outputs, the manifest, and the hidden
/// temporary files of atomic writes and write probes.
fn is_ours(name: &str) -> bool {
    let hidden_temp = name.strip_prefix('.').is_some_and(|n| {
        n.starts_with("gemma-xla-")
            || ((is_output_name(n.split(".tmp-").next().unwrap_or("")) || n.starts_with("manifest.json.tmp-")) && n.contains(".tmp-"))
    });
    is_output_name(name) || name == MANIFEST || hidden_temp
}

fn io(context: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Io(format!("{context}: {e}"))
}

/// Replaces the outputs in `dir` with `files` (name, bytes) and `manifest`, so that `dir`
/// never holds outputs of two different runs:
///
/// - when `dir` holds nothing but gemma-xla's files, everything is written into a fresh
///   sibling directory which is then swapped in (two renames: a kill between them leaves
///   the old set under `.NAME.gemma-xla-old-PID` and no `dir`, never a mixed set);
/// - when it also holds other files (the user's), those stay: the old manifest and every
///   `out_<i>.npy` are removed first, the new outputs are written, and the manifest last,
///   so a manifest is only ever present next to the complete set it lists.
pub fn replace_outputs(dir: &Path, files: &[(String, Vec<u8>)], manifest: &[u8]) -> Result<()> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| io(format!("cannot list output directory {}", dir.display()), e))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| io(format!("cannot list output directory {}", dir.display()), e))?;
    let symlink = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
    if names.iter().all(|n| is_ours(n)) && !symlink {
        if let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let fresh = parent.join(format!(".{name}.gemma-xla-new-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&fresh);
            // A parent we cannot write to leaves the in-place way.
            if std::fs::create_dir(&fresh).is_ok() {
                let result = swap_in(dir, parent, &name, &fresh, files, manifest);
                let _ = std::fs::remove_dir_all(&fresh);
                return result;
            }
        }
    }
    if names.iter().any(|n| n == MANIFEST) {
        let path = dir.join(MANIFEST);
        std::fs::remove_file(&path).map_err(|e| io(format!("cannot remove {}", path.display()), e))?;
    }
    for name in names.iter().filter(|n| is_output_name(n)) {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|e| io(format!("cannot remove stale output {}", path.display()), e))?;
    }
    for (name, bytes) in files {
        write_atomic(&dir.join(name), bytes)?;
    }
    write_atomic(&dir.join(MANIFEST), manifest)
}

fn swap_in(dir: &Path, parent: &Path, name: &str, fresh: &Path, files: &[(String, Vec<u8>)], manifest: &[u8]) -> Result<()> {
    use std::io::Write;
    let write = |path: &Path, bytes: &[u8]| -> Result<()> {
        let mut f = std::fs::File::create(path).map_err(|e| io(format!("cannot write {}", path.display()), e))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| io(format!("cannot write {}", path.display()), e))
    };
    for (file, bytes) in files {
        write(&fresh.join(file), bytes)?;
    }
    write(&fresh.join(MANIFEST), manifest)?;
    let sync = |d: &Path| std::fs::File::open(d).and_then(|f| f.sync_all()).map_err(|e| io(format!("cannot sync {}", d.display()), e));
    sync(fresh)?;
    let old = parent.join(format!(".{name}.gemma-xla-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(dir, &old).map_err(|e| io(format!("cannot move the previous outputs in {} aside", dir.display()), e))?;
    if let Err(e) = std::fs::rename(fresh, dir) {
        let _ = std::fs::rename(&old, dir);
        return Err(io(format!("cannot move the new outputs into {}", dir.display()), e));
    }
    sync(parent)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert!(is_output_name("out_0.npy") && is_output_name("out_12.npy"));
        assert!(!is_output_name("out_.npy") && !is_output_name("out_a.npy") && !is_output_name("xout_1.npy"));
        assert!(is_ours(".out_3.npy.tmp-77") && is_ours(".gemma-xla-write-test-5") && is_ours(MANIFEST));
        assert!(!is_ours("notes.txt") && !is_ours(".out_3.npy") && !is_ours(".bashrc"));
    }

    #[test]
    fn swaps_a_directory_of_outputs_and_keeps_other_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("o");
        std::fs::create_dir(&dir).unwrap();
        let files = |n: usize| (0..n).map(|i| (format!("out_{i}.npy"), vec![i as u8])).collect::<Vec<_>>();
        let list = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        replace_outputs(&dir, &files(3), b"{}").unwrap();
        replace_outputs(&dir, &files(2), b"{}").unwrap();
        assert_eq!(list(&dir), ["manifest.json", "out_0.npy", "out_1.npy"]);
        assert_eq!(list(root.path()), ["o"]);
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        replace_outputs(&dir, &files(3), b"{}").unwrap();
        replace_outputs(&dir, &files(1), b"{\"n\":1}").unwrap();
        assert_eq!(list(&dir), ["manifest.json", "notes.txt", "out_0.npy"]);
        assert_eq!(std::fs::read(dir.join(MANIFEST)).unwrap(), b"{\"n\":1}");
    }
}
