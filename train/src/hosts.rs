//! Multi-host (multi-controller) training roles, as JAX and MaxText run on TPU slices of
//! several hosts: one process per host, each started with the same arguments, each learning
//! its host index and the number of hosts from its environment, each feeding only the rows
//! of every batch that land on its own devices, and only host 0 writing checkpoints, metrics
//! and samples.
//!
//! The host index and count come from, in order: `GEMMA_XLA_PROCESS_ID` and
//! `GEMMA_XLA_NUM_PROCESSES` (any launcher), then a Cloud TPU VM's own `TPU_WORKER_ID` and
//! `TPU_WORKER_HOSTNAMES` (comma-separated, one per host), else a single host.
use crate::{Error, Result};
use runtime::{Mesh, NamedSharding, PartitionSpec};
use std::ops::Range;

/// This process's place among the hosts of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRole {
    /// This host's index, 0-based (host 0 writes checkpoints and metrics).
    pub index: usize,
    /// The number of hosts.
    pub count: usize,
    /// Where the numbers came from (for messages).
    pub source: String,
}

fn bad(var: &str, value: &str, why: &str) -> Error {
    Error::Invalid(format!("{var}={value:?}: {why}"))
}

impl HostRole {
    /// The role of the only process of a single-host run.
    pub fn single() -> HostRole {
        HostRole { index: 0, count: 1, source: "a single host".into() }
    }

    /// The role from environment variables (`var` looks one up: `std::env::var(..).ok()` in
    /// the binary, a table in tests).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<HostRole> {
        let number = |name: &str, value: &str| -> Result<usize> {
            value.trim().parse::<usize>().map_err(|_| bad(name, value, "expected a whole number"))
        };
        match (var("GEMMA_XLA_PROCESS_ID"), var("GEMMA_XLA_NUM_PROCESSES")) {
            (Some(i), Some(n)) => {
                let (index, count) = (number("GEMMA_XLA_PROCESS_ID", &i)?, number("GEMMA_XLA_NUM_PROCESSES", &n)?);
                return HostRole::checked(index, count, "GEMMA_XLA_PROCESS_ID/GEMMA_XLA_NUM_PROCESSES");
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Invalid("set both GEMMA_XLA_PROCESS_ID and GEMMA_XLA_NUM_PROCESSES, or neither".into()))
            }
            (None, None) => {}
        }
        match (var("TPU_WORKER_ID"), var("TPU_WORKER_HOSTNAMES")) {
            (Some(i), Some(hosts)) if !hosts.trim().is_empty() => {
                let index = number("TPU_WORKER_ID", &i)?;
                let count = hosts.split(',').filter(|h| !h.trim().is_empty()).count();
                HostRole::checked(index, count, "TPU_WORKER_ID/TPU_WORKER_HOSTNAMES")
            }
            // A single-host TPU VM sets the id alone (or the list to itself).
            (Some(i), _) => HostRole::checked(number("TPU_WORKER_ID", &i)?, 1, "TPU_WORKER_ID"),
            _ => Ok(HostRole::single()),
        }
    }

    fn checked(index: usize, count: usize, source: &str) -> Result<HostRole> {
        if count == 0 || index >= count {
            return Err(Error::Invalid(format!("{source}: host index {index} is not below the host count {count}")));
        }
        Ok(HostRole { index, count, source: source.to_string() })
    }

    /// Only host 0 writes checkpoints, metrics, plots and samples.
    pub fn writes(&self) -> bool {
        self.index == 0
    }
}

