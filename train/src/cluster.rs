//! The processes of a run: which devices of the global mesh this process owns
//! ([`runtime::Ownership`]) and, with more than one process, the coordination service
//! ([`coord::Coordinator`]) through which they agree on the program and the checkpoint, order
//! checkpoint commits and notice a failed host.
//!
//! On a multi-host TPU slice the plugin says which host each chip is on. On the CPU plugin
//! (tests, CI) each process opens every device of the mesh and drives the other processes'
//! as stand-ins, because XLA's CPU backend cannot run one program across processes: each
//! process computes the whole step, while what it reads from the data, places from its own
//! rows and writes into checkpoints is what it would own on a slice. The other processes'
//! rows reach its stand-ins through the coordination service.
use crate::hosts::HostRole;
use crate::{bail, Error, Result};
use runtime::{Client, Ownership};
use std::sync::Arc;

impl From<coord::Error> for Error {
    fn from(e: coord::Error) -> Error {
        Error::Invalid(e.to_string())
    }
}

/// This process's place in a run.
pub struct Cluster {
    ownership: Arc<Ownership>,
    coordinator: Option<coord::Coordinator>,
}

impl Cluster {
    /// One process owning all `devices` devices.
    pub fn single(devices: usize) -> Cluster {
        Cluster { ownership: Arc::new(Ownership::single(devices)), coordinator: None }
    }

    /// Joins the coordination service `settings` describes (host 0 starts it). Do this before
    /// opening the client, so that the plugin can be given [`plugin_store`].
    pub fn coordinate(settings: coord::Settings) -> Result<coord::Coordinator> {
        Ok(coord::Coordinator::join(settings)?)
    }

    /// This process in a run of `role.count` processes over a mesh of `devices` devices,
    /// joined through `coordinator`. The process index PJRT gives `client`'s devices must be
    /// `role.index`.
    pub fn new(client: &Client, devices: usize, role: &HostRole, coordinator: coord::Coordinator) -> Result<Cluster> {
        let process = client.process_index()?;
        if process != role.index {
            bail!(
                "this process is host {} of {} ({}), but the plugin says its devices are process {process}'s",
                role.index,
                role.count,
                role.source
            );
        }
        let global = client.global_devices()?.len();
        let local = client.devices()?.len();
        let ownership = if global == local {
            // The plugin knows only this process's devices (the CPU plugin): drive the whole
            // mesh, the others' devices as stand-ins.
            if !devices.is_multiple_of(role.count) {
                bail!("the mesh's {devices} devices cannot be shared equally by {} hosts", role.count);
            }
            Ownership::with_stand_ins(role.index, role.count, devices)?
        } else {
            let o = Ownership::from_client(client, devices)?;
            if o.processes() != role.count {
                bail!("the mesh's {devices} devices belong to {} hosts, but the run has {} ({})", o.processes(), role.count, role.source);
            }
            o
        };
        if coordinator.process() != role.index || coordinator.processes() != role.count {
            bail!(
                "the coordinator was joined as host {} of {}, this process is host {} of {}",
                coordinator.process(),
                coordinator.processes(),
                role.index,
                role.count
            );
        }
        Ok(Cluster { ownership: Arc::new(ownership), coordinator: Some(coordinator) })
    }

    /// Which process owns each device of the mesh.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// This process's index.
    pub fn process(&self) -> usize {
        self.ownership.process()
    }

    /// The number of processes.
    pub fn processes(&self) -> usize {
        self.coordinator.as_ref().map_or(1, |c| c.processes())
    }

    /// Whether more than one process takes part.
    pub fn is_multi(&self) -> bool {
        self.coordinator.is_some()
    }

    /// Whether this process writes the run's own files (metrics, indexes, the final model).
    pub fn writes(&self) -> bool {
        self.process() == 0
    }

    /// The coordination service (None alone).
    pub fn coordinator(&self) -> Option<&coord::Coordinator> {
        self.coordinator.as_ref()
    }

