//! `gemma-xla devices` and `gemma-xla run` as a user runs them: real programs on the real
//! CPU plugin, and every kind of bad input giving a clear error and a non-zero exit.
use std::path::{Path, PathBuf};
use std::process::Output;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gemma_xla(args: &[&str]) -> Output {
    testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla")).args(args).current_dir(repo()).output().expect("spawn gemma-xla")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir(&format!("cli-{name}"))
}

fn read_f32(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let npy = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

fn write_npy<T: npyz::AutoSerialize + npyz::Serialize + Clone>(path: &Path, shape: &[u64], values: &[T]) {
    use npyz::WriterBuilder;
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::<T>::new().default_dtype().shape(shape).writer(f).begin_nd().unwrap();
    w.extend(values.iter().cloned()).unwrap();
    w.finish().unwrap();
}

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let o = gemma_xla(args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1 for {args:?}\nstdout: {out}\nstderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Runs a command that must succeed; returns its stdout.
fn succeeds(args: &[&str]) -> String {
    let o = gemma_xla(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

const EXAMPLE: [&str; 8] =
    ["run", "examples/spmd_matmul.mlir", "--arg", "examples/x.npy", "--arg", "examples/w.npy", "--arg", "examples/b.npy"];

#[test]
fn devices_lists_the_plugin_and_eight_devices() {
    let o = gemma_xla(&["devices", "--devices", "8"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("platform: cpu"), "{out}");
    assert!(out.contains("pjrt_c_api: 0.115 (gemma-xla bindings: 0.114)"), "{out}");
    assert!(out.contains("stablehlo: 0.9.0 to 1.20.0"), "{out}");
    assert!(out.contains("devices: 8"), "{out}");
    assert!(out.contains("  device 7: kind=cpu"), "{out}");
}

/// The binary re-executes itself with glibc's huge-page tunable (runtime::host_malloc) unless
/// the caller set GLIBC_TUNABLES, to anything: the arguments survive the re-exec either way.
#[test]
fn devices_reports_the_host_malloc_setting() {
    let run = |tunables: Option<&str>| {
        let mut c = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"));
        c.args(["devices", "--devices", "2"]).current_dir(repo()).env_remove("GLIBC_TUNABLES");
        if let Some(t) = tunables {
            c.env("GLIBC_TUNABLES", t);
        }
        let o = c.output().expect("spawn gemma-xla");
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        assert!(out.contains("devices: 2"), "{out}");
        out.lines().find(|l| l.starts_with("host malloc: ")).unwrap_or_else(|| panic!("no host malloc line: {out}")).to_string()
    };
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(run(None).starts_with("host malloc: GLIBC_TUNABLES=glibc.malloc.hugetlb=1;"), "{}", run(None));
    }
    assert!(run(Some("")).starts_with("host malloc: glibc defaults"), "{}", run(Some("")));
    let own = run(Some("glibc.malloc.arena_max=2"));
    assert!(own.starts_with("host malloc: GLIBC_TUNABLES=glibc.malloc.arena_max=2;"), "{own}");
}

#[test]
fn run_the_shipped_spmd_example_over_eight_devices() {
    let dir = scratch("example");
    let out_dir = dir.join("out");
    let mut args = EXAMPLE.to_vec();
    args.extend(["--out", out_dir.to_str().unwrap()]);
    let o = gemma_xla(&args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("2 output(s) on 8 device(s)"), "{out}");
    assert!(
        out.contains("f32[4,4] sharding={devices=[2,1,4]0,1,2,3,4,5,6,7 last_tile_dim_replicate} [0.5, -1, 3, 0.625, 0.5, -0.5, ...]"),
        "{out}"
    );
    assert!(out.contains("f32[] sharding={replicated} [15]"), "{out}");
    // numpy's results, written by examples/make_inputs.py.
    let (shape, y) = read_f32(&out_dir.join("out_0.npy"));
    let (_, expected) = read_f32(&repo().join("examples/expected_y.npy"));
    assert_eq!(shape, vec![4, 4]);
    assert_eq!(y, expected);
    let (shape, sum) = read_f32(&out_dir.join("out_1.npy"));
    assert_eq!(shape, Vec::<u64>::new());
    assert_eq!(sum, vec![15.0]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_a_single_device_program_with_int_and_bool_arrays() {
    let dir = scratch("single");
    let prog = dir.join("select.mlir");
    std::fs::write(
        &prog,
        r#"func.func public @main(%c: tensor<3xi1>, %a: tensor<3xi32>, %b: tensor<3xi64>) -> (tensor<3xi64>, tensor<3xf64>) {
  %a64 = stablehlo.convert %a : (tensor<3xi32>) -> tensor<3xi64>
  %s = stablehlo.select %c, %a64, %b : tensor<3xi1>, tensor<3xi64>
  %f = stablehlo.convert %s : (tensor<3xi64>) -> tensor<3xf64>
  return %s, %f : tensor<3xi64>, tensor<3xf64>
}"#,
    )
    .unwrap();
    write_npy(&dir.join("c.npy"), &[3], &[true, false, true]);
    write_npy(&dir.join("a.npy"), &[3], &[1i32, 2, 3]);
    write_npy(&dir.join("b.npy"), &[3], &[-10i64, -20, -30]);
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let o = gemma_xla(&["run", &p("select.mlir"), "--arg", &p("c.npy"), "--arg", &p("a.npy"), "--arg", &p("b.npy"), "--out", &p("o")]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("s64[3] [1, -20, 3]"), "{out}");
    let npy = npyz::NpyFile::new(std::fs::File::open(dir.join("o/out_1.npy")).unwrap()).unwrap();
    assert_eq!(npy.into_vec::<f64>().unwrap(), vec![1.0, -20.0, 3.0]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_and_bogus_plugins() {
    let err = fails(&["devices", "--plugin", "/nonexistent/libpjrt.so"]);
    assert!(err.contains("PJRT plugin file /nonexistent/libpjrt.so does not exist"), "{err}");
    let dir = scratch("plugin");
    let fake = dir.join("fake.so");
    std::fs::write(&fake, "hello").unwrap();
    let err = fails(&["devices", "--plugin", fake.to_str().unwrap()]);
    assert!(err.contains(&format!("cannot load PJRT plugin {}: not an ELF shared library", fake.display())), "{err}");
    let err = fails(&["devices", "--plugin", dir.to_str().unwrap()]);
    assert!(err.contains(&format!("PJRT plugin path {} is a directory; expected a PJRT plugin .so file", dir.display())), "{err}");
    let err = fails(&["devices", "--plugin", "rocm"]);
    assert!(err.contains("unknown plugin \"rocm\""), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_program_with_a_syntax_error_shows_the_compiler_message() {
    let dir = scratch("syntax");
    let prog = dir.join("bad.mlir");
    std::fs::write(&prog, "func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.add %a, %a : tensor<2xf32>\n  return %0 : tensor<2xf32\n}\n").unwrap();
    let err = fails(&["run", prog.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    assert!(err.contains(&format!("cannot compile {}", prog.display())), "{err}");
    assert!(err.contains("PJRT_Client_Compile failed with"), "{err}");
    assert!(err.contains("3:"), "the message should point at line 3: {err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wrong_arguments_name_the_file() {
    let dir = scratch("args");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    write_npy(&dir.join("x_f64.npy"), &[4, 8], &[0f64; 32]);
    write_npy(&dir.join("x_short.npy"), &[4, 7], &[0f32; 28]);
    let out = p("o");
    // Too few arguments.
    let err = fails(&["run", "examples/spmd_matmul.mlir", "--arg", "examples/x.npy", "--out", &out]);
    assert!(err.contains("the program takes 3 arguments but 1 were given"), "{err}");
    // Wrong dtype.
    let err = fails(&[
        "run",
        "examples/spmd_matmul.mlir",
        "--arg",
        &p("x_f64.npy"),
        "--arg",
        "examples/w.npy",
        "--arg",
        "examples/b.npy",
        "--out",
        &out,
    ]);
    assert!(err.contains(&format!("--arg {} (argument 0): the program expects f32[4,8], got f64[4,8]", p("x_f64.npy"))), "{err}");
    // Wrong shape.
    let err = fails(&[
        "run",
        "examples/spmd_matmul.mlir",
        "--arg",
        &p("x_short.npy"),
        "--arg",
        "examples/w.npy",
        "--arg",
        "examples/b.npy",
        "--out",
        &out,
    ]);
    assert!(err.contains("(argument 0): the program expects f32[4,8], got f32[4,7]"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn broken_npy_files_name_the_file() {
    let dir = scratch("npy");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let good = std::fs::read(repo().join("examples/x.npy")).unwrap();
    std::fs::write(dir.join("truncated.npy"), &good[..good.len() - 10]).unwrap();
    std::fs::write(dir.join("text.npy"), "x,y\n1,2\n").unwrap();
    // A byte-string array ('|S2'), as numpy writes np.array([b"ab", b"cd"]).
    let header = "{'descr': '|S2', 'fortran_order': False, 'shape': (2,), }";
    let mut strings = b"\x93NUMPY\x01\x00".to_vec();
    let padded = format!("{header:<117}\n");
    strings.extend((padded.len() as u16).to_le_bytes());
    strings.extend(padded.as_bytes());
    strings.extend(b"abcd");
    std::fs::write(dir.join("strings.npy"), strings).unwrap();
    for (file, why) in [("truncated.npy", ""), ("text.npy", ""), ("strings.npy", "not supported"), ("missing.npy", "No such file")] {
        let err = fails(&["run", "examples/spmd_matmul.mlir", "--arg", &p(file), "--out", &p("o")]);
        assert!(err.contains(&format!("cannot read {}", p(file))), "{file}: {err}");
        assert!(err.contains(why), "{file}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn zero_devices_are_refused_by_every_command() {
    for args in [
        &["devices", "--devices", "0"][..],
        &["run", "examples/spmd_matmul.mlir", "--devices", "0"],
        &["forward", "--devices", "0"],
        &["train", "--devices", "0"],
        &["plan", "--devices", "0"],
    ] {
        let o = gemma_xla(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}\nstdout: {out}\nstderr: {err}");
        assert!(err.contains("invalid value '0' for '--devices"), "{args:?}: {err}");
    }
    let o = gemma_xla(&["devices", "--devices", "0"]);
    assert!(text(&o).1.contains("the number of devices must be at least 1"));
}

#[test]
fn more_partitions_than_devices() {
    let mut args = EXAMPLE.to_vec();
    args.extend(["--devices", "2", "--out", "/tmp/gemma-xla-cli-unused"]);
    let err = fails(&args);
    assert!(err.contains("the program needs 8 devices but the client has 2 (ask for more with --devices 8)"), "{err}");
}

#[test]
fn an_output_directory_that_cannot_be_written() {
    let dir = scratch("outdir");
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad = file.join("out");
    let mut args = EXAMPLE.to_vec();
    args.extend(["--out", bad.to_str().unwrap()]);
    let err = fails(&args);
    assert!(err.contains(&format!("cannot create output directory {}", bad.display())), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn text_bytecode_and_hlo_proto_programs_give_jax_numbers() {
    // examples/fixtures/make_fixtures.py wrote one function (tanh(x @ w) + 1) in all three
    // formats with JAX, and numpy's result.
    let (_, expected) = read_f32(&repo().join("examples/fixtures/affine_expected.npy"));
    for program in ["affine.mlir", "affine.mlirbc", "affine.pb"] {
        let dir = scratch(&format!("fmt-{program}"));
        let path = format!("examples/fixtures/{program}");
        let o = gemma_xla(&[
            "run",
            &path,
            "--arg",
            "examples/fixtures/affine_x.npy",
            "--arg",
            "examples/fixtures/affine_w.npy",
            "--out",
            dir.to_str().unwrap(),
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{program}: {err}");
        assert!(out.contains("1 output(s) on 1 device(s)"), "{out}");
        let (shape, got) = read_f32(&dir.join("out_0.npy"));
        assert_eq!(shape, vec![2, 2]);
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-6, "{program}: {got:?} vs {expected:?}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn without_pip_the_error_gives_the_command_to_run() {
    let cache = scratch("nopip");
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["devices"])
        .env("GEMMA_XLA_CACHE", &cache)
        .env("PYTHON", "/nonexistent/python3")
        .env_remove("GEMMA_XLA_PLUGIN")
        .env_remove("GEMMA_XLA_PLUGIN_SOURCE")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot install the CPU PJRT plugin: pip is not available"), "{err}");
    assert!(err.contains("run `gemma-xla plugin install --force`"), "{err}");
    assert!(err.contains("GEMMA_XLA_PLUGIN_SOURCE=/path/to/pjrt_c_api_cpu_plugin.so gemma-xla plugin install --force"), "{err}");
    let dest = cache.join("plugins/lammps-jax-pjrt-cpu-0.11.2");
    assert!(!dest.exists(), "nothing half-installed is left where the plugin is looked for");
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("plugins")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn the_plugin_environment_variable_is_honoured() {
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["devices"])
        .env("GEMMA_XLA_PLUGIN", "/nonexistent/from-env.so")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("PJRT plugin file /nonexistent/from-env.so does not exist"), "{err}");
}

#[test]
fn xla_dumps_point_back_to_the_rust_lines_that_made_each_op() {
    // An MLP gradient traced here: its ops carry loc("gemma-xla/tests/cli.rs":L:C).
    let dir = scratch("dump");
    let f32t = |d: &[i64]| graph::TensorType::new(graph::DType::F32, d);
    let mlp = graph::trace("mlp", &[("x", f32t(&[4, 3])), ("w1", f32t(&[3, 5])), ("w2", f32t(&[5, 2])), ("y", f32t(&[4, 2]))], |a| {
        let err = a[0].matmul(&a[1]).tanh().matmul(&a[2]) - &a[3];
        vec![(&err * &err).mean(&[0, 1])]
    })
    .unwrap();
    let line = line!() - 4;
    let program = graph::value_and_grad(&mlp, &[1, 2]).unwrap().to_stablehlo().unwrap();
    std::fs::write(dir.join("mlp.mlir"), program).unwrap();
    for (name, shape) in [("x", [4u64, 3]), ("w1", [3, 5]), ("w2", [5, 2]), ("y", [4, 2])] {
        let n = (shape[0] * shape[1]) as usize;
        write_npy(&dir.join(format!("{name}.npy")), &shape, &vec![0.5f32; n]);
    }
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
        .args(["run", &p("mlp.mlir")])
        .args(["--arg", &p("x.npy"), "--arg", &p("w1.npy"), "--arg", &p("w2.npy"), "--arg", &p("y.npy"), "--out", &p("o")])
        .env("XLA_FLAGS", format!("--xla_dump_to={} --xla_dump_hlo_as_text", p("dump")))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let hlo = std::fs::read_dir(dir.join("dump"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("before_optimizations.txt"))
        .expect("an HLO dump");
    let hlo = std::fs::read_to_string(hlo).unwrap();
    assert!(hlo.contains(&format!(r#"source_file="gemma-xla/tests/cli.rs" source_line={line}"#)), "{hlo}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cuda_and_tpu_plugins_are_found_where_pip_puts_them() {
    // Fake site-packages with the files pip would install; loading them then fails, which
    // proves discovery found them.
    let site = scratch("site");
    let cuda = site.join("jax_plugins/xla_cuda12/xla_cuda_plugin.so");
    let tpu = site.join("libtpu/libtpu.so");
    for f in [&cuda, &tpu] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "not really a plugin").unwrap();
    }
    let devices = |plugin: &str, pythonpath: &Path| {
        let o = testkit::gemma_xla(env!("CARGO_BIN_EXE_gemma-xla"))
            .args(["devices", "--plugin", plugin])
            .env("PYTHONPATH", pythonpath)
            .env_remove("TPU_LIBRARY_PATH")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        text(&o).1
    };
    let err = devices("cuda", &site);
    assert!(err.contains(&format!("cannot load PJRT plugin {}", cuda.display())), "{err}");
    let err = devices("tpu", &site);
    assert!(err.contains(&format!("cannot load PJRT plugin {}", tpu.display())), "{err}");
    let empty = scratch("site-empty");
    let err = devices("cuda", &empty);
    assert!(err.contains("no CUDA PJRT plugin found"), "{err}");
    assert!(err.contains("pip install jax-cuda12-pjrt"), "{err}");
    std::fs::remove_dir_all(site).unwrap();
    std::fs::remove_dir_all(empty).unwrap();
}

/// The files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn every_format_checks_arguments_against_the_compiled_program() {
    // Swapped x and w have the same byte size (6 floats), as does an int32 copy of x: all
    // three formats must refuse them, from the types XLA compiled, naming the file.
    let dir = scratch("compiled-types");
    let x_i32 = dir.join("x_i32.npy");
    write_npy(&x_i32, &[2, 3], &[1i32, 2, 3, 4, 5, 6]);
    let (x, w) = ("examples/fixtures/affine_x.npy", "examples/fixtures/affine_w.npy");
    let out = dir.join("o");
    for program in ["affine.pb", "affine.mlirbc", "affine.mlir"] {
        let path = format!("examples/fixtures/{program}");
        let err = fails(&["run", &path, "--arg", w, "--arg", x, "--out", out.to_str().unwrap()]);
        assert!(err.contains(&format!("--arg {w} (argument 0): the program expects f32[2,3], got f32[3,2]")), "{program}: {err}");
        let err = fails(&["run", &path, "--arg", x_i32.to_str().unwrap(), "--arg", w, "--out", out.to_str().unwrap()]);
        assert!(
            err.contains(&format!("--arg {} (argument 0): the program expects f32[2,3], got s32[2,3]", x_i32.display())),
            "{program}: {err}"
        );
        let err = fails(&["run", &path, "--arg", x, "--out", out.to_str().unwrap()]);
        assert!(err.contains("the program takes 2 arguments but 1 were given"), "{program}: {err}");
        assert!(!out.join("out_0.npy").exists());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn spmd_programs_without_a_readable_signature_check_each_shard() {
    // `!t` hides the signature from the text reader, as bytecode and protos do: arguments
    // are checked against the compiled per-device parameter (f32[4] under {devices=[2]0,1}).
    let dir = scratch("spmd-shards");
    let program = dir.join("alias.mlir");
    std::fs::write(
        &program,
        r#"!t = tensor<8xf32>
module @m attributes {mhlo.num_partitions = 2 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: !t {mhlo.sharding = "{devices=[2]0,1}"}) -> (!t {mhlo.sharding = "{devices=[2]0,1}"}) {
    %0 = stablehlo.add %arg0, %arg0 : !t
    return %0 : !t
  }
}
"#,
    )
    .unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    write_npy(&dir.join("x8.npy"), &[8], &[1f32, 2., 3., 4., 5., 6., 7., 8.]);
    write_npy(&dir.join("x10.npy"), &[10], &[0f32; 10]);
    write_npy(&dir.join("i8.npy"), &[8], &[0i32; 8]);
    let o = gemma_xla(&["run", &p("alias.mlir"), "--arg", &p("x8.npy"), "--out", &p("o")]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("1 output(s) on 2 device(s)"), "{out}");
    assert_eq!(read_f32(&dir.join("o/out_0.npy")), (vec![8], vec![2., 4., 6., 8., 10., 12., 14., 16.]));
    let err = fails(&["run", &p("alias.mlir"), "--arg", &p("x10.npy"), "--out", &p("o")]);
    assert!(
        err.contains(
            "(argument 0): the program expects a rank-1 array whose shards under {devices=[2]0,1} are f32[4] on each of 2 devices, \
             got f32[10], whose shards would be f32[5]"
        ),
        "{err}"
    );
    let err = fails(&["run", &p("alias.mlir"), "--arg", &p("i8.npy"), "--out", &p("o")]);
    assert!(
        err.contains(&format!("--arg {} (argument 0)", p("i8.npy"))) && err.contains("are f32[4]") && err.contains("got s32[8]"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn comments_do_not_change_the_signature_or_the_partitions() {
    let dir = scratch("comments");
    let program = dir.join("commented.mlir");
    std::fs::write(
        &program,
        r#"// func.func @main(%arg0: tensor<3xf32>) -> tensor<3xf32>
// module attributes {mhlo.num_partitions = 4 : i32}
module @m attributes {mhlo.num_replicas = 1 : i32} { // mhlo.num_partitions = 2
  func.func public @main(%arg0: tensor<2xi32>) -> tensor<2xi32> {
    %0 = stablehlo.add %arg0, %arg0 : tensor<2xi32>
    return %0 : tensor<2xi32>
  }
}
"#,
    )
    .unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    write_npy(&dir.join("i2.npy"), &[2], &[3i32, -4]);
    write_npy(&dir.join("f3.npy"), &[3], &[0f32; 3]);
    let o = gemma_xla(&["run", &p("commented.mlir"), "--arg", &p("i2.npy"), "--out", &p("o")]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("1 output(s) on 1 device(s)"), "{out}");
    assert!(out.contains("s32[2] [6, -8]"), "{out}");
    let err = fails(&["run", &p("commented.mlir"), "--arg", &p("f3.npy"), "--out", &p("o")]);
    assert!(err.contains("(argument 0): the program expects s32[2], got f32[3]"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn complex_outputs_are_written_and_fp8_outputs_refused_before_running() {
    let dir = scratch("complex");
    std::fs::write(
        dir.join("complex.mlir"),
        r#"func.func @main(%re: tensor<2xf32>, %im: tensor<2xf32>) -> tensor<2xcomplex<f32>> {
  %0 = stablehlo.complex %re, %im : tensor<2xcomplex<f32>>
  return %0 : tensor<2xcomplex<f32>>
}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("fp8.mlir"),
        r#"func.func @main(%a: tensor<2xf32>) -> tensor<2xf8E4M3FN> {
  %0 = stablehlo.convert %a : (tensor<2xf32>) -> tensor<2xf8E4M3FN>
  return %0 : tensor<2xf8E4M3FN>
}
"#,
    )
    .unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    write_npy(&dir.join("a.npy"), &[2], &[1f32, 2.]);
    let out = succeeds(&["run", &p("complex.mlir"), "--arg", &p("a.npy"), "--arg", &p("a.npy"), "--out", &p("c")]);
    assert!(out.contains("c64[2] [1+1j, 2+2j]"), "{out}");
    let z = data::npy::read(&dir.join("c/out_0.npy")).unwrap();
    assert_eq!(z.dtype(), runtime::DType::C64);
    assert_eq!(z.to_f64_vec(), vec![1., 1., 2., 2.]);
    let err = fails(&["run", &p("fp8.mlir"), "--arg", &p("a.npy"), "--out", &p("o")]);
    assert!(err.contains(&format!("{}: output 0 has type f8e4m3fn[2], which gemma-xla cannot hold", p("fp8.mlir"))), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    assert!(listing(&dir.join("o")).is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_run_replaces_every_output_of_the_previous_run() {
    let dir = scratch("stale");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let program = |n: usize| {
        let types = vec!["tensor<2xf32>"; n].join(", ");
        let values = vec!["%a"; n].join(", ");
        format!("func.func @main(%a: tensor<2xf32>) -> ({types}) {{\n  return {values} : {types}\n}}\n")
    };
    std::fs::write(dir.join("three.mlir"), program(3)).unwrap();
    std::fs::write(dir.join("two.mlir"), program(2)).unwrap();
    write_npy(&dir.join("a.npy"), &[2], &[1f32, 2.]);
    let run = |prog: &str, out: &str| {
        let o = gemma_xla(&["run", &p(prog), "--arg", &p("a.npy"), "--out", &p(out)]);
        assert!(o.status.success(), "{}", text(&o).1);
    };
    // A directory only gemma-xla writes to is swapped as a whole.
    run("three.mlir", "o");
    assert_eq!(listing(&dir.join("o")), ["manifest.json", "out_0.npy", "out_1.npy", "out_2.npy"]);
    run("two.mlir", "o");
    assert_eq!(listing(&dir.join("o")), ["manifest.json", "out_0.npy", "out_1.npy"]);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("o/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["program"], p("two.mlir"));
    assert_eq!(manifest["outputs"][1], serde_json::json!({"file": "out_1.npy", "dtype": "f32", "shape": [2]}));
    assert_eq!(manifest["outputs"].as_array().unwrap().len(), 2);
    assert!(!listing(&dir).iter().any(|n| n.starts_with('.')), "{:?}", listing(&dir));
    // One holding the user's files too is updated in place; their files stay.
    std::fs::create_dir(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/notes.txt"), "keep me").unwrap();
    run("three.mlir", "mine");
    run("two.mlir", "mine");
    assert_eq!(listing(&dir.join("mine")), ["manifest.json", "notes.txt", "out_0.npy", "out_1.npy"]);
    std::fs::remove_dir_all(dir).unwrap();
}
