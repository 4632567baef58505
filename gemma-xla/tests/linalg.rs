//! JAX's CPU linear-algebra programs (fixtures/linalg, made by make_linalg.py with JAX 0.10.2)
//! run on the CPU plugin through our LAPACK FFI handlers, against JAX's own outputs: every
//! routine, f32/f64/c64/c128, batched and unbatched, singular and not-positive-definite input.
use anyhow::{bail, ensure, Context, Result};
use runtime::{CompileOptions, HostArray, Program};
use std::path::Path;
use testkit::{failed, fixtures, gemma_xla, scratch, succeeded};

const BIN: &str = env!("CARGO_BIN_EXE_gemma-xla");

#[derive(serde::Deserialize)]
struct Cases {
    jax: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    dir: String,
    dtype: String,
    args: usize,
    outputs: Vec<String>,
    complex_outputs: Vec<bool>,
    native_complex: bool,
    partitions: usize,
    targets: Vec<String>,
}

fn cases() -> Cases {
    let text = std::fs::read_to_string(fixtures("linalg").join("cases.json")).expect("fixtures/linalg/cases.json");
    serde_json::from_str(&text).expect("cases.json")
}

/// Tolerance relative to max(1, largest |value|) of the expected output.
fn tolerance(dtype: &str) -> f64 {
    if dtype == "f32" || dtype == "c64" {
        2e-4
    } else {
        1e-9
    }
}

/// Values as complex pairs (re, im): complex outputs are c64/c128 arrays, or real ones
/// stored as [..., 2].
fn pairs(a: &HostArray, complex: bool) -> (Vec<usize>, Vec<(f64, f64)>) {
    let v = a.to_f64_vec();
    let mut dims: Vec<usize> = a.dims().iter().map(|&d| d as usize).collect();
    if a.dtype().is_complex() {
        (dims, v.chunks(2).map(|c| (c[0], c[1])).collect())
    } else if complex && dims.last() == Some(&2) {
        dims.pop();
        (dims, v.chunks(2).map(|c| (c[0], c[1])).collect())
    } else {
        (dims, v.into_iter().map(|x| (x, 0.0)).collect())
    }
}

fn norm(x: (f64, f64)) -> f64 {
    x.0.hypot(x.1)
}

/// `ours` rescaled per column ("cols") or row ("rows") of each matrix by the unit factor that
/// makes its largest-in-`want` entry agree with `want` (signs of real vectors, phases of
/// complex ones).
fn align(ours: &mut [(f64, f64)], want: &[(f64, f64)], dims: &[usize], by_rows: bool) {
    let (rows, cols) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let per = rows * cols;
    if per == 0 {
        return;
    }
    for m in 0..ours.len() / per {
        let lines = if by_rows { rows } else { cols };
        let len = if by_rows { cols } else { rows };
        for l in 0..lines {
            let at = |k: usize| m * per + if by_rows { l * cols + k } else { k * cols + l };
            let best = (0..len).max_by(|&a, &b| norm(want[at(a)]).total_cmp(&norm(want[at(b)]))).unwrap();
            let (w, o) = (want[at(best)], ours[at(best)]);
            if norm(o) == 0.0 {
                continue;
            }
            // f = (w / o) / |w / o|
            let d = o.0 * o.0 + o.1 * o.1;
            let q = ((w.0 * o.0 + w.1 * o.1) / d, (w.1 * o.0 - w.0 * o.1) / d);
            let f = (q.0 / norm(q), q.1 / norm(q));
            for k in 0..len {
                let x = ours[at(k)];
                ours[at(k)] = (x.0 * f.0 - x.1 * f.1, x.0 * f.1 + x.1 * f.0);
            }
        }
    }
}

fn compare(case: &Case, i: usize, ours: &HostArray, want: &HostArray) -> Result<()> {
    let what = format!("{} output {i} ({})", case.dir, case.outputs[i]);
    ensure!(ours.dims() == want.dims(), "{what}: shape {:?}, JAX {:?}", ours.dims(), want.dims());
    ensure!(ours.dtype() == want.dtype(), "{what}: dtype {:?}, JAX {:?}", ours.dtype(), want.dtype());
    let complex = case.complex_outputs[i];
    let (dims, mut o) = pairs(ours, complex);
    let (_, w) = pairs(want, complex);
    match case.outputs[i].as_str() {
        "cols" => align(&mut o, &w, &dims, false),
        "rows" => align(&mut o, &w, &dims, true),
        _ => {}
    }
    let exact = case.outputs[i] == "exact";
    let scale = w.iter().filter(|x| x.0.is_finite() && x.1.is_finite()).map(|&x| norm(x)).fold(1.0, f64::max);
    let tol = if exact { 0.0 } else { tolerance(&case.dtype) * scale };
    for (k, (a, b)) in o.iter().zip(&w).enumerate() {
        let same_nan = |x: f64, y: f64| x.is_nan() && y.is_nan();
        let ok = |x: f64, y: f64| same_nan(x, y) || x == y || (x - y).abs() <= tol;
        if !(ok(a.0, b.0) && ok(a.1, b.1)) {
            bail!("{what}: element {k} is {a:?}, JAX {b:?} (tolerance {tol:e})");
        }
    }
    Ok(())
}

