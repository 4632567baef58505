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

/// Lowercase hex of the sha256 of `bytes`: how files and token streams are identified.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `path` is a character device or FIFO: an output written straight into (by
/// `write_atomic`), beside which nothing else is written.
pub fn is_stream(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device() || m.file_type().is_fifo())
}

/// The lock file in an output directory.
pub const LOCK: &str = ".gemma-xla.lock";

/// An exclusive lock on an output directory for one run: `flock` on `DIR/.gemma-xla.lock`,
/// which the kernel releases when the process ends, however it ends. The file holds the
/// holder's PID and what it runs, for the error a second run gets.
#[derive(Debug)]
pub struct OutputLock {
    _file: std::fs::File,
    path: std::path::PathBuf,
}

impl OutputLock {
    /// Creates `dir` if needed and locks it for `what` (e.g. `gemma-xla train`); a directory
    /// another live process holds is an error naming its PID. Hold the value for the run.
    pub fn acquire(dir: &Path, what: &str) -> Result<OutputLock> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(dir).map_err(|e| io(format!("cannot create output directory {}", dir.display()), e))?;
        let path = dir.join(LOCK);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(format!("cannot open the lock file {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process".to_string() } else { holder.to_string() };
                return Err(Error::Io(format!(
                    "{} is in use by another run ({holder}); wait for it to end or choose another output directory",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(format!("cannot lock {}", path.display()), e)),
        }
        let stamp = format!("pid {}: {what}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(stamp.as_bytes()))
            .map_err(|e| io(format!("cannot write the lock file {}", path.display()), e))?;
        Ok(OutputLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The marker file in a directory gemma-xla made for its outputs; it names what wrote it.
pub const MARKER: &str = ".gemma-xla-output";

/// Makes `dir` an output directory of `what` (e.g. `gemma-xla train`): a new or empty
/// directory gets the marker; one with the marker is ours already; `adopt(names)` may accept
/// an unmarked directory by the names in it (the outputs of a version that wrote no marker),
/// which then gets the marker. Anything else is refused with the list of what is in the way,
/// and nothing in it is touched.
pub fn claim_dir(dir: &Path, what: &str, adopt: impl Fn(&[String]) -> bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(format!("cannot create output directory {}", dir.display()), e))?;
    if dir.join(MARKER).is_file() {
        return Ok(());
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect())
        .map_err(|e| io(format!("cannot list {}", dir.display()), e))?;
    names.retain(|n| n != LOCK && n != MARKER && !(n.starts_with(".gemma-xla-write-test-")));
    names.sort();
    if !names.is_empty() && !adopt(&names) {
        let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
        let more = if names.len() > 8 { format!(" and {} more", names.len() - 8) } else { String::new() };
        return Err(Error::Io(format!(
            "{} holds files gemma-xla did not write ({}{more}); choose a new or empty directory, so that nothing in it is replaced or deleted",
            dir.display(),
            shown.join(", ")
        )));
    }
    write_atomic(&dir.join(MARKER), format!("written by {what}; gemma-xla replaces and removes only its own outputs here\n").as_bytes())
}

/// Refuses an output directory that is, or is inside, one of `inputs` (a directory a run reads
/// must not receive what it writes, to be read back by the next run).
pub fn refuse_output_dir_over_inputs(dir: &Path, flag: &str, inputs: &[(&str, &Path)]) -> Result<()> {
    let canonical = |p: &Path| p.canonicalize().ok();
    let Some(out) = absolute(dir) else { return Ok(()) };
    for (input_flag, input) in inputs {
        let Some(inp) = canonical(input) else { continue };
        if out.starts_with(&inp) {
            return Err(Error::OutputIsInput {
                output: format!("{flag} {}", dir.display()),
                input: format!("{input_flag} {} (an output directory may not be or be inside an input)", input.display()),
            });
        }
    }
    Ok(())
}

/// Refuses an input (`flag`, path) that is, or is inside, `dir`: a directory whose contents
/// this run deletes (`what` says which and why).
pub fn refuse_inputs_inside(dir: &Path, what: &str, inputs: &[(&str, &Path)]) -> Result<()> {
    let Some(dir_abs) = absolute(dir) else { return Ok(()) };
    for (flag, input) in inputs {
        let Some(inp) = input.canonicalize().ok() else { continue };
        if inp.starts_with(&dir_abs) {
            return Err(Error::InputInsideOutput {
                input: format!("{flag} {}", input.display()),
                dir: dir.display().to_string(),
                why: what.to_string(),
            });
        }
    }
    Ok(())
}

/// `path` made absolute with symlinks resolved, for a path that may not exist yet: its nearest
/// existing ancestor canonicalized, the rest appended.
fn absolute(path: &Path) -> Option<std::path::PathBuf> {
    let mut rest = Vec::new();
    let mut p = path;
    loop {
        if let Ok(c) = p.canonicalize() {
            return Some(rest.iter().rev().fold(c, |acc, part| acc.join(part)));
        }
        rest.push(p.file_name()?.to_os_string());
        p = match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
    }
}

/// Whether the process `pid` is alive (Linux: its `/proc` entry exists); the temporary files
/// and directories of a writer are removed only when it is dead.
pub fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
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