    /// A failure of another host seen since the last wait.
    pub fn check(&self) -> Result<()> {
        if let Some(c) = &self.coordinator {
            c.check()?;
        }
        Ok(())
    }

    /// Waits until every process is here.
    pub fn barrier(&self, name: &str) -> Result<()> {
        if let Some(c) = &self.coordinator {
            c.barrier(name)?;
        }
        Ok(())
    }

    /// Every process's `value` for `name`, in process order (alone: just this one).
    pub fn all_gather(&self, name: &str, value: &[u8]) -> Result<Vec<Vec<u8>>> {
        match &self.coordinator {
            Some(c) => Ok(c.all_gather(name, value)?),
            None => Ok(vec![value.to_vec()]),
        }
    }

    /// Forgets the stored values under `prefix` (process 0 does it; the others do nothing).
    pub fn forget(&self, prefix: &str) -> Result<()> {
        match &self.coordinator {
            Some(c) if c.process() == 0 => Ok(c.delete_prefix(prefix)?),
            _ => Ok(()),
        }
    }

    /// Process 0's `value` for `name` (every process passes its own; only process 0's counts).
    pub fn from_first(&self, name: &str, value: &[u8]) -> Result<Vec<u8>> {
        match &self.coordinator {
            Some(c) if c.process() == 0 => {
                c.set(name, value)?;
                Ok(value.to_vec())
            }
            Some(c) => Ok(c.get(name)?),
            None => Ok(value.to_vec()),
        }
    }

    /// Checks that every process has the same `what` (a fingerprint): a host whose value
    /// differs from host 0's is named, and every host stops with the same error.
    pub fn agree(&self, what: &str, value: &str) -> Result<()> {
        let all = self.all_gather(&format!("agree/{what}"), value.as_bytes())?;
        let first = String::from_utf8_lossy(&all[0]).into_owned();
        let differ: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(_, v)| v.as_slice() != all[0].as_slice())
            .map(|(p, v)| format!("host {p} has {}", String::from_utf8_lossy(v)))
            .collect();
        if !differ.is_empty() {
            bail!(
                "the hosts do not agree on the {what}: host 0 has {first}, {}; every host must run the same binary with the same flags and data",
                differ.join(", ")
            );
        }
        Ok(())
    }

    /// Leaves the run cleanly (process 0 serves until every process has left).
    pub fn close(self) -> Result<()> {
        if let Some(c) = self.coordinator {
            c.close()?;
        }
        Ok(())
    }
}

/// The coordination service's store as the plugin's key-value store (`PJRT_Client_Create`'s
/// callbacks; libtpu uses them on TPU slices), its keys under `pjrt/`.
pub fn plugin_store(coordinator: &coord::Coordinator) -> Arc<dyn runtime::KeyValueStore> {
    Arc::new(PluginStore(coordinator.kv_client()))
}

struct PluginStore(coord::KvClient);

fn store_error(e: coord::Error) -> runtime::StoreError {
    match e {
        coord::Error::Timeout { .. } => runtime::StoreError::DeadlineExceeded(e.to_string()),
        other => runtime::StoreError::Unavailable(other.to_string()),
    }
}

impl runtime::KeyValueStore for PluginStore {
    fn get(&self, key: &str, timeout: std::time::Duration) -> std::result::Result<Vec<u8>, runtime::StoreError> {
        self.0.get(&format!("pjrt/{key}"), timeout).map_err(store_error)
    }

    fn try_get(&self, key: &str) -> std::result::Result<Option<Vec<u8>>, runtime::StoreError> {
        self.0.try_get(&format!("pjrt/{key}")).map_err(store_error)
    }

    fn put(&self, key: &str, value: &[u8]) -> std::result::Result<(), runtime::StoreError> {
        self.0.put(&format!("pjrt/{key}"), value).map_err(store_error)
    }
}
