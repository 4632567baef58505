//! Compiling ahead of time for a device topology the machine does not have: a `Topology` is
//! made by name from a plugin (libtpu makes TPU slices such as `v5e:2x4` with no TPU
//! attached), lists its devices, and compiles programs against it without a client. The
//! result, an `AotExecutable`, reports what XLA made of the program (memory per device, cost
//! analysis, the optimised program) and serializes to bytes a client on the real slice loads.
use crate::client::PluginInfo;
use crate::compiled::CompiledSignature;
use crate::discovery::PluginSpec;
use crate::error::{Error, Result};
use crate::options::CompileOptions;
use crate::program::Program;
use sharding::Mesh;
use std::collections::BTreeSet;
use std::path::Path;
use xla_sys::{Api, NamedValue};

pub use xla_sys::CompiledMemoryStats;

/// The accepted form of a topology name (libtpu's own check).
pub const TOPOLOGY_FORM: &str = "^([a-zA-Z0-9_ ]+)[=_:]([0-9x]+)(_twisted|_untwisted)?$, e.g. v5e:2x2, v5e:2x4, v5e:16x16";

/// One device of a topology, as the plugin describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyDevice {
    /// The device id the plugin gives it (what a device assignment lists).
    pub id: i32,
    /// The host (process) the device belongs to.
    pub process_index: i32,
    /// The device kind, e.g. `TPU v5 lite`.
    pub kind: String,
    /// Physical coordinates (libtpu: x, y, z of the chip), when the plugin gives them.
    pub coords: Option<Vec<i64>>,
    /// Which core of its chip (libtpu), when given.
    pub core_on_chip: Option<i64>,
}

/// A topology created by a plugin from a name.
pub struct Topology {
    inner: xla_sys::Topology,
    name: String,
    devices: Vec<TopologyDevice>,
    plugin: PluginInfo,
}

/// Sets `TPU_SKIP_MDS_QUERY=1` and `ALLOW_MULTIPLE_LIBTPU_LOAD=1` (once, each unless set)
/// before libtpu is loaded for a topology. Without the second, a second process loading
/// libtpu (another compile, a test, a training run on a TPU VM) fails to initialise it on
/// libtpu's lock file `/tmp/libtpu_lockfile`; compiling touches no TPU, so it need not hold it.
///
/// On a machine that is not a TPU host (no `/dev/accel*` or `/dev/vfio` TPU devices) it also
/// gives libtpu what it would otherwise look up and warn about on stderr: an accelerator type
/// (`TPU_ACCELERATOR_TYPE=v5litepod-4`; a named topology's compile does not depend on it), this
/// machine as the only worker (`TPU_WORKER_HOSTNAMES=localhost`, `TPU_WORKER_ID=0`), and
/// `--hugepage_text=false` in `LIBTPU_INIT_ARGS` (remapping its code onto huge pages fails on
/// ordinary file systems with an error line). Variables already set are left alone.
pub(crate) fn skip_metadata_queries() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let set_default = |var: &str, value: &str| {
            if std::env::var_os(var).is_none() {
                // Set before libtpu is loaded; libtpu reads them during initialisation.
                std::env::set_var(var, value);
            }
        };
        set_default("TPU_SKIP_MDS_QUERY", "1");
        set_default("ALLOW_MULTIPLE_LIBTPU_LOAD", "1");
        if !is_tpu_host() {
            set_default("TPU_ACCELERATOR_TYPE", "v5litepod-4");
            set_default("TPU_WORKER_HOSTNAMES", "localhost");
            set_default("TPU_WORKER_ID", "0");
            let args = std::env::var("LIBTPU_INIT_ARGS").unwrap_or_default();
            if !args.contains("hugepage_text") {
                std::env::set_var("LIBTPU_INIT_ARGS", format!("{args} --hugepage_text=false").trim_start());
            }
        }
    });
}

