//! A plain-file check of a shared library before it is handed to dlopen: dlopen of a
//! truncated library maps pages past the end of the file and dies of SIGBUS on first touch,
//! and some garbage makes the dynamic loader abort the process. Reading the ELF header and the
//! program and section header tables (all with ordinary reads) catches both.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const HEADER_LEN: usize = 64;
const PT_LOAD: u32 = 1;

/// Checks that `path` is a complete 64-bit ELF shared library: the magic, the class, the type
/// (ET_DYN), and that the program headers, every loadable segment and the section headers lie
/// within the file. The error says what is wrong, without the path.
pub fn check_shared_library(path: &Path) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("it is a directory".into());
    }
    let len = meta.len();
    let mut header = [0u8; HEADER_LEN];
    let got = read_up_to(&mut file, &mut header).map_err(|e| e.to_string())?;
    if got < 4 || &header[..4] != ELF_MAGIC {
        return Err(format!("not an ELF shared library (it starts with {:?})", String::from_utf8_lossy(&header[..got.min(16)])));
    }
    if got < HEADER_LEN {
        return Err(format!("truncated: only {len} bytes, less than an ELF header"));
    }
    if header[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    let little = match header[5] {
        1 => true,
        2 => false,
        other => return Err(format!("unknown ELF byte order {other}")),
    };
    let u16_at = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1]];
        u64::from(if little { u16::from_le_bytes(v) } else { u16::from_be_bytes(v) })
    };
    let u32_at = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let u64_at = |b: &[u8], at: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        if little {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        }
    };
    let kind = u16_at(&header, 16);
    if kind != 3 {
        return Err(format!("not a shared library (ELF type {kind}, expected 3 = ET_DYN)"));
    }
    let truncated = |what: &str, end: Option<u64>| match end {
        Some(end) if end <= len => Ok(()),
        Some(end) => Err(format!("truncated: its {what} end at byte {end} but the file has {len} bytes")),
        None => Err(format!("damaged: its {what} lie beyond any file size")),
    };
    let (phoff, phentsize, phnum) = (u64_at(&header, 32), u16_at(&header, 54), u16_at(&header, 56));
    let (shoff, shentsize, shnum) = (u64_at(&header, 40), u16_at(&header, 58), u16_at(&header, 60));
    if phnum > 0 && phentsize < 56 {
        return Err(format!("damaged: program header entries of {phentsize} bytes"));
    }
    truncated("program headers", phentsize.checked_mul(phnum).and_then(|n| n.checked_add(phoff)))?;
    if shnum > 0 {
        truncated("section headers", shentsize.checked_mul(shnum).and_then(|n| n.checked_add(shoff)))?;
    }
    if phentsize * phnum > 1 << 20 {
        return Err(format!("damaged: {phnum} program headers of {phentsize} bytes"));
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    file.seek(SeekFrom::Start(phoff)).map_err(|e| e.to_string())?;
    file.read_exact(&mut table).map_err(|e| format!("cannot read its program headers: {e}"))?;
    for entry in table.chunks_exact(phentsize as usize) {
        if u32_at(entry, 0) == PT_LOAD {
            let (offset, filesz) = (u64_at(entry, 8), u64_at(entry, 32));
            truncated("loadable segments", offset.checked_add(filesz))?;
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("xla-sys-elf-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A minimal ELF64 little-endian shared-library header with one PT_LOAD of `filesz` bytes.
    fn elf(filesz: u64, total: usize) -> Vec<u8> {
        let mut b = vec![0u8; total.max(64 + 56)];
        b[..4].copy_from_slice(ELF_MAGIC);
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&3u16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[64 + 32..64 + 40].copy_from_slice(&filesz.to_le_bytes());
        b.truncate(total.max(64 + 56));
        b
    }

    #[test]
    fn complete_truncated_and_foreign_files() {
        let good = scratch("good", &elf(200, 200));
        assert_eq!(check_shared_library(&good), Ok(()));
        let cut = scratch("cut", &elf(4096, 200));
        let err = check_shared_library(&cut).unwrap_err();
        assert_eq!(err, "truncated: its loadable segments end at byte 4096 but the file has 200 bytes");
        let text = scratch("text", b"hello");
        assert_eq!(check_shared_library(&text).unwrap_err(), "not an ELF shared library (it starts with \"hello\")");
        let short = scratch("short", &elf(200, 200)[..40]);
        assert_eq!(check_shared_library(&short).unwrap_err(), "truncated: only 40 bytes, less than an ELF header");
        let empty = scratch("empty", b"");
        assert!(check_shared_library(&empty).unwrap_err().starts_with("not an ELF shared library"));
        let mut exe = elf(200, 200);
        exe[16] = 2;
        let exe = scratch("exe", &exe);
        assert_eq!(check_shared_library(&exe).unwrap_err(), "not a shared library (ELF type 2, expected 3 = ET_DYN)");
        for p in [good, cut, text, short, empty, exe] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
