//! Huge pages for XLA's host memory on glibc.
//!
//! XLA's CPU runtime takes its scratch buffers from the process's `malloc`. With glibc's
//! defaults every step of a train step touches freshly mapped 4 KiB pages again: about 46 k
//! minor page faults per step of the perf config (BENCHMARKS.md). glibc's
//! `glibc.malloc.hugetlb=1` tunable makes `malloc` ask for transparent huge pages
//! (`madvise(MADV_HUGEPAGE)`) on the memory it maps, which brings that to about 1 k faults per
//! step and makes the step about 9% faster here, at the same peak RSS.
//!
//! Tunables are read by the dynamic loader before `main`, so the only way for a program to
//! set them for itself is to execute itself again with the variable set. [`reexec_with_huge_pages`]
//! does that once, at the very start of a binary, before any thread or plugin exists.

/// The tunable this module sets.
pub const TUNABLES: &str = "glibc.malloc.hugetlb=1";

/// Re-executes the current binary with `GLIBC_TUNABLES` set to [`TUNABLES`], keeping its
/// arguments, `argv[0]`, environment and open descriptors, and never returns if that works.
///
/// Does nothing (returns) when `GLIBC_TUNABLES` is already set, to anything, including the
/// empty string (`GLIBC_TUNABLES= gemma-xla ...` opts out); when the target is not Linux
/// with glibc; or when the binary cannot be found or executed (the run then goes on with
/// glibc's defaults, which are only slower). Call it first thing in `main`.
pub fn reexec_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        // `exec` only returns on failure; then carry on with the defaults.
        let _ = std::process::Command::new(&exe).arg0(arg0).args(args).env("GLIBC_TUNABLES", TUNABLES).exec();
    }
}

/// One line on the host allocator for `gemma-xla devices`: the `GLIBC_TUNABLES` this process
/// runs with, and the kernel's transparent huge page mode (which the tunable needs).
pub fn describe() -> String {
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("GLIBC_TUNABLES={t}"),
        _ => "glibc defaults (GLIBC_TUNABLES unset or empty)".to_string(),
    };
    // The file reads e.g. `always [madvise] never`: the bracketed word is the mode.
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| Some(s.split_once('[')?.1.split_once(']')?.0.to_string()))
        .unwrap_or_else(|| "unknown".to_string());
    format!("{tunables}; transparent huge pages: {thp}")
}