/// Whether this machine has TPU chips: `/dev/accel*` (v2-v4, v5p) or `/dev/vfio/<n>` (v5e, v6e).
fn is_tpu_host() -> bool {
    let any = |dir: &str, keep: &dyn Fn(&str) -> bool| {
        std::fs::read_dir(dir).is_ok_and(|entries| entries.flatten().any(|e| keep(&e.file_name().to_string_lossy())))
    };
    any("/dev", &|n| n.starts_with("accel")) || any("/dev/vfio", &|n| n.chars().all(|c| c.is_ascii_digit()))
}

/// Whether `name` has the form libtpu accepts (checked before the plugin sees it, so the
/// error can say what is expected).
pub fn check_topology_name(name: &str) -> Result<()> {
    let bad = || Error::Argument(format!("unknown topology name {name:?}: expected {TOPOLOGY_FORM}"));
    let body = name.strip_suffix("_untwisted").or_else(|| name.strip_suffix("_twisted")).unwrap_or(name);
    let ok = body.char_indices().any(|(i, c)| {
        let (head, tail) = (&body[..i], &body[i + c.len_utf8()..]);
        matches!(c, '=' | '_' | ':')
            && !head.is_empty()
            && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ')
            && !tail.is_empty()
            && tail.chars().all(|c| c.is_ascii_digit() || c == 'x')
    });
    if !ok {
        return Err(bad());
    }
    // The chip counts: each at least 1, the slice at most 65536 chips (libtpu divides by them;
    // `v5e:0x0` kills the process inside it).
    let dims = body.rsplit([':', '=', '_']).next().unwrap_or("");
    let mut chips: u64 = 1;
    for d in dims.split('x') {
        let n: u64 = d.parse().map_err(|_| bad())?;
        chips = chips.checked_mul(n).filter(|&c| (1..=1 << 16).contains(&c)).ok_or_else(|| {
            Error::Argument(format!("topology {name:?}: every dimension must be at least 1 and the slice at most 65536 chips"))
        })?;
    }
    Ok(())
}

impl Topology {
    /// Finds (or installs) the plugin and creates the topology `name` (e.g. `v5e:2x4`).
    ///
    /// For libtpu, `TPU_SKIP_MDS_QUERY=1` is set first unless the environment already sets
    /// it: without it libtpu asks the GCE metadata server about the TPU VM it runs on, 30
    /// tries per key (minutes) on a machine that is not one, and a topology needs none of it.
    /// `ALLOW_MULTIPLE_LIBTPU_LOAD=1` likewise, so several compiles can run at once.
    /// libtpu still warns that TPU_ACCELERATOR_TYPE and TPU_WORKER_HOSTNAMES are unknown;
    /// those warnings are harmless for compiling.
    pub fn open(spec: &PluginSpec, name: &str) -> Result<Topology> {
        check_topology_name(name)?;
        let path = spec.resolve()?;
        if matches!(spec, PluginSpec::Tpu) || path.file_name().is_some_and(|n| n.to_string_lossy().contains("libtpu")) {
            skip_metadata_queries();
        }
        Topology::with_plugin(&path, name, &[])
    }

    /// Loads the plugin at `path` and creates the topology with raw create options.
    pub fn with_plugin(path: &Path, name: &str, options: &[(String, NamedValue)]) -> Result<Topology> {
        let api = Api::load(path)?;
        let plugin = PluginInfo {
            path: api.path().to_path_buf(),
            api_version: api.version(),
            attributes: api.attributes()?,
            ffi_targets: Err("a compile-only topology runs no custom calls".into()),
        };
        let inner = xla_sys::Topology::create(&api, name, options).map_err(|e| match e {
            xla_sys::Error::Pjrt { message, .. } => Error::Argument(format!(
                "the plugin {} cannot make the topology {name:?}: {message} (names have the form {TOPOLOGY_FORM})",
                plugin.path.display()
            )),
            other => Error::Pjrt(other),
        })?;
        let devices = inner
            .devices()?
            .into_iter()
            .map(|d| {
                let attr = |n: &str| d.attributes.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                TopologyDevice {
                    id: d.id,
                    process_index: d.process_index,
                    kind: d.kind,
                    coords: match attr("coords") {
                        Some(NamedValue::Int64List(c)) => Some(c),
                        _ => None,
                    },
                    core_on_chip: match attr("core_on_chip") {
                        Some(NamedValue::Int64(c)) => Some(c),
                        _ => None,
                    },
                }
            })
            .collect();
        Ok(Topology { inner, name: name.to_string(), devices, plugin })
    }

