//! PJRT_TopologyDescription and ahead-of-time compilation: a topology made by name from a
//! plugin (libtpu makes TPU slices without a TPU attached), its device descriptions, and
//! PJRT_Compile against it with no client. The result is an unloaded `PJRT_Executable`: its
//! compiled memory statistics, cost analysis, optimised program and serialized bytes.
use crate::api::{args, lossy, named_values, pjrt_call, read_named_value, slice_or_empty, Api, NamedValue};
use crate::bindings as b;
use crate::error::{Error, Result};
use std::sync::Arc;

/// A topology description created from a plugin. Drop destroys it.
pub struct Topology {
    api: Arc<Api>,
    ptr: *mut b::PJRT_TopologyDescription,
}

/// What the plugin says about one device of a topology (owned copies).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDescription {
    pub id: i32,
    pub process_index: i32,
    pub kind: String,
    pub debug_string: String,
    /// Plugin-specific attributes (libtpu: `coords`, `core_on_chip`, ...).
    pub attributes: Vec<(String, NamedValue)>,
}

impl Topology {
    /// PJRT_TopologyDescription_Create(name, options).
    pub fn create(api: &Arc<Api>, name: &str, options: &[(String, NamedValue)]) -> Result<Topology> {
        let values = named_values(options);
        let mut a = args!(PJRT_TopologyDescription_Create_Args {
            topology_name: name.as_ptr() as *const _,
            topology_name_size: name.len(),
            create_options: values.as_ptr(),
            num_options: values.len(),
        });
        pjrt_call!(api, PJRT_TopologyDescription_Create, &mut a)?;
        if a.topology.is_null() {
            return Err(Error::Invalid("PJRT_TopologyDescription_Create returned no topology".into()));
        }
        Ok(Topology { api: api.clone(), ptr: a.topology })
    }

    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    pub fn platform_name(&self) -> Result<String> {
        let mut a = args!(PJRT_TopologyDescription_PlatformName_Args { topology: self.ptr });
        pjrt_call!(&self.api, PJRT_TopologyDescription_PlatformName, &mut a)?;
        // SAFETY: owned by the topology, which `self` keeps alive.
        Ok(unsafe { lossy(a.platform_name, a.platform_name_size) })
    }

    pub fn platform_version(&self) -> Result<String> {
        let mut a = args!(PJRT_TopologyDescription_PlatformVersion_Args { topology: self.ptr });
        pjrt_call!(&self.api, PJRT_TopologyDescription_PlatformVersion, &mut a)?;
        // SAFETY: as for platform_name.
        Ok(unsafe { lossy(a.platform_version, a.platform_version_size) })
    }

    /// The topology's own attributes (empty when the plugin has none).
    pub fn attributes(&self) -> Result<Vec<(String, NamedValue)>> {
        let mut a = args!(PJRT_TopologyDescription_Attributes_Args { topology: self.ptr });
        pjrt_call!(&self.api, PJRT_TopologyDescription_Attributes, &mut a)?;
        // SAFETY: the values are owned by the topology.
        let values = unsafe { slice_or_empty(a.attributes, a.num_attributes) };
        Ok(values.iter().map(read_named_value).collect())
    }

    /// Every device of the topology, in the plugin's order.
    pub fn devices(&self) -> Result<Vec<DeviceDescription>> {
        let mut a = args!(PJRT_TopologyDescription_GetDeviceDescriptions_Args { topology: self.ptr });
        pjrt_call!(&self.api, PJRT_TopologyDescription_GetDeviceDescriptions, &mut a)?;
        // SAFETY: the array and the descriptions are owned by the topology.
        let ptrs = unsafe { slice_or_empty(a.descriptions, a.num_descriptions) }.to_vec();
        ptrs.into_iter().map(|d| describe(&self.api, d)).collect()
    }

    /// PJRT_Compile: compiles `code` (format "mlir" or "hlo") against this topology, with no
    /// client. `options` is a serialized xla.CompileOptionsProto.
    pub fn compile(&self, code: &[u8], format: &str, options: &[u8]) -> Result<Executable> {
        let program = args!(PJRT_Program {
            code: code.as_ptr() as *mut _,
            code_size: code.len(),
            format: format.as_ptr() as *const _,
            format_size: format.len(),
        });
        let mut a = args!(PJRT_Compile_Args {
            topology: self.ptr,
            program: &program,
            compile_options: options.as_ptr() as *const _,
            compile_options_size: options.len(),
        });
        pjrt_call!(&self.api, PJRT_Compile, &mut a)?;
        if a.executable.is_null() {
            return Err(Error::Invalid("PJRT_Compile returned no executable".into()));
        }
        Ok(Executable { api: self.api.clone(), ptr: a.executable })
    }
}