fn read_npy(path: &Path) -> Result<HostArray> {
    data::npy::read(path).with_context(|| path.display().to_string())
}

#[test]
fn every_jax_linalg_program_matches_jax() -> Result<()> {
    let all = cases();
    assert_eq!(all.jax, "0.10.2");
    assert!(all.cases.len() >= 80, "{} cases", all.cases.len());
    let (client, _cache) = testkit::cpu_client(1);
    let mut seen = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for case in all.cases.iter().filter(|c| c.partitions == 1) {
        let dir = fixtures("linalg").join(&case.dir);
        let program = Program::from_file(&dir.join("program.mlir"))?;
        let exe = client.compile(&program, &CompileOptions::single_device()).with_context(|| case.dir.clone())?;
        let args: Vec<HostArray> = (0..case.args).map(|i| read_npy(&dir.join(format!("arg_{i}.npy")))).collect::<Result<_>>()?;
        let outs = exe.run(&client, &args).with_context(|| case.dir.clone())?;
        assert_eq!(outs.len(), case.outputs.len(), "{}", case.dir);
        for (i, out) in outs.iter().enumerate() {
            let want = read_npy(&dir.join(format!("want_{i}.npy")))?;
            if let Err(e) = compare(case, i, out, &want) {
                failures.push(e.to_string());
            }
        }
        seen.extend(case.targets.iter().cloned());
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    // Every target we provide is exercised by some program.
    for t in runtime::linalg::targets() {
        assert!(seen.contains(&t), "no fixture calls {t}");
    }
    Ok(())
}

#[test]
fn the_comparison_catches_a_wrong_answer() -> Result<()> {
    // The checks above would pass vacuously if `compare` accepted anything.
    let all = cases();
    let case = all.cases.iter().find(|c| c.dir == "solve_f64").unwrap();
    let want = read_npy(&fixtures("linalg").join("solve_f64/want_0.npy"))?;
    let mut v = want.to_vec::<f64>()?;
    v[3] += 1e-6;
    let off = HostArray::from_vec(want.dims(), v)?;
    assert!(compare(case, 0, &off, &want).is_err());
    assert!(compare(case, 0, &want, &want).is_ok());
    // A flipped eigenvector passes as "cols"; a changed one does not.
    let eigh = all.cases.iter().find(|c| c.dir == "eigh_f64").unwrap();
    let v = read_npy(&fixtures("linalg").join("eigh_f64/want_1.npy"))?;
    let dims = v.dims().to_vec();
    let mut flipped = v.to_vec::<f64>()?;
    for r in 0..5 {
        flipped[r * 5 + 2] = -flipped[r * 5 + 2];
    }
    assert!(compare(eigh, 1, &HostArray::from_vec(&dims, flipped.clone())?, &v).is_ok());
    flipped[7] *= 1.01;
    assert!(compare(eigh, 1, &HostArray::from_vec(&dims, flipped)?, &v).is_err());
    Ok(())
}

#[test]
fn run_executes_a_jax_linalg_program_and_devices_lists_the_targets() {
    let dir = fixtures("linalg").join("solve_f32");
    let out = scratch("linalg-run");
    let o = gemma_xla(BIN)
        .arg("run")
        .arg(dir.join("program.mlir"))
        .args(["--arg", &dir.join("arg_0.npy").to_string_lossy(), "--arg", &dir.join("arg_1.npy").to_string_lossy()])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    succeeded(&o);
    let all = cases();
    let case = all.cases.iter().find(|c| c.dir == "solve_f32").unwrap();
    for i in 0..case.outputs.len() {
        let ours = read_npy(&out.path().join(format!("out_{i}.npy"))).unwrap();
        let want = read_npy(&dir.join(format!("want_{i}.npy"))).unwrap();
        compare(case, i, &ours, &want).unwrap();
    }
    let o = gemma_xla(BIN).arg("devices").output().unwrap();
    let text = succeeded(&o);
    let line = text.lines().find(|l| l.starts_with("ffi targets: ")).expect(&text);
    for t in ["lapack_sgetrf_ffi", "lapack_zheevd_ffi", "lapack_dorgqr_ffi", "lapack_cgesdd_ffi", "lapack_strsm_ffi"] {
        assert!(line.contains(t), "{line}");
    }
}

/// `run` of the f64 Cholesky fixture with `from` replaced by `to` in its text; its stderr
/// (it must fail, without a panic).
fn run_altered_cholesky(tag: &str, from: &str, to: &str) -> String {
    let out = scratch(tag);
    let text = std::fs::read_to_string(fixtures("linalg").join("cholesky_f64/program.mlir")).unwrap();
    assert!(text.contains(from));
    let program = out.path().join("program.mlir");
    std::fs::write(&program, text.replace(from, to)).unwrap();
    let o = gemma_xla(BIN)
        .arg("run")
        .arg(&program)
        .args(["--arg", &fixtures("linalg").join("cholesky_f64/arg_0.npy").to_string_lossy()])
        .arg("--out")
        .arg(out.path().join("out"))
        .output()
        .unwrap();
    let err = failed(&o);
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn an_unknown_custom_call_target_fails_with_xlas_error_naming_it() {
    let err = run_altered_cholesky("linalg-unknown", "@lapack_dpotrf_ffi", "@lapack_dpotrf_nonexistent_ffi");
    assert!(err.contains("lapack_dpotrf_nonexistent_ffi"), "{err}");
}

#[test]
fn a_bad_attribute_fails_the_run_with_the_handlers_message() {
    let err = run_altered_cholesky("linalg-attr", "uplo = 76 : ui8", "uplo = 88 : ui8");
    assert!(err.contains("potrf: attribute uplo = Int(88), expected one of 'L', 'U'"), "{err}");
}

#[test]
fn run_takes_and_writes_complex_arrays() {
    // Programs whose own arguments and results are complex (eig of a real matrix, solve of
    // complex ones): c64/c128 .npy in, c64/c128 .npy out, as numpy writes and reads them.
    let all = cases();
    let native: Vec<&Case> = all.cases.iter().filter(|c| c.native_complex).collect();
    assert_eq!(native.len(), 8);
    for case in native {
        let dir = fixtures("linalg").join(&case.dir);
        let out = scratch("linalg-native");
        let mut cmd = gemma_xla(BIN);
        cmd.arg("run").arg(dir.join("program.mlir")).arg("--out").arg(out.path());
        for i in 0..case.args {
            cmd.arg("--arg").arg(dir.join(format!("arg_{i}.npy")));
        }
        let text = succeeded(&cmd.output().unwrap());
        for i in 0..case.outputs.len() {
            let ours = read_npy(&out.path().join(format!("out_{i}.npy"))).unwrap();
            let want = read_npy(&dir.join(format!("want_{i}.npy"))).unwrap();
            assert_eq!(ours.dtype().is_complex(), case.complex_outputs[i], "{}", case.dir);
            compare(case, i, &ours, &want).unwrap();
        }
        if case.dir == "native_eig_f64" {
            // The summary prints complex values as a+bj.
            assert!(text.contains("c128[5]") && text.contains("j, "), "{text}");
        }
    }
}

#[test]
fn a_batch_split_over_two_devices_runs_each_half_through_the_handlers() {
    // JAX's own SPMD lowering (mhlo.num_partitions = 2, the batch dimension sharded): XLA
    // partitions the custom calls by their batch dimension and each device runs its half.
    let all = cases();
    let case = all.cases.iter().find(|c| c.partitions == 2).expect("an SPMD fixture");
    let dir = fixtures("linalg").join(&case.dir);
    let out = scratch("linalg-spmd");
    let o = gemma_xla(BIN)
        .arg("run")
        .arg(dir.join("program.mlir"))
        .arg("--arg")
        .arg(dir.join("arg_0.npy"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let text = succeeded(&o);
    assert!(text.contains("on 2 device(s)") && text.contains("sharding={devices=[2,1,1]0,1}"), "{text}");
    for i in 0..case.outputs.len() {
        let ours = read_npy(&out.path().join(format!("out_{i}.npy"))).unwrap();
        let want = read_npy(&dir.join(format!("want_{i}.npy"))).unwrap();
        compare(case, i, &ours, &want).unwrap();
    }
}