    /// The topology's name as given (e.g. `v5e:2x4`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the plugin that made the topology says about itself.
    pub fn plugin(&self) -> &PluginInfo {
        &self.plugin
    }

    /// The platform name the topology reports (e.g. `tpu`).
    pub fn platform_name(&self) -> Result<String> {
        Ok(self.inner.platform_name()?)
    }

    /// The platform version string the topology reports (plugin-specific).
    pub fn platform_version(&self) -> Result<String> {
        Ok(self.inner.platform_version()?)
    }

    /// The devices in the plugin's order.
    pub fn devices(&self) -> &[TopologyDevice] {
        &self.devices
    }

    /// How many hosts (processes) the slice has.
    pub fn num_processes(&self) -> usize {
        self.devices.iter().map(|d| d.process_index).collect::<BTreeSet<_>>().len()
    }

    /// The device kind (`TPU v5 lite`), or the kinds joined when they differ.
    pub fn chip_kind(&self) -> String {
        let kinds: BTreeSet<&str> = self.devices.iter().map(|d| d.kind.as_str()).collect();
        kinds.into_iter().collect::<Vec<_>>().join(", ")
    }

    /// The device id of each mesh position, row-major over the mesh's axes: the devices in
    /// host order (process, then the chip's y and x coordinates, then its core), so the
    /// mesh's last axes (`model`) vary within a host's chips, and its first (`data`) across
    /// hosts, as JAX's `mesh_utils.create_device_mesh` lays out a slice when the last axis
    /// fits a host. The mesh must have exactly as many devices as the topology.
    pub fn mesh_device_ids(&self, mesh: &Mesh) -> Result<Vec<i64>> {
        let n = mesh.num_devices() as usize;
        if n != self.devices.len() {
            return Err(Error::Argument(format!(
                "the mesh {mesh} has {n} devices but the topology {} has {} ({} host(s) of {} {}); the mesh's axis sizes must multiply to {}",
                self.name,
                self.devices.len(),
                self.num_processes(),
                self.devices.len() / self.num_processes().max(1),
                self.chip_kind(),
                self.devices.len()
            )));
        }
        let mut order: Vec<&TopologyDevice> = self.devices.iter().collect();
        order.sort_by_key(|d| {
            let c = d.coords.clone().unwrap_or_default();
            let at = |i: usize| c.get(i).copied().unwrap_or(0);
            (d.process_index, at(2), at(1), at(0), d.core_on_chip.unwrap_or(0), d.id)
        });
        Ok(order.iter().map(|d| i64::from(d.id)).collect())
    }

    /// Compiles `program` for this topology with no client (ahead of time). The options
    /// must run on all of the topology's devices; without a device assignment, the mesh of
    /// `options` (or one axis over all partitions) is laid out by `mesh_device_ids`.
    pub fn compile(&self, program: &Program, options: &CompileOptions) -> Result<AotExecutable> {
        let mut options = options.clone();
        if options.device_assignment.is_none() {
            let mesh = match &options.mesh {
                Some(m) => m.clone(),
                None => Mesh::new(&[("devices", options.num_devices() as i64)])?,
            };
            options.device_assignment = Some(self.mesh_device_ids(&mesh)?);
        }
        let ids = options.device_assignment.as_deref().unwrap_or_default();
        if ids.len() != options.num_devices() || options.num_replicas != 1 {
            return Err(Error::Argument(format!(
                "the compile options run on {} device(s) ({} replica(s) x {} partition(s)) but assign {}",
                options.num_devices(),
                options.num_replicas,
                options.num_partitions,
                ids.len()
            )));
        }
        let inner = self.inner.compile(&program.bytes, program.pjrt_format(), &options.encode())?;
        Ok(AotExecutable { inner, options })
    }
}

