//! Compiling ahead of time against TPU v5e topologies made by libtpu (no TPU needed). Without
//! libtpu (found, or installed by pip) the tests fail: they never pass unchecked.
use runtime::{CompileOptions, Mesh, PluginSpec, Program, Topology, XlaDump};

fn topology(name: &str) -> Option<Topology> {
    match Topology::open(&PluginSpec::Tpu, name) {
        Ok(t) => Some(t),
        Err(e @ (runtime::Error::Install { .. } | runtime::Error::PluginNotFound { .. })) => {
            panic!("this test needs libtpu (pip installs it into the plugin cache), which cannot be had here: {e}")
        }
        Err(e) => panic!("cannot make the topology {name}: {e}"),
    }
}

fn spmd_matmul() -> Program {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/spmd_matmul.mlir")).unwrap();
    Program::from_text(&text).unwrap()
}

#[test]
fn a_sharded_matmul_compiles_for_v5e_2x4_without_a_tpu() {
    let Some(topo) = topology("v5e:2x4") else { return };
    assert_eq!(topo.platform_name().unwrap(), "tpu");
    assert_eq!(topo.devices().len(), 8);
    assert_eq!(topo.num_processes(), 2);
    assert_eq!(topo.chip_kind(), "TPU v5 lite");
    assert!(topo.devices().iter().all(|d| d.coords.as_ref().is_some_and(|c| c.len() == 3)));
    // model=4 inside each host's 4 chips, data across the two hosts.
    let mesh = Mesh::parse("data=2,model=4").unwrap();
    let ids = topo.mesh_device_ids(&mesh).unwrap();
    let process = |id: i64| topo.devices().iter().find(|d| i64::from(d.id) == id).unwrap().process_index;
    assert!(ids[..4].iter().all(|&i| process(i) == 0) && ids[4..].iter().all(|&i| process(i) == 1), "{ids:?}");

    let dir = std::env::temp_dir().join(format!("runtime-topology-dump-{}", std::process::id()));
    let exe = topo.compile(&spmd_matmul(), &CompileOptions::for_mesh(&mesh).with_dump(XlaDump::to(&dir))).unwrap();
    let m = exe.memory_stats().unwrap();
    // x f32[4,8] over data x model: a 2x2 shard (16 B) padded to TPU tiles; all small.
    assert!(m.arguments > 0 && m.arguments < 1 << 20 && m.generated_code > 0, "{m:?}");
    let cost = exe.cost_analysis().unwrap();
    // One device's matmul: 2 x [2,2] x [2,4] = 32 flops, plus the elementwise ops.
    let flops = cost.flops().unwrap();
    assert!((32.0..256.0).contains(&flops), "{cost:?}");
    let sig = exe.signature().unwrap();
    assert_eq!(sig.params[0].dims, vec![2, 2]);
    assert!(!exe.serialize().unwrap().is_empty());
    let after = std::fs::read_dir(&dir).unwrap().flatten().find(|e| e.file_name().to_string_lossy().ends_with(".after_optimizations.txt"));
    let hlo = std::fs::read_to_string(after.expect("XLA's optimised HLO dump").path()).unwrap();
    assert!(hlo.contains("all-reduce"), "the contraction over model needs an all-reduce");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_names_and_meshes_are_clear_errors() {
    let err = Topology::open(&PluginSpec::Tpu, "v5litepod-8").err().unwrap().to_string();
    assert!(err.contains("unknown topology name \"v5litepod-8\"") && err.contains("v5e:2x4"), "{err}");
    let Some(topo) = topology("v5e:2x2") else { return };
    let err = topo.compile(&spmd_matmul(), &CompileOptions::for_mesh(&Mesh::parse("data=2,model=4").unwrap())).err().unwrap().to_string();
    assert!(err.contains("the mesh data=2,model=4 has 8 devices but the topology v5e:2x2 has 4"), "{err}");
}
