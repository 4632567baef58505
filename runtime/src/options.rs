//! xla.CompileOptionsProto, encoded with prost from the few fields we set. Both
//! num_replicas and num_partitions are always sent: the CPU plugin aborts the process when
//! either is missing.
//!
//! XLA's dump options (`XlaDump`) travel as `env_option_overrides` (field 7), which XLA
//! applies by name onto its default `DebugOptions` (`CompileOptions::ApplyAllOptionOverrides`).
//! They are deliberately not sent as `ExecutableBuildOptionsProto.debug_options` (field 3):
//! a `debug_options` message replaces XLA's defaults wholesale
//! (`ExecutableBuildOptionsFromProto`), so every option we did not set would become proto3's
//! zero (`xla_backend_optimization_level` 0, `xla_cpu_use_thunk_runtime` false, ...) and the
//! dumped program would not be the one `train` compiles.
use prost::Message;
use sharding::Mesh;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, PartialEq, Message)]
struct CompileOptionsProto {
    #[prost(message, optional, tag = "3")]
    executable_build_options: Option<ExecutableBuildOptionsProto>,
    /// `map<string, OptionOverrideProto> env_option_overrides = 7`: xla.DebugOptions fields
    /// by name (a BTreeMap, so the bytes do not depend on hashing).
    #[prost(btree_map = "string, message", tag = "7")]
    env_option_overrides: BTreeMap<String, OptionOverrideProto>,
}

/// xla.OptionOverrideProto: `oneof value { string string_field = 1; bool bool_field = 2;
/// int64 int_field = 3; double double_field = 4; }` (only the two kinds we send).
#[derive(Clone, PartialEq, Message)]
struct OptionOverrideProto {
    #[prost(oneof = "OptionValue", tags = "1, 2")]
    value: Option<OptionValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum OptionValue {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
}

#[derive(Clone, PartialEq, Message)]
struct ExecutableBuildOptionsProto {
    #[prost(int64, tag = "4")]
    num_replicas: i64,
    #[prost(int64, tag = "5")]
    num_partitions: i64,
    #[prost(bool, tag = "6")]
    use_spmd_partitioning: bool,
    #[prost(message, optional, tag = "9")]
    device_assignment: Option<DeviceAssignmentProto>,
    #[prost(bool, tag = "19")]
    use_shardy_partitioner: bool,
}

/// xla.DeviceAssignmentProto: `replica_count = 1`, `computation_count = 2`,
/// `computation_devices = 3` (one per partition: `replica_device_ids = 1`, one per replica).
#[derive(Clone, PartialEq, Message)]
struct DeviceAssignmentProto {
    #[prost(int32, tag = "1")]
    replica_count: i32,
    #[prost(int32, tag = "2")]
    computation_count: i32,
    #[prost(message, repeated, tag = "3")]
    computation_devices: Vec<ComputationDevice>,
}

#[derive(Clone, PartialEq, Message)]
struct ComputationDevice {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    replica_device_ids: Vec<i64>,
}

/// Which SPMD partitioner reads the program's sharding annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// `sdy.sharding` annotations (the default; what JAX uses).
    Shardy,
    /// `mhlo.sharding` strings (deprecated in XLA, still supported).
    Gspmd,
}

/// How to compile a program: replica and partition counts, the SPMD partitioner, the mesh
/// its shardings name, an XLA dump and a device assignment. Encoded as
/// xla.CompileOptionsProto by [`CompileOptions::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// Replicas of the program (this crate always uses 1).
    pub num_replicas: i64,
    /// Partitions (devices) an SPMD program is split into.
    pub num_partitions: i64,
    /// None: no SPMD partitioning (only valid with one partition).
    pub partitioner: Option<Partitioner>,
    /// The mesh the program's shardings name (not sent to XLA): outputs of `Executable::call`
    /// carry specs over it. None: one axis `devices` over all partitions.
    pub mesh: Option<Mesh>,
    /// Ask XLA to write the HLO of this compilation to a directory.
    pub dump: Option<XlaDump>,
    /// The device id that runs each partition (one replica), sent as the compile options'
    /// device assignment: how a mesh is laid onto a topology's chips when compiling ahead of
    /// time. None: XLA's default (partition i on the i-th device).
    pub device_assignment: Option<Vec<i64>>,
}

