//! A tiny SGD step, `step(params, batch) = params - lr * grad(loss)(params, batch)`, traced
//! through `Function::call` (the loss's value_and_grad inlined into the step's trace), run
//! for ten steps on a 4-device mesh with the parameters donated and kept on the devices,
//! and compared with the same updates done by hand on the host.
use anyhow::Result;
use graph::{Tensor, Tree};
use jit::Jit;
use runtime::{Arg, Client, DeviceArray, HostArray, Mesh, NamedSharding, PartitionSpec, PluginSpec};

const N: usize = 8; // examples
const D: usize = 3; // features
const LR: f64 = 0.1;

/// loss = mean((x w + b - y)^2) over the tree {params.{w, b}, batch.{x, y}}.
fn loss(a: &Tree<Tensor>) -> Tree<Tensor> {
    let g = |p: &str| a.get(p).expect("argument").clone();
    let err = g("batch.x").matmul(&g("params.w")) + g("params.b") - g("batch.y");
    Tree::new().with("loss", (&err * &err).mean(&[0])).expect("path")
}

fn step(a: &Tree<Tensor>) -> Result<Tree<Tensor>, graph::Error> {
    let f = graph::trace_tree("loss", &a.map(|_, t| t.ty()), loss)?;
    let out = graph::value_and_grad_tree(&f, "loss", "params")?.call_tree(a);
    let mut next = Tree::new().with("loss", out.leaf("loss")?.clone())?;
    for (path, p) in a.subtree("params").iter() {
        let g = out.leaf(&format!("grad.params.{path}"))?;
        next.insert(format!("params.{path}"), p - &(g * LR))?;
    }
    Ok(next)
}

fn by_hand(x: &[f64], y: &[f64], w: &mut [f64], b: &mut f64) -> f64 {
    let mut gw = [0.0; D];
    let (mut gb, mut loss) = (0.0, 0.0);
    for n in 0..N {
        let e: f64 = (0..D).map(|d| x[n * D + d] * w[d]).sum::<f64>() + *b - y[n];
        loss += e * e / N as f64;
        for d in 0..D {
            gw[d] += 2.0 * e * x[n * D + d] / N as f64;
        }
        gb += 2.0 * e / N as f64;
    }
    for d in 0..D {
        w[d] -= LR * gw[d];
    }
    *b -= LR * gb;
    loss
}

#[test]
fn ten_sgd_steps_on_the_devices_match_the_updates_by_hand() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(4))?;
    let mesh = Mesh::parse("data=4")?;
    let x: Vec<f64> = (0..N * D).map(|i| ((i * 7 % 11) as f64 - 5.0) / 4.0).collect();
    let y: Vec<f64> = (0..N).map(|i| (i as f64 * 0.9).sin()).collect();
    let rows = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&["data"], &[]]))?;
    let place = |h: HostArray, spec: PartitionSpec| DeviceArray::place(&client, &h, &NamedSharding::new(mesh.clone(), spec).unwrap());
    let batch_x = DeviceArray::place(&client, &HostArray::from_vec(&[N as i64, D as i64], x.clone())?, &rows)?;
    let batch_y = place(HostArray::from_vec(&[N as i64], y.clone())?, PartitionSpec::new(&[&["data"]]))?;
    let mut w = place(HostArray::from_vec(&[D as i64], vec![0.5, -0.25, 0.0])?, PartitionSpec::replicated(1))?;
    let mut b = place(HostArray::from_vec(&[], vec![0.1])?, PartitionSpec::replicated(0))?;

    let jit = Jit::new("sgd", &client, step).with_mesh(mesh.clone()).donate("params");
    let (uploads, downloads, live) = (client.uploads(), client.downloads(), client.live_buffers());
    let mut losses = Vec::new();
    for _ in 0..10 {
        let args = Tree::from_leaves([
            ("params.w", Arg::Donate(w)),
            ("params.b", Arg::Donate(b)),
            ("batch.x", Arg::Keep(&batch_x)),
            ("batch.y", Arg::Keep(&batch_y)),
        ])?;
        let mut out = jit.call(args)?;
        w = out.remove("params.w").unwrap();
        b = out.remove("params.b").unwrap();
        losses.push(out.remove("loss").unwrap());
        assert_eq!(w.sharding().spec, PartitionSpec::replicated(1), "an output keeps its argument's sharding");
    }
    assert_eq!((jit.stats().hits, jit.stats().compiles), (9, 1));
    assert_eq!((client.uploads(), client.downloads()), (uploads, downloads), "no host round trip between steps");
    assert_eq!(client.live_buffers(), live + 4 * losses.len(), "old parameters freed; only the loss scalars added");

    let (mut hw, mut hb) = (vec![0.5, -0.25, 0.0], 0.1);
    for (k, l) in losses.iter().enumerate() {
        let want = by_hand(&x, &y, &mut hw, &mut hb);
        let got = l.fetch()?.to_vec::<f64>()?[0];
        assert!((got - want).abs() < 1e-12, "step {k}: loss {got} vs {want} by hand");
    }
    let got_w = w.fetch()?.to_vec::<f64>()?;
    for d in 0..D {
        assert!((got_w[d] - hw[d]).abs() < 1e-12, "w[{d}]: {} vs {} by hand", got_w[d], hw[d]);
    }
    assert!((b.fetch()?.to_vec::<f64>()?[0] - hb).abs() < 1e-12);
    assert!(losses.first().unwrap().fetch()?.to_vec::<f64>()?[0] > losses.last().unwrap().fetch()?.to_vec::<f64>()?[0]);

    // Lending a donated parameter instead of moving it is an error naming its path.
    let err = jit
        .call(Tree::from_leaves([
            ("params.w", Arg::Keep(&w)),
            ("params.b", Arg::Donate(b)),
            ("batch.x", Arg::Keep(&batch_x)),
            ("batch.y", Arg::Keep(&batch_y)),
        ])?)
        .unwrap_err();
    assert!(err.to_string().starts_with("sgd: argument params.w: "), "{err}");
    assert!(matches!(err, jit::Error::Argument { cause: runtime::Error::MustDonate { index: 3 }, .. }), "{err}");
    drop((w, losses, batch_x, batch_y, jit));
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}
