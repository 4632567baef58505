//! Read-only memory maps of files (checkpoints), so weights are paged in from disk instead
//! of copied. Lives here because mapping a file is `unsafe` and this is the one crate of
//! gemma-xla allowed to contain `unsafe` code.
use std::fs::File;
use std::path::Path;

/// A file mapped read-only into memory.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this process. The remaining hazard is
        // another process truncating or rewriting the file while it is mapped, which would
        // change or unmap the bytes under us; gemma-xla itself only replaces checkpoints by
        // atomic rename (a new inode), which leaves existing maps intact.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile { map })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}
