//! Global and addressable devices of a multi-process run, on the CPU plugin: the process index
//! comes from PJRT (the plugin's `process_id` create option stands in for a TPU host's index),
//! arrays over the global mesh hold and report only this process's shards, reading one whole
//! is a typed error, and a gather (a compiled program that replicates it) reads it anyway.
//!
//! What is simulated: XLA's CPU backend cannot run one program across processes, so this
//! process drives every device of the mesh, the other processes' as stand-ins
//! ([`Ownership::with_stand_ins`]); which devices it owns, and so what it places from its own
//! data and reads back, is what a TPU host would own.
#![allow(clippy::single_range_in_vec_init)] // one range of rows per process is the usual case
use anyhow::Result;
use runtime::{Client, DType, DeviceArray, Error, HostArray, Mesh, NamedSharding, Ownership, PartitionSpec, PluginSpec, TensorType};
use std::sync::Arc;

#[test]
fn the_process_index_comes_from_the_plugin() -> Result<()> {
    let client = Client::open_as(&PluginSpec::Cpu, Some(2), Some(3))?;
    assert_eq!(client.process_index()?, 3);
    let ids: Vec<i32> = client.devices()?.iter().map(|d| d.id()).collect::<Result<_, _>>()?;
    assert_eq!(ids, vec![3 * 2048, 3 * 2048 + 1]);
    // The CPU plugin knows only its own devices: globally, this is the whole run.
    assert_eq!(client.global_devices()?.len(), 2);
    let own = Ownership::from_client(&client, 2)?;
    assert!(own.owns_all());
    assert_eq!(own.process(), 3);
    let alone = Client::open(&PluginSpec::Cpu, Some(1))?;
    assert_eq!(alone.process_index()?, 0);
    Ok(())
}

#[test]
fn arrays_over_a_global_mesh_hold_this_process_s_shards() -> Result<()> {
    // Process 1 of 2 over data=4: it owns mesh devices 2 and 3.
    let client = Client::open_as(&PluginSpec::Cpu, Some(4), Some(1))?;
    let own = Arc::new(Ownership::with_stand_ins(client.process_index()?, 2, 4)?);
    assert_eq!(own.mine(), vec![2, 3]);
    let mesh = Mesh::parse("data=4")?;
    let rows = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&["data"], &[]]))?;
    let whole: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let whole = HostArray::from_vec(&[8, 3], whole)?;
    let ty = TensorType::new(DType::F32, &[8, 3]);
    // Only rows 4..8 come from this process's own data; the stand-ins get theirs elsewhere.
    let mine = whole.slice(&[4..8, 0..3])?;
    let mut asked = Vec::new();
    let a = DeviceArray::from_process_local_data(&client, &own, &rows, &ty, &mine, &[4..8], |d, region| {
        asked.push(d);
        whole.slice(region)
    })?;
    assert_eq!(asked, vec![0, 1], "only the stand-ins' data comes from the callback");
    assert!(!a.is_fully_addressable());
    let shards = a.addressable_shards();
    assert_eq!(shards.iter().map(|s| s.index).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(shards[0].region, &[4..6, 0..3]);
    assert_eq!(a.fetch_shard(&shards[1])?.to_vec::<f32>()?, (18..24).map(|i| i as f32).collect::<Vec<_>>());
    match a.fetch() {
        Err(Error::NotFullyAddressable { process: 1, held: 2, devices: 4, .. }) => {}
        other => panic!("expected NotFullyAddressable, got {other:?}"),
    }
    // The gather compiles a program that replicates the array and reads this process's copy.
    assert_eq!(a.gather(&client)?.to_vec::<f32>()?, whole.to_vec::<f32>()?);
    // Rows this process does not hold cannot place its devices.
    let e = DeviceArray::from_process_local_data(&client, &own, &rows, &ty, &whole.slice(&[0..4, 0..3])?, &[0..4], |_, r| whole.slice(r))
        .unwrap_err();
    assert!(e.to_string().contains("not among this process's rows"), "{e}");
    // A replicated array is read from this process's own copy, no program needed.
    let rep = NamedSharding::replicated(mesh, 2);
    let r = DeviceArray::place_with(&client, &own, &rep, &ty, |_, region| whole.slice(region))?;
    assert!(!r.is_fully_addressable());
    assert_eq!(r.gather(&client)?.to_vec::<f32>()?, whole.to_vec::<f32>()?);
    Ok(())
}

#[test]
fn slices_and_padding_of_host_arrays() -> Result<()> {
    let a = HostArray::from_vec(&[3, 4], (0..12).collect::<Vec<i32>>())?;
    assert_eq!(a.slice(&[1..3, 1..3])?.to_vec::<i32>()?, vec![5, 6, 9, 10]);
    assert_eq!(a.slice(&[0..3, 3..4])?.dims(), &[3, 1]);
    assert!(a.slice(&[0..4, 0..1]).is_err());
    let p = a.slice(&[2..3, 0..3])?.padded(&[2, 4])?;
    assert_eq!(p.to_vec::<i32>()?, vec![8, 9, 10, 0, 0, 0, 0, 0]);
    assert!(a.padded(&[2, 4]).is_err());
    Ok(())
}