/// The rows of a global batch of `batch` sequences (split over the mesh as `spec` says for a
/// [batch, seq] array) that `host` must supply: those held by its devices. Device `d` of the
/// mesh is on host `device_host[d]`. Ranges are sorted and merged.
pub fn host_rows(batch: i64, seq: i64, mesh: &Mesh, spec: &PartitionSpec, device_host: &[usize], host: usize) -> Result<Vec<Range<i64>>> {
    if device_host.len() as i64 != mesh.num_devices() {
        return Err(Error::Invalid(format!(
            "the mesh {mesh} has {} devices but {} device hosts were given",
            mesh.num_devices(),
            device_host.len()
        )));
    }
    let tiling = NamedSharding::new(mesh.clone(), spec.clone())?.tiling(&[batch, seq])?;
    let mut rows: Vec<Range<i64>> =
        tiling.regions.iter().zip(device_host).filter(|(_, &h)| h == host).map(|(r, _)| r[0].clone()).filter(|r| !r.is_empty()).collect();
    rows.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<i64>> = Vec::new();
    for r in rows {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn roles_come_from_the_tpu_vm_or_the_launcher() {
        assert_eq!(HostRole::from_env(env(&[])).unwrap(), HostRole::single());
        let r = HostRole::from_env(env(&[("TPU_WORKER_ID", "3"), ("TPU_WORKER_HOSTNAMES", "t-0,t-1,t-2,t-3")])).unwrap();
        assert_eq!((r.index, r.count, r.writes()), (3, 4, false));
        let r = HostRole::from_env(env(&[("TPU_WORKER_ID", "0"), ("TPU_WORKER_HOSTNAMES", "t-0,t-1")])).unwrap();
        assert!(r.writes());
        // The launcher's variables win over the VM's.
        let r =
            HostRole::from_env(env(&[("GEMMA_XLA_PROCESS_ID", "1"), ("GEMMA_XLA_NUM_PROCESSES", "2"), ("TPU_WORKER_ID", "0")])).unwrap();
        assert_eq!((r.index, r.count), (1, 2));
        assert_eq!(HostRole::from_env(env(&[("TPU_WORKER_ID", "0")])).unwrap().count, 1);
        let e = HostRole::from_env(env(&[("TPU_WORKER_ID", "4"), ("TPU_WORKER_HOSTNAMES", "a,b")])).unwrap_err();
        assert!(e.to_string().contains("host index 4 is not below the host count 2"), "{e}");
        let e = HostRole::from_env(env(&[("TPU_WORKER_ID", "x"), ("TPU_WORKER_HOSTNAMES", "a")])).unwrap_err();
        assert!(e.to_string().contains("TPU_WORKER_ID=\"x\""), "{e}");
        assert!(HostRole::from_env(env(&[("GEMMA_XLA_PROCESS_ID", "0")])).is_err());
    }

    #[test]
    fn each_host_feeds_the_rows_of_its_devices() {
        // v5e-16 as 4 hosts x 4 chips, mesh data=4,model=4: devices 4h..4h+3 on host h, so each
        // host holds one data shard (model is inside the host): 64 rows -> 16 per host.
        let mesh = Mesh::parse("data=4,model=4").unwrap();
        let spec = PartitionSpec::new(&[&["data"], &[]]);
        let hosts: Vec<usize> = (0..16).map(|d| d / 4).collect();
        for h in 0..4 {
            assert_eq!(host_rows(64, 128, &mesh, &spec, &hosts, h).unwrap(), vec![16 * h as i64..16 * (h as i64 + 1)]);
        }
        // data=8,model=2 on the same hosts: each host holds two consecutive data shards.
        let mesh = Mesh::parse("data=8,model=2").unwrap();
        assert_eq!(host_rows(64, 128, &mesh, &spec, &hosts, 1).unwrap(), vec![16..32]);
        // model=16 (the batch replicated): every host feeds every row.
        let mesh = Mesh::parse("model=16").unwrap();
        let replicated = PartitionSpec::new(&[&[], &[]]);
        assert_eq!(host_rows(64, 128, &mesh, &replicated, &hosts, 2).unwrap(), vec![0..64]);
        // Interleaved device placement: host 0 holds data shards 0 and 2.
        let mesh = Mesh::parse("data=4").unwrap();
        assert_eq!(host_rows(8, 4, &mesh, &spec, &[0, 1, 0, 1], 0).unwrap(), vec![0..2, 4..6]);
        assert!(host_rows(8, 4, &mesh, &spec, &[0, 1], 0).is_err());
        // Every row is fed by exactly one host when the batch is split over all of them.
        let mesh = Mesh::parse("data=16").unwrap();
        let mut seen = [0; 64];
        for h in 0..4 {
            for r in host_rows(64, 8, &mesh, &spec, &hosts, h).unwrap() {
                for i in r {
                    seen[i as usize] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }
}
