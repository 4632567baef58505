//! xla.CompileOptionsProto, encoded with prost from the few fields we set. Both
//! num_replicas and num_partitions are always sent: the CPU plugin aborts the process when
//! either is missing.
use prost::Message;
use sharding::Mesh;

#[derive(Clone, PartialEq, Message)]
struct CompileOptionsProto {
    #[prost(message, optional, tag = "3")]
    executable_build_options: Option<ExecutableBuildOptionsProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ExecutableBuildOptionsProto {
    #[prost(int64, tag = "4")]
    num_replicas: i64,
    #[prost(int64, tag = "5")]
    num_partitions: i64,
    #[prost(bool, tag = "6")]
    use_spmd_partitioning: bool,
    #[prost(bool, tag = "19")]
    use_shardy_partitioner: bool,
}

/// Which SPMD partitioner reads the program's sharding annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// `sdy.sharding` annotations (the default; what JAX uses).
    Shardy,
    /// `mhlo.sharding` strings (deprecated in XLA, still supported).
    Gspmd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    pub num_replicas: i64,
    pub num_partitions: i64,
    /// None: no SPMD partitioning (only valid with one partition).
    pub partitioner: Option<Partitioner>,
    /// The mesh the program's shardings name (not sent to XLA): outputs of `Executable::call`
    /// carry specs over it. None: one axis `devices` over all partitions.
    pub mesh: Option<Mesh>,
}

impl CompileOptions {
    /// One replica, one partition.
    pub fn single_device() -> CompileOptions {
        CompileOptions { num_replicas: 1, num_partitions: 1, partitioner: None, mesh: None }
    }

    /// SPMD over `num_partitions` devices.
    pub fn spmd(num_partitions: i64, partitioner: Partitioner) -> CompileOptions {
        CompileOptions { num_replicas: 1, num_partitions, partitioner: Some(partitioner), mesh: None }
    }

    /// For a program over `mesh`: SPMD over its devices with Shardy (or one device).
    pub fn for_mesh(mesh: &Mesh) -> CompileOptions {
        let n = mesh.num_devices();
        let mut o = if n == 1 { CompileOptions::single_device() } else { CompileOptions::spmd(n, Partitioner::Shardy) };
        o.mesh = Some(mesh.clone());
        o
    }

    pub fn num_devices(&self) -> usize {
        (self.num_replicas * self.num_partitions) as usize
    }

    /// The serialized CompileOptionsProto.
    pub fn encode(&self) -> Vec<u8> {
        let build = ExecutableBuildOptionsProto {
            num_replicas: self.num_replicas,
            num_partitions: self.num_partitions,
            use_spmd_partitioning: self.partitioner.is_some(),
            use_shardy_partitioner: self.partitioner == Some(Partitioner::Shardy),
        };
        CompileOptionsProto { executable_build_options: Some(build) }.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_bytes_measured_on_the_cpu_plugin() {
        assert_eq!(CompileOptions::single_device().encode(), [0x1a, 0x04, 0x20, 0x01, 0x28, 0x01]);
        assert_eq!(CompileOptions::spmd(2, Partitioner::Gspmd).encode(), [0x1a, 0x06, 0x20, 0x01, 0x28, 0x02, 0x30, 0x01]);
        assert_eq!(
            CompileOptions::spmd(2, Partitioner::Shardy).encode(),
            [0x1a, 0x09, 0x20, 0x01, 0x28, 0x02, 0x30, 0x01, 0x98, 0x01, 0x01]
        );
    }
}