/// XLA's cost analysis of a compiled program (for SPMD programs on TPU: of one device's
/// partitioned program).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CostAnalysis {
    /// Every property the plugin reported, numeric ones as f64.
    pub properties: Vec<(String, f64)>,
}

impl CostAnalysis {
    /// The property `name` (e.g. `flops`, `bytes accessed`), if reported.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.properties.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The `flops` property: floating-point operations XLA estimates for one execution, if reported.
    pub fn flops(&self) -> Option<f64> {
        self.get("flops")
    }

    /// The `bytes accessed` property: bytes of memory XLA estimates one execution reads and
    /// writes, if reported.
    pub fn bytes_accessed(&self) -> Option<f64> {
        self.get("bytes accessed")
    }
}

/// A program compiled for a topology, not loaded anywhere.
pub struct AotExecutable {
    inner: xla_sys::Executable,
    options: CompileOptions,
}

impl AotExecutable {
    /// The options it was compiled with (device assignment included).
    pub fn options(&self) -> &CompileOptions {
        &self.options
    }

    /// The executable's name as the plugin reports it (XLA uses the HLO module's name).
    pub fn name(&self) -> Result<String> {
        Ok(self.inner.name()?)
    }

    /// The number of partitions the program was compiled for.
    pub fn num_partitions(&self) -> Result<i64> {
        Ok(self.inner.num_partitions()?)
    }

    /// Bytes per device: arguments, outputs, aliased (donated), temporaries, code.
    pub fn memory_stats(&self) -> Result<CompiledMemoryStats> {
        Ok(self.inner.memory_stats()?)
    }

    /// XLA's cost analysis of the compiled program; properties that are not numbers are left out.
    pub fn cost_analysis(&self) -> Result<CostAnalysis> {
        let properties = self
            .inner
            .cost_analysis()?
            .into_iter()
            .filter_map(|(name, v)| match v {
                NamedValue::Float(x) => Some((name, f64::from(x))),
                NamedValue::Int64(x) => Some((name, x as f64)),
                _ => None,
            })
            .collect();
        Ok(CostAnalysis { properties })
    }

    /// The optimised (partitioned) program as the plugin serializes it: `(format, bytes)`.
    pub fn optimized_program(&self) -> Result<(String, Vec<u8>)> {
        Ok(self.inner.optimized_program()?)
    }

    /// Per-device parameter and result types of the compiled program.
    pub fn signature(&self) -> Result<CompiledSignature> {
        let (format, bytes) = self.optimized_program()?;
        CompiledSignature::decode(&format, &bytes)
    }

    /// The serialized executable (PJRT_Executable_Serialize).
    pub fn serialize(&self) -> Result<Vec<u8>> {
        Ok(self.inner.serialize()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_names_have_libtpus_form() {
        for good in ["v5e:2x2", "v5e:16x16", "v5p:2x2x1", "v5e=2x4", "v5e_2x4", "v5e:2x2_twisted", "TPU v5 lite:4x4"] {
            assert!(check_topology_name(good).is_ok(), "{good}");
        }
        for bad in ["v5litepod-8", "v5e", "v5e:", ":2x2", "v5e:2x2y", "v5e-2x2", ""] {
            let err = check_topology_name(bad).unwrap_err().to_string();
            assert!(err.contains("expected ^([a-zA-Z0-9_ ]+)"), "{bad}: {err}");
        }
        // Zero chips would divide by zero inside libtpu; absurd slices are refused too.
        for bad in ["v5e:0x0", "v5e:2x0", "v5e:1024x1024", "v5e:99999999999999999999x2"] {
            let err = check_topology_name(bad).unwrap_err().to_string();
            assert!(err.contains("at least 1") || err.contains("expected"), "{bad}: {err}");
        }
        assert!(check_topology_name("v5e:2xx2").is_err());
    }
}