/// XLA's own dump of a compilation (the `--xla_dump_*` flags, sent in the compile options
/// rather than through `XLA_FLAGS`). XLA writes, per module, `module_NNNN.<name>.before_optimizations.txt`,
/// `....<backend>_after_optimizations.txt`, the buffer assignment and memory usage report,
/// and, for passes matching `pass_re`, `....<pass index>.<pipeline>.after_<pass>.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlaDump {
    /// `xla_dump_to`: the directory (XLA creates it).
    pub dir: PathBuf,
    /// `xla_dump_hlo_pass_re`: also dump the module after each pass whose name matches.
    pub pass_re: Option<String>,
    /// `xla_dump_hlo_module_re`: only dump modules whose name matches.
    pub module_re: Option<String>,
}

impl XlaDump {
    /// Text dumps into `dir`, no pass snapshots, every module.
    pub fn to(dir: impl Into<PathBuf>) -> XlaDump {
        XlaDump { dir: dir.into(), pass_re: None, module_re: None }
    }

    /// The `xla.DebugOptions` fields to override, by name. `xla_dump_hlo_as_text` is always
    /// set (the dump is read back as text).
    fn overrides(&self) -> BTreeMap<String, OptionOverrideProto> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: OptionValue| {
            m.insert(k.to_string(), OptionOverrideProto { value: Some(v) });
        };
        put("xla_dump_to", OptionValue::String(self.dir.to_string_lossy().into_owned()));
        put("xla_dump_hlo_as_text", OptionValue::Bool(true));
        if let Some(re) = &self.pass_re {
            put("xla_dump_hlo_pass_re", OptionValue::String(re.clone()));
        }
        if let Some(re) = &self.module_re {
            put("xla_dump_hlo_module_re", OptionValue::String(re.clone()));
        }
        m
    }
}

impl CompileOptions {
    /// One replica, one partition.
    pub fn single_device() -> CompileOptions {
        CompileOptions { num_replicas: 1, num_partitions: 1, partitioner: None, mesh: None, dump: None, device_assignment: None }
    }

    /// SPMD over `num_partitions` devices.
    pub fn spmd(num_partitions: i64, partitioner: Partitioner) -> CompileOptions {
        CompileOptions { num_replicas: 1, num_partitions, partitioner: Some(partitioner), mesh: None, dump: None, device_assignment: None }
    }

    /// For a program over `mesh`: SPMD over its devices with Shardy (or one device).
    pub fn for_mesh(mesh: &Mesh) -> CompileOptions {
        let n = mesh.num_devices();
        let mut o = if n == 1 { CompileOptions::single_device() } else { CompileOptions::spmd(n, Partitioner::Shardy) };
        o.mesh = Some(mesh.clone());
        o
    }

    /// The same options, with XLA dumping this compilation as `dump` says.
    pub fn with_dump(mut self, dump: XlaDump) -> CompileOptions {
        self.dump = Some(dump);
        self
    }

    /// The number of devices the program runs on: replicas times partitions.
    pub fn num_devices(&self) -> usize {
        (self.num_replicas * self.num_partitions) as usize
    }

