//! Sharding constraints inside a traced function on the CPU plugin over a data=2,model=4 mesh
//! of 8 devices: the constrained program gives the single-device numbers, its StableHLO
//! carries `sdy.sharding_constraint`, and XLA honours the constraint (a constrained
//! intermediate returned without an output sharding comes back split as constrained).
use anyhow::Result;
use graph::{Tensor, TensorType, Tree};
use jit::Jit;
use runtime::{Arg, Client, CompileOptions, DeviceArray, HostArray, NamedSharding, PluginSpec, Program};
use sharding::{Mesh, PartitionSpec};

const B: i64 = 8;
const K: i64 = 6;
const H: i64 = 16;

fn data(n: i64, seed: f64) -> Vec<f64> {
    (0..n).map(|i| (i as f64 * 0.37 + seed).sin() * 1.3).collect()
}

fn mesh() -> Mesh {
    Mesh::parse("data=2,model=4").expect("mesh")
}

fn both() -> PartitionSpec {
    PartitionSpec::new(&[&["data"], &["model"]])
}

/// h = x @ w constrained to (data, model) when `constrain`; then per-row and total sums.
fn model(a: &Tree<Tensor>, constrain: bool) -> Tree<Tensor> {
    let x = a.get("x").expect("x");
    let w = a.get("w").expect("w");
    let mut h = x.matmul(w);
    if constrain {
        h = h.with_sharding_constraint(&both());
    }
    let t = h.tanh();
    Tree::new().with("rows", t.sum(&[1])).and_then(|tree| tree.with("total", t.sum_all())).expect("paths")
}

#[test]
fn a_constrained_matmul_over_eight_devices_gives_the_single_device_numbers() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(8))?;
    let args = Tree::from_leaves([
        ("w", HostArray::from_vec(&[K, H], data(K * H, 1.7))?),
        ("x", HostArray::from_vec(&[B, K], data(B * K, 0.1))?),
    ])?;
    let plain = Jit::new("plain", &client, |a: &Tree<Tensor>| model(a, false));
    let sharded = Jit::new("constrained", &client, |a: &Tree<Tensor>| model(a, true))
        .with_mesh(mesh())
        .with_rule(|path, _| (path == "x").then(|| PartitionSpec::new(&[&["data"], &[]])));
    let want = plain.call_host(&args)?;
    let got = sharded.call_host(&args)?;
    for ((p, g), (_, w)) in got.iter().zip(want.iter()) {
        assert_eq!(g.dims(), w.dims(), "{p}");
        for (i, (a, b)) in g.to_vec::<f64>()?.iter().zip(w.to_vec::<f64>()?).enumerate() {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{p}[{i}]: {a} sharded, {b} on one device");
        }
    }
    let text = sharded.last_function().expect("compiled").to_stablehlo()?;
    let op = r#""sdy.sharding_constraint"(%0) {sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>} : (tensor<8x16xf64>) -> tensor<8x16xf64> loc("#;
    assert!(text.contains(op), "{text}");
    let single = plain.last_function().expect("compiled").to_stablehlo()?;
    assert!(!single.contains("sdy."), "{single}");
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

/// Compiles x @ w (optionally constrained) over the mesh with the product returned as an
/// output that has no sharding of its own, runs it on replicated inputs, and returns the
/// output's sharding as the program reports it, and its values.
fn run_unannotated(client: &Client, constrain: bool, x: &HostArray, w: &HostArray) -> Result<(NamedSharding, Vec<f64>)> {
    let types = [("x", TensorType::new(graph::DType::F64, &[B, K])), ("w", TensorType::new(graph::DType::F64, &[K, H]))];
    let f = graph::trace("h", &types, |a| {
        let h = a[0].matmul(&a[1]);
        vec![if constrain { h.with_sharding_constraint(&both()) } else { h }]
    })?
    .with_mesh(mesh())?
    .shard_param(0, PartitionSpec::replicated(2))?
    .shard_param(1, PartitionSpec::replicated(2))?;
    let exe = client.compile(&Program::from_text(&f.to_stablehlo()?)?, &CompileOptions::for_mesh(&mesh()))?;
    let replicated = NamedSharding::replicated(mesh(), 2);
    let args = vec![Arg::Donate(DeviceArray::place(client, x, &replicated)?), Arg::Donate(DeviceArray::place(client, w, &replicated)?)];
    let out = exe.call(args)?.remove(0);
    Ok((out.sharding().clone(), out.fetch()?.to_vec::<f64>()?))
}

#[test]
fn xla_keeps_a_constrained_intermediate_split_as_constrained() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(8))?;
    let x = HostArray::from_vec(&[B, K], data(B * K, 0.1))?;
    let w = HostArray::from_vec(&[K, H], data(K * H, 1.7))?;
    let (free, want) = run_unannotated(&client, false, &x, &w)?;
    let (held, got) = run_unannotated(&client, true, &x, &w)?;
    assert_eq!(held.spec, both(), "the constrained product comes back as {}", held.spec);
    assert_eq!(free.spec, PartitionSpec::replicated(2), "without the constraint the replicated inputs give a replicated product");
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "h[{i}]: {a} constrained, {b} free");
    }
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}