fn describe(api: &Api, d: *mut b::PJRT_DeviceDescription) -> Result<DeviceDescription> {
    let mut id = args!(PJRT_DeviceDescription_Id_Args { device_description: d });
    pjrt_call!(api, PJRT_DeviceDescription_Id, &mut id)?;
    let mut process = args!(PJRT_DeviceDescription_ProcessIndex_Args { device_description: d });
    pjrt_call!(api, PJRT_DeviceDescription_ProcessIndex, &mut process)?;
    let mut kind = args!(PJRT_DeviceDescription_Kind_Args { device_description: d });
    pjrt_call!(api, PJRT_DeviceDescription_Kind, &mut kind)?;
    let mut debug = args!(PJRT_DeviceDescription_DebugString_Args { device_description: d });
    pjrt_call!(api, PJRT_DeviceDescription_DebugString, &mut debug)?;
    let mut attrs = args!(PJRT_DeviceDescription_Attributes_Args { device_description: d });
    let attributes = match pjrt_call!(api, PJRT_DeviceDescription_Attributes, &mut attrs) {
        // SAFETY: the values are owned by the device description (and so by the topology).
        Ok(()) => unsafe { slice_or_empty(attrs.attributes, attrs.num_attributes) }.iter().map(read_named_value).collect(),
        Err(Error::Unsupported { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    // SAFETY: the strings are owned by the device description.
    let (kind, debug_string) =
        unsafe { (lossy(kind.device_kind, kind.device_kind_size), lossy(debug.debug_string, debug.debug_string_size)) };
    Ok(DeviceDescription { id: id.id, process_index: process.process_index, kind, debug_string, attributes })
}

impl Drop for Topology {
    fn drop(&mut self) {
        let mut a = args!(PJRT_TopologyDescription_Destroy_Args { topology: self.ptr });
        let _ = pjrt_call!(&self.api, PJRT_TopologyDescription_Destroy, &mut a);
    }
}

/// An executable compiled ahead of time (not loaded on any device). Drop destroys it.
pub struct Executable {
    api: Arc<Api>,
    ptr: *mut b::PJRT_Executable,
}

/// PJRT_Executable_GetCompiledMemoryStats, per device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompiledMemoryStats {
    pub generated_code: i64,
    pub arguments: i64,
    pub outputs: i64,
    /// Bytes of outputs that alias (reuse) argument buffers (donation).
    pub alias: i64,
    pub temp: i64,
    pub host_generated_code: i64,
    pub host_arguments: i64,
    pub host_outputs: i64,
    pub host_alias: i64,
    pub host_temp: i64,
    /// Only some plugins fill these; 0 when not.
    pub peak_memory: i64,
    pub total_size: i64,
}

impl Executable {
    pub fn name(&self) -> Result<String> {
        let mut a = args!(PJRT_Executable_Name_Args { executable: self.ptr });
        pjrt_call!(&self.api, PJRT_Executable_Name, &mut a)?;
        // SAFETY: owned by the executable.
        Ok(unsafe { lossy(a.executable_name, a.executable_name_size) })
    }

    pub fn num_partitions(&self) -> Result<i64> {
        let mut a = args!(PJRT_Executable_NumPartitions_Args { executable: self.ptr });
        pjrt_call!(&self.api, PJRT_Executable_NumPartitions, &mut a)?;
        Ok(a.num_partitions as i64)
    }

    pub fn memory_stats(&self) -> Result<CompiledMemoryStats> {
        let mut a = args!(PJRT_Executable_GetCompiledMemoryStats_Args { executable: self.ptr });
        pjrt_call!(&self.api, PJRT_Executable_GetCompiledMemoryStats, &mut a)?;
        Ok(CompiledMemoryStats {
            generated_code: a.generated_code_size_in_bytes,
            arguments: a.argument_size_in_bytes,
            outputs: a.output_size_in_bytes,
            alias: a.alias_size_in_bytes,
            temp: a.temp_size_in_bytes,
            host_generated_code: a.host_generated_code_size_in_bytes,
            host_arguments: a.host_argument_size_in_bytes,
            host_outputs: a.host_output_size_in_bytes,
            host_alias: a.host_alias_size_in_bytes,
            host_temp: a.host_temp_size_in_bytes,
            peak_memory: a.peak_memory_in_bytes,
            total_size: a.total_size_in_bytes,
        })
    }

    /// PJRT_Executable_GetCostAnalysis: XLA's cost properties (`flops`, `bytes accessed`, ...).
    pub fn cost_analysis(&self) -> Result<Vec<(String, NamedValue)>> {
        let mut a = args!(PJRT_Executable_GetCostAnalysis_Args { executable: self.ptr });
        pjrt_call!(&self.api, PJRT_Executable_GetCostAnalysis, &mut a)?;
        // SAFETY: the properties are owned by the executable and live as long as it.
        let values = unsafe { slice_or_empty(a.properties, a.num_properties) };
        Ok(values.iter().map(read_named_value).collect())
    }

    /// The optimised program: `(format, bytes)` (see `LoadedExecutable::optimized_program`).
    pub fn optimized_program(&self) -> Result<(String, Vec<u8>)> {
        crate::executable::optimized_program(&self.api, self.ptr)
    }

    /// PJRT_Executable_Serialize: the bytes a client of the same plugin can deserialize and load.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let mut a = args!(PJRT_Executable_Serialize_Args { executable: self.ptr });
        pjrt_call!(&self.api, PJRT_Executable_Serialize, &mut a)?;
        // SAFETY: the bytes are owned by `serialized_executable` until its deleter runs.
        let bytes = unsafe { slice_or_empty(a.serialized_bytes as *const u8, a.serialized_bytes_size) }.to_vec();
        if let (Some(deleter), false) = (a.serialized_executable_deleter, a.serialized_executable.is_null()) {
            // SAFETY: the plugin's deleter for the object it returned, called once.
            unsafe { deleter(a.serialized_executable) };
        }
        Ok(bytes)
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Executable_Destroy_Args { executable: self.ptr });
        let _ = pjrt_call!(&self.api, PJRT_Executable_Destroy, &mut a);
    }
}
