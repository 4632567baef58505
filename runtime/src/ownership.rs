//! Which process holds each device of a global mesh (JAX's multi-controller model): every
//! process runs the same program over the global mesh, places only the shards of its own
//! devices and reads back only those.
//!
//! On a multi-host TPU slice the plugin lists every device of the slice
//! (`PJRT_Client_Devices`) with the process index of the host it is attached to, and each
//! process addresses only its own: [`Ownership::from_client`]. XLA's CPU backend cannot run
//! one program across processes, so tests of the multi-process path give each process every
//! device of the mesh as local *stand-ins* and still assign each device to one process
//! ([`Ownership::with_stand_ins`]): what a process reads, places from its own data and writes
//! is then exactly what it would own on a slice, while the stand-ins compute the other
//! processes' parts of the same program.
use crate::client::Client;
use crate::error::{Error, Result};

/// The owning process of every device of a global mesh, and this process's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    owners: Vec<usize>,
    process: usize,
    processes: usize,
    stand_ins: bool,
}

impl Ownership {
    /// One process owning all `devices` devices.
    pub fn single(devices: usize) -> Ownership {
        Ownership { owners: vec![0; devices], process: 0, processes: 1, stand_ins: false }
    }

    /// From the plugin: the first `devices` devices of `client.global_devices()` form the
    /// mesh, each owned by the process index PJRT gives it; this process is the one its
    /// addressable devices belong to. The processes must be numbered 0..N, each owning at
    /// least one device of the mesh.
    pub fn from_client(client: &Client, devices: usize) -> Result<Ownership> {
        let global = client.global_devices()?;
        if global.len() < devices {
            return Err(Error::NotEnoughDevices { needed: devices, available: global.len(), hint: String::new() });
        }
        let owners = global[..devices]
            .iter()
            .map(|d| {
                let p = d.process_index()?;
                usize::try_from(p).map_err(|_| Error::Argument(format!("the plugin gives a device process index {p}")))
            })
            .collect::<Result<Vec<usize>>>()?;
        let process = client.process_index()?;
        if owners.iter().all(|&o| o == process) {
            // The plugin knows no other process (the CPU plugin given a `process_id`).
            return Ok(Ownership { owners, process, processes: 1, stand_ins: false });
        }
        let processes = owners.iter().max().map_or(1, |m| m + 1);
        Ownership::checked(owners, process, processes, false)
    }

    /// `processes` processes over a mesh of `devices` devices, process k owning the k-th block
    /// of `devices / processes` consecutive devices (as the hosts of a TPU slice hold
    /// consecutive device ids), with every device driven by this process (stand-ins for the
    /// other processes' devices; see the module documentation).
    pub fn with_stand_ins(process: usize, processes: usize, devices: usize) -> Result<Ownership> {
        if processes == 0 || !devices.is_multiple_of(processes) {
            return Err(Error::Argument(format!("{devices} devices cannot be shared equally by {processes} processes")));
        }
        let per = devices / processes;
        Ownership::checked((0..devices).map(|d| d / per).collect(), process, processes, true)
    }

    fn checked(owners: Vec<usize>, process: usize, processes: usize, stand_ins: bool) -> Result<Ownership> {
        if process >= processes {
            return Err(Error::Argument(format!("process {process} is not below the process count {processes}")));
        }
        if let Some(p) = (0..processes).find(|p| !owners.contains(p)) {
            return Err(Error::Argument(format!("process {p} of {processes} owns no device of the mesh's {}", owners.len())));
        }
        Ok(Ownership { owners, process, processes, stand_ins })
    }

    /// This process's index.
    pub fn process(&self) -> usize {
        self.process
    }

    /// The number of processes (1 when the plugin knows no other process than this one).
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The number of devices of the mesh.
    pub fn devices(&self) -> usize {
        self.owners.len()
    }

    /// The owning process of each mesh device.
    pub fn owners(&self) -> &[usize] {
        &self.owners
    }

    /// Whether this process owns mesh device `d`.
    pub fn is_mine(&self, d: usize) -> bool {
        self.owners.get(d) == Some(&self.process)
    }

    /// The mesh devices this process owns, in mesh order.
    pub fn mine(&self) -> Vec<usize> {
        (0..self.owners.len()).filter(|&d| self.is_mine(d)).collect()
    }

    /// Whether other processes' devices are driven here as stand-ins.
    pub fn has_stand_ins(&self) -> bool {
        self.stand_ins && self.processes > 1
    }

    /// The mesh devices this process holds buffers for: every device with stand-ins, else its own.
    pub fn local(&self) -> Vec<usize> {
        if self.stand_ins {
            (0..self.owners.len()).collect()
        } else {
            self.mine()
        }
    }

    /// Whether this process owns every device (a single-process run).
    pub fn owns_all(&self) -> bool {
        self.owners.iter().all(|&o| o == self.process)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_devices_per_process() {
        let o = Ownership::with_stand_ins(1, 3, 6).unwrap();
        assert_eq!(o.owners(), &[0, 0, 1, 1, 2, 2]);
        assert_eq!(o.mine(), vec![2, 3]);
        assert_eq!(o.local(), (0..6).collect::<Vec<_>>());
        assert!(o.has_stand_ins() && !o.owns_all() && o.is_mine(3) && !o.is_mine(4));
        assert!(Ownership::with_stand_ins(0, 4, 6).unwrap_err().to_string().contains("cannot be shared equally"));
        assert!(Ownership::with_stand_ins(3, 3, 6).is_err());
        assert!(Ownership::checked(vec![0, 2, 2], 0, 3, true).unwrap_err().to_string().contains("process 1 of 3 owns no device"));
        let single = Ownership::single(4);
        assert!(single.owns_all() && !single.has_stand_ins());
        assert_eq!(single.local(), vec![0, 1, 2, 3]);
    }
}
