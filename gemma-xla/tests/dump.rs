//! `gemma-xla dump` as a user runs it: the tiny train step on 4 devices and the forward pass
//! on one, compiled on the real CPU plugin; bad input refused with a clear error.
use std::path::{Path, PathBuf};
use std::process::Output;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gemma_xla(args: &[&str]) -> Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).args(args).current_dir(repo()).output().expect("spawn gemma-xla")
}

fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("dump-{name}")).join("out")
}

fn ok(args: &[&str]) -> String {
    let o = gemma_xla(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?} failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let o = gemma_xla(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Per-device bytes from the summary's `total` line.
fn total_bytes(summary: &str) -> f64 {
    let line = summary.lines().find(|l| l.trim_start().starts_with("total ")).expect("a total line");
    let mut it = line.split_whitespace().skip(1);
    let (n, unit): (f64, &str) = (it.next().unwrap().parse().unwrap(), it.next().unwrap());
    n * match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        _ => 1073741824.0,
    }
}

#[test]
fn the_tiny_train_step_on_four_devices_writes_every_stage_and_the_gradient_all_reduce() {
    let out = scratch("train");
    let o = out.to_str().unwrap();
    let args = ["dump", "--config", "tiny", "--what", "train-step", "--mesh", "data=2,model=2", "--batch", "8", "--seq", "16", "--out", o];
    ok(&args);
    for f in ["stablehlo.mlir", "before_optimizations.hlo", "after_spmd_partitioning.hlo", "after_optimizations.hlo", "summary.txt"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!text.is_empty(), "{f} is empty");
    }
    assert!(std::fs::read_to_string(out.join("stablehlo.mlir")).unwrap().contains("loc(\"gemma/src/model.rs\""));
    assert!(std::fs::read_to_string(out.join("after_spmd_partitioning.hlo")).unwrap().contains("all-reduce("));
    assert!(out.join("xla").is_dir());
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    // The gradients are summed over `data` (devices {0,2} and {1,3}): tiny has 20 parameters,
    // 4 outside the layers (the [128, 64] embedding shard among them) and 9 per layer. The
    // layers run as a loop (--scan-layers, the default): their 9 are summed inside the
    // backward loop's body, once per layer, so the program's all-reduces name 4 + 9.
    let grads: Vec<&str> = summary
        .lines()
        .filter(|l| l.trim_start().starts_with("all-reduce ") && l.contains("over data, replica_groups={{0,2},{1,3}}"))
        .collect();
    let operands: usize = grads.iter().map(|l| l.matches("f32[").count()).sum();
    assert!(operands >= 13, "gradient all-reduce over data covers {operands} tensors:\n{summary}");
    assert!(grads.iter().any(|l| l.contains("f32[128,64]")), "{summary}");
    assert!(total_bytes(&summary) > 0.0, "{summary}");
    assert!(summary.contains("gemma/src/model.rs:"), "source locations:\n{summary}");
    // A second dump into the same directory replaces the first.
    ok(&args);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn forward_on_one_device_has_no_partitioning_stage() {
    let out = scratch("forward");
    let stdout = ok(&["dump", "--config", "tiny", "--what", "forward", "--devices", "1", "--seq", "16", "--out", out.to_str().unwrap()]);
    assert!(stdout.contains("no SPMD partitioning"), "{stdout}");
    assert!(out.join("after_optimizations.hlo").is_file() && out.join("before_optimizations.hlo").is_file());
    assert!(!out.join("after_spmd_partitioning.hlo").exists());
    assert!(stdout.contains("collectives: 0"), "{stdout}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_input_is_refused() {
    let err = fails(&["dump", "--config", "tiny", "--what", "backward", "--out", "/tmp/x"]);
    for name in ["forward", "train-step", "prefill", "decode"] {
        assert!(err.contains(name), "{err}");
    }
    // --out naming the config file is refused before anything is written.
    let config = "fixtures/gemma/gqa/config.json";
    let before = std::fs::read(repo().join(config)).unwrap();
    let err = fails(&["dump", "--config", config, "--what", "forward", "--devices", "1", "--out", config]);
    assert!(err.contains("refusing to write") && err.contains("it is the input"), "{err}");
    assert_eq!(std::fs::read(repo().join(config)).unwrap(), before, "the config was touched");
}

#[test]
fn prefill_and_decode_programs_dump_on_a_mesh() {
    // gqa has 2 kv heads, so model=2 splits the cache by heads and data=2 its rows.
    let config = "fixtures/gemma/gqa/config.json";
    for (what, scan) in [("prefill", true), ("decode", true), ("prefill", false), ("decode", false)] {
        let out = scratch(what);
        let mut args = vec!["dump", "--config", config, "--what", what, "--mesh", "data=2,model=2", "--batch", "2", "--seq", "16"];
        if !scan {
            args.push("--no-scan-layers");
        }
        args.extend(["--out", out.to_str().unwrap()]);
        let stdout = ok(&args);
        for f in ["stablehlo.mlir", "before_optimizations.hlo", "after_spmd_partitioning.hlo", "after_optimizations.hlo", "summary.txt"] {
            assert!(out.join(f).is_file(), "{what}: no {f}");
        }
        let mlir = std::fs::read_to_string(out.join("stablehlo.mlir")).unwrap();
        // The cache is donated: with the layers as a loop, k and v stacked [layers, rows,
        // slots, kv heads, head dim] (cache of twice --seq); unrolled, k and v per layer.
        // Prefill takes 16 new tokens per row, decode 1.
        let (donated, loops) = if scan { (2, 1) } else { (4, 0) };
        assert_eq!(mlir.matches("jax.buffer_donor = true").count(), donated, "{what} scan {scan}");
        assert_eq!(mlir.matches("stablehlo.while").count(), loops, "{what} scan {scan}");
        assert_eq!(mlir.contains("tensor<2x2x32x2x"), scan, "{what}: the stacked cache");
        let tokens = if what == "prefill" { "tensor<2x16xi32>" } else { "tensor<2x1xi32>" };
        assert!(mlir.contains(tokens), "{what}: no {tokens} argument");
        assert!(total_bytes(&stdout) > 0.0, "{stdout}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
