//! The CPU plugin cache as a user meets it after things went wrong: truncated, garbage or
//! missing plugin files are found before anything is loaded and reinstalled (announced),
//! `gemma-xla plugin install --force` / `plugin check` work, leftovers of killed installs go
//! away, and a garbage `--plugin PATH` is a clear error (exit 1, not 127, not a signal).
//!
//! No test downloads anything: each uses its own GEMMA_XLA_CACHE, PYTHON points nowhere (so
//! pip cannot run), and installs come from GEMMA_XLA_PLUGIN_SOURCE = the real plugin file,
//! found the way the runtime finds it (and only ever read, never changed).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const SO: &str = "plugins/lammps-jax-pjrt-cpu-0.11.2/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so";
const SO_SIZE: u64 = 201_600_336;
const SO_SHA256: &str = "ad1309ac822b1b24d51b7f9947c7c9fa9ef5d67f390584cbc3d1fa2428fed9c2";

/// The real CPU plugin, as `gemma-xla devices` would find it with the user's cache.
fn real_plugin() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| runtime::PluginSpec::Cpu.resolve().expect("the CPU plugin (the other tests need it too)"))
}

/// A fresh cache directory for one test.
fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("plugin-{name}"))
}

/// gemma-xla with its own cache, no pip, and (if `source`) the real plugin as install source.
fn command(cache: &Path, source: bool, args: &[&str]) -> Command {
    let mut c = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"));
    c.args(args).env("GEMMA_XLA_CACHE", cache).env("PYTHON", "/nonexistent/python3").env_remove("GEMMA_XLA_PLUGIN");
    if source {
        c.env("GEMMA_XLA_PLUGIN_SOURCE", real_plugin());
    } else {
        c.env_remove("GEMMA_XLA_PLUGIN_SOURCE");
    }
    c
}

fn gemma_xla(cache: &Path, source: bool, args: &[&str]) -> (Output, String, String) {
    let o = command(cache, source, args).output().expect("spawn gemma-xla");
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(!err.contains("panicked"), "{err}");
    (o, out, err)
}

fn succeeds(cache: &Path, source: bool, args: &[&str]) -> (String, String) {
    let (o, out, err) = gemma_xla(cache, source, args);
    assert!(o.status.success(), "{args:?}: {:?}\nstdout: {out}\nstderr: {err}", o.status);
    (out, err)
}