    /// The serialized CompileOptionsProto.
    pub fn encode(&self) -> Vec<u8> {
        let build = ExecutableBuildOptionsProto {
            num_replicas: self.num_replicas,
            num_partitions: self.num_partitions,
            use_spmd_partitioning: self.partitioner.is_some(),
            device_assignment: self.device_assignment.as_ref().map(|ids| DeviceAssignmentProto {
                replica_count: 1,
                computation_count: ids.len() as i32,
                computation_devices: ids.iter().map(|&id| ComputationDevice { replica_device_ids: vec![id] }).collect(),
            }),
            use_shardy_partitioner: self.partitioner == Some(Partitioner::Shardy),
        };
        let mut env_option_overrides = self.dump.as_ref().map(XlaDump::overrides).unwrap_or_default();
        if self.partitioner == Some(Partitioner::Shardy) {
            // XLA converts our sdy shardings to HLO with the build options' DebugOptions (none
            // sent: HloShardingV3 off, so they travel as `xla.sdy.*` frontend attributes) but
            // compiles with the plugin's defaults (V3 on), and then warns of a "stale model
            // export" and turns V3 off itself. Saying off up front compiles the same program
            // without the warning.
            env_option_overrides
                .insert("xla_enable_hlo_sharding_v3".to_string(), OptionOverrideProto { value: Some(OptionValue::Bool(false)) });
        }
        CompileOptionsProto { executable_build_options: Some(build), env_option_overrides }.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_bytes_measured_on_the_cpu_plugin() {
        assert_eq!(CompileOptions::single_device().encode(), [0x1a, 0x04, 0x20, 0x01, 0x28, 0x01]);
        assert_eq!(CompileOptions::spmd(2, Partitioner::Gspmd).encode(), [0x1a, 0x06, 0x20, 0x01, 0x28, 0x02, 0x30, 0x01]);
        // Shardy: field 3 as before, then field 7 {"xla_enable_hlo_sharding_v3": bool_field false}.
        let mut shardy = vec![0x1a, 0x09, 0x20, 0x01, 0x28, 0x02, 0x30, 0x01, 0x98, 0x01, 0x01, 0x3a, 0x20, 0x0a, 0x1a];
        shardy.extend_from_slice(b"xla_enable_hlo_sharding_v3");
        shardy.extend_from_slice(&[0x12, 0x02, 0x10, 0x00]);
        assert_eq!(CompileOptions::spmd(2, Partitioner::Shardy).encode(), shardy);
    }

    #[test]
    fn a_device_assignment_is_field_9_one_computation_per_partition() {
        let mut o = CompileOptions::spmd(2, Partitioner::Gspmd);
        o.device_assignment = Some(vec![3, 1]);
        // {4: 1, 5: 2, 6: true, 9: {1: 1, 2: 2, 3: {1: 3}, 3: {1: 1}}}
        let da = [0x08, 0x01, 0x10, 0x02, 0x1a, 0x02, 0x08, 0x03, 0x1a, 0x02, 0x08, 0x01];
        let mut build = vec![0x20, 0x01, 0x28, 0x02, 0x30, 0x01, 0x4a, da.len() as u8];
        build.extend(da);
        let mut want = vec![0x1a, build.len() as u8];
        want.extend(build);
        assert_eq!(o.encode(), want);
    }

    #[test]
    fn dump_options_are_env_option_overrides_by_name() {
        let dump = XlaDump { dir: "/d".into(), pass_re: Some("spmd".into()), module_re: None };
        let bytes = CompileOptions::single_device().with_dump(dump).encode();
        // Field 3 as before, then field 7 (tag 0x3a) once per map entry in key order, each a
        // message {1: key, 2: OptionOverrideProto}: string_field is 1 (0x0a), bool_field 2 (0x10).
        let mut want = vec![0x1a, 0x04, 0x20, 0x01, 0x28, 0x01];
        let entry = |key: &str, value: &[u8]| {
            let mut e = vec![0x0a, key.len() as u8];
            e.extend(key.as_bytes());
            e.extend([0x12, value.len() as u8]);
            e.extend(value);
            let mut out = vec![0x3a, e.len() as u8];
            out.extend(e);
            out
        };
        want.extend(entry("xla_dump_hlo_as_text", &[0x10, 0x01]));
        want.extend(entry("xla_dump_hlo_pass_re", &[0x0a, 0x04, b's', b'p', b'm', b'd']));
        want.extend(entry("xla_dump_to", &[0x0a, 0x02, b'/', b'd']));
        assert_eq!(bytes, want);
        // No dump: exactly the bytes without field 7.
        assert_eq!(CompileOptions::single_device().encode(), [0x1a, 0x04, 0x20, 0x01, 0x28, 0x01]);
    }
}