fn fails(cache: &Path, source: bool, args: &[&str]) -> String {
    let (o, out, err) = gemma_xla(cache, source, args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: expected exit 1\nstdout: {out}\nstderr: {err}");
    err
}

/// A cache with the plugin installed from the real file.
fn installed(name: &str) -> (PathBuf, PathBuf) {
    let cache = scratch(name);
    let (out, err) = succeeds(&cache, true, &["plugin", "install"]);
    let so = cache.join(SO);
    assert!(out.contains(&format!("installed the CPU plugin: {}", so.display())), "{out}");
    assert!(err.contains(&format!("installing the CPU PJRT plugin from {}", real_plugin().display())), "{err}");
    (cache, so)
}

fn devices_work(cache: &Path, so: &Path, source: bool) -> String {
    let (out, err) = succeeds(cache, source, &["devices", "--devices", "2"]);
    assert!(out.contains(&format!("plugin: {}", so.display())), "{out}");
    assert!(out.contains("devices: 2"), "{out}");
    err
}

#[test]
fn install_records_size_and_sha256_and_check_verifies_them() {
    let (cache, so) = installed("install");
    let dir = cache.join("plugins/lammps-jax-pjrt-cpu-0.11.2");
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("plugin.json")).unwrap()).unwrap();
    assert_eq!(record["file"], "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so");
    assert_eq!(record["size"], SO_SIZE);
    assert_eq!(record["sha256"], SO_SHA256);
    assert_eq!(record["package"], "lammps-jax-pjrt-cpu==0.11.2");
    assert_eq!(record["source"], real_plugin().display().to_string());
    assert_eq!(std::fs::metadata(&so).unwrap().len(), SO_SIZE);
    let (out, _) = succeeds(&cache, false, &["plugin", "check"]);
    assert!(out.contains(&format!("plugin: {}", so.display())), "{out}");
    assert!(out.contains(&format!("size: {SO_SIZE} bytes (expected {SO_SIZE})")), "{out}");
    assert!(out.contains(&format!("sha256: {SO_SHA256} (ok)")), "{out}");
    // Already there: nothing to do, unless forced.
    let (out, err) = succeeds(&cache, true, &["plugin", "install"]);
    assert!(out.contains("already installed"), "{out}");
    assert!(!err.contains("installing"), "{err}");
    let (out, err) = succeeds(&cache, true, &["plugin", "install", "--force"]);
    assert!(out.contains(&format!("installed the CPU plugin: {}", so.display())), "{out}");
    assert!(err.contains("installing the CPU PJRT plugin from"), "{err}");
    let err = devices_work(&cache, &so, false);
    assert!(!err.contains("damaged"), "{err}");
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn a_truncated_cached_plugin_is_reinstalled_before_it_is_loaded() {
    let (cache, so) = installed("truncated");
    std::fs::OpenOptions::new().write(true).open(&so).unwrap().set_len(SO_SIZE / 2).unwrap();
    let err = fails(&cache, false, &["plugin", "check"]);
    assert!(err.contains(&format!("the cached CPU plugin at {} is damaged (it is {} bytes", so.display(), SO_SIZE / 2)), "{err}");
    assert!(err.contains("run `gemma-xla plugin install --force`"), "{err}");
    let err = devices_work(&cache, &so, true);
    assert!(
        err.contains(&format!(
            "gemma-xla: the cached CPU plugin at {} is damaged (it is {} bytes, expected {SO_SIZE}); reinstalling",
            so.display(),
            SO_SIZE / 2
        )),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&so).unwrap().len(), SO_SIZE);
    // Repaired for good: the next run says nothing.
    let err = devices_work(&cache, &so, false);
    assert!(!err.contains("damaged"), "{err}");
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn a_garbage_cached_plugin_is_never_loaded() {
    let (cache, so) = installed("garbage");
    // Same size, garbage at the start: the size matches the record, the ELF header does not.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&so).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&[0x5a; 4096]).unwrap();
    }
    // No pip and no source: the repair fails with exit 1 and the command to run; the file
    // was never given to dlopen (that would end in a loader abort, exit 127).
    let err = fails(&cache, false, &["devices"]);
    assert!(err.contains(&format!("the cached CPU plugin at {} is damaged (not an ELF shared library", so.display())), "{err}");
    assert!(err.contains("reinstalling"), "{err}");
    assert!(err.contains("cannot install the CPU PJRT plugin: pip is not available"), "{err}");
    assert!(err.contains("gemma-xla plugin install --force"), "{err}");
    // The command the error names repairs it.
    succeeds(&cache, true, &["plugin", "install", "--force"]);
    devices_work(&cache, &so, false);
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn without_a_record_the_sha256_decides() {
    let (cache, so) = installed("record");
    let record = cache.join("plugins/lammps-jax-pjrt-cpu-0.11.2/plugin.json");
    // An install from before records existed (or a lost record): hashed, then used as is.
    std::fs::remove_file(&record).unwrap();
    let err = devices_work(&cache, &so, false);
    assert!(!err.contains("damaged"), "{err}");
    // An unreadable record is no record; one flipped byte in the middle is caught by the hash.
    std::fs::write(&record, "{ not json").unwrap();
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&so).unwrap();
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(SO_SIZE / 2)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(SO_SIZE / 2)).unwrap();
        f.write_all(&[b[0] ^ 0xff]).unwrap();
    }
    let err = devices_work(&cache, &so, true);
    assert!(err.contains(&format!("the cached CPU plugin at {} is damaged (its sha256 is ", so.display())), "{err}");
    assert!(err.contains(&format!("expected {SO_SHA256}); reinstalling")), "{err}");
    assert!(record.is_file());
    succeeds(&cache, false, &["plugin", "check"]);
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn a_plugin_directory_without_its_file_is_reinstalled() {
    let (cache, so) = installed("missing");
    std::fs::remove_file(&so).unwrap();
    let err = devices_work(&cache, &so, true);
    assert!(
        err.contains(&format!("the cached CPU plugin at {} is damaged (the plugin file is missing); reinstalling", so.display())),
        "{err}"
    );
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn leftovers_of_killed_installs_are_removed_at_the_next_install() {
    let cache = scratch("leftovers");
    let plugins = cache.join("plugins");
    // A pid no process has: these installs were killed.
    let tmp = plugins.join(".tmp-lammps-jax-pjrt-cpu-4294967295-12345");
    let old = plugins.join(".old-lammps-jax-pjrt-cpu-4294967295-12345");
    for d in [&tmp, &old] {
        std::fs::create_dir_all(d.join("pkg/lammps_jax_pjrt_cpu")).unwrap();
        std::fs::write(d.join("pkg/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so"), "half").unwrap();
    }
    succeeds(&cache, true, &["plugin", "install"]);
    let left: Vec<String> = std::fs::read_dir(&plugins).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["lammps-jax-pjrt-cpu-0.11.2".to_string()]);
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn a_source_that_is_not_the_pinned_plugin_is_refused() {
    let cache = scratch("badsource");
    let fake = cache.join("pjrt_c_api_cpu_plugin.so");
    std::fs::write(&fake, "not the plugin").unwrap();
    let o = command(&cache, false, &["plugin", "install"]).env("GEMMA_XLA_PLUGIN_SOURCE", &fake).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("GEMMA_XLA_PLUGIN_SOURCE={} is not the plugin of lammps-jax-pjrt-cpu==0.11.2", fake.display())), "{err}");
    assert!(!cache.join("plugins/lammps-jax-pjrt-cpu-0.11.2").exists());
    assert_eq!(std::fs::read_dir(cache.join("plugins")).unwrap().count(), 0, "no temporary directory is left");
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn explicit_plugin_files_that_are_not_libraries_are_refused_before_loading() {
    let dir = scratch("explicit");
    let garbage = dir.join("garbage.so");
    std::fs::write(&garbage, vec![0x5au8; 100_000]).unwrap();
    let truncated = dir.join("truncated.so");
    {
        use std::io::Read;
        let mut head = vec![0u8; 1 << 20];
        std::fs::File::open(real_plugin()).unwrap().read_exact(&mut head).unwrap();
        std::fs::write(&truncated, head).unwrap();
    }
    let empty = dir.join("empty.so");
    std::fs::write(&empty, "").unwrap();
    for (file, why) in [
        (&garbage, "not an ELF shared library (it starts with \"ZZZZZZZZZZZZZZZZ\")".to_string()),
        (&truncated, format!("truncated: its section headers end at byte {SO_SIZE} but the file has 1048576 bytes")),
        (&empty, "not an ELF shared library (it starts with \"\")".to_string()),
    ] {
        for how in ["flag", "env"] {
            let mut c = command(&dir, false, &["devices"]);
            if how == "flag" {
                c.args(["--plugin", file.to_str().unwrap()]);
            } else {
                c.env("GEMMA_XLA_PLUGIN", file);
            }
            let o = c.output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{how} {}: {err}", file.display());
            assert!(err.contains(&format!("cannot load PJRT plugin {}: {why}", file.display())), "{how}: {err}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_killed_install_leaves_no_pip_behind_and_its_directory_goes_at_the_next_install() {
    use std::io::Read;
    let cache = scratch("killed");
    // A package index that accepts connections and never answers: pip hangs in the install.
    let index = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = index.local_addr().unwrap().port();
    let (connected, wait_connected) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in index.incoming().flatten() {
            let _ = connected.send(());
            held.push(stream);
        }
    });
    // python3 through a script that notes each pid (exec keeps it).
    let pids = cache.join("pids");
    let python = cache.join("python3");
    std::fs::write(&python, format!("#!/bin/sh\necho $$ >> '{}'\nexec python3 \"$@\"\n", pids.display())).unwrap();
    std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = command(&cache, false, &["devices"])
        .env("PYTHON", &python)
        .env("PIP_INDEX_URL", format!("http://127.0.0.1:{port}/simple"))
        .env("PIP_DEFAULT_TIMEOUT", "300")
        .env("PIP_RETRIES", "0")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_CACHE_DIR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_connected.recv_timeout(std::time::Duration::from_secs(120)).expect("pip asks the index for the package");
    let mut text = String::new();
    std::fs::File::open(&pids).unwrap().read_to_string(&mut text).unwrap();
    let pip: u32 = text.lines().last().unwrap().trim().parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pip}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("install"), "{}", String::from_utf8_lossy(&cmdline));
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = || match std::fs::read_to_string(format!("/proc/{pip}/stat")) {
        Err(_) => true,
        // A zombie (state Z, after the pid) has exited; only its reaping is left.
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !gone() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(gone(), "pip (pid {pip}) outlived the killed install");
    let plugins = cache.join("plugins");
    let names =
        || -> Vec<String> { std::fs::read_dir(&plugins).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect() };
    assert!(names().iter().any(|n| n.starts_with(".tmp-lammps-jax-pjrt-cpu-")), "{:?}", names());
    succeeds(&cache, true, &["plugin", "install"]);
    assert_eq!(names(), vec!["lammps-jax-pjrt-cpu-0.11.2".to_string()]);
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn a_plugin_changed_in_the_middle_with_its_size_and_record_intact_is_hashed_again() {
    let (cache, so) = installed("middle");
    // The record still describes the pinned plugin; the file's mtime (and content) changed.
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&so).unwrap();
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(SO_SIZE / 3)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(SO_SIZE / 3)).unwrap();
        f.write_all(&[b[0] ^ 0xff]).unwrap();
    }
    let err = devices_work(&cache, &so, true);
    assert!(err.contains(&format!("the cached CPU plugin at {} is damaged (its sha256 is ", so.display())), "{err}");
    // Repaired, and vouched for again without hashing: the next run says nothing.
    let err = devices_work(&cache, &so, false);
    assert!(!err.contains("damaged"), "{err}");
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn an_endless_install_source_is_refused_at_the_pinned_size() {
    let cache = scratch("endless");
    let o = command(&cache, false, &["plugin", "install"]).env("GEMMA_XLA_PLUGIN_SOURCE", "/dev/zero").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("larger than the pinned plugin"), "{err}");
    assert_eq!(std::fs::read_dir(cache.join("plugins")).unwrap().count(), 0, "no temporary directory is left");
    std::fs::remove_dir_all(cache).unwrap();
}
