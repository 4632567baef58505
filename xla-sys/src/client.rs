//! PJRT_Client and PJRT_Device: creation with named options, platform queries, devices,
//! compilation and host-to-device transfer. Children hold an `Rc<ClientInner>`, so a client
//! is destroyed only after its last buffer, device handle and executable.
use crate::api::{args, lossy, named_values, pjrt_call, slice_or_empty, Api, NamedValue};
use crate::bindings as b;
use crate::buffer::{raw_element_type, Buffer};
use crate::error::{Error, Result};
use crate::executable::LoadedExecutable;
use dtype::DType;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

pub(crate) struct ClientInner {
    pub(crate) api: Arc<Api>,
    pub(crate) ptr: *mut b::PJRT_Client,
    pub(crate) live_buffers: Cell<usize>,
    /// Host-to-device and device-to-host copies made so far (for tests and diagnostics).
    pub(crate) uploads: Cell<usize>,
    pub(crate) downloads: Cell<usize>,
    /// The key-value store the plugin's callbacks use; dropped after the client is destroyed.
    #[allow(dead_code)] // held for the plugin, which reads it through `user_arg`
    pub(crate) store: Option<crate::kv::StoreBox>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Client_Destroy_Args { client: self.ptr });
        // Drop must not panic; a failed destroy leaks the client, which is all we can do.
        let _ = pjrt_call!(&self.api, PJRT_Client_Destroy, &mut a);
    }
}

/// A PJRT client. Not Send/Sync: pjrt_c_api.h makes no thread-safety promise for clients.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Rc<ClientInner>,
}

/// A device of a client (owned by the client; valid while the client lives).
#[derive(Clone)]
pub struct Device {
    pub(crate) client: Rc<ClientInner>,
    pub(crate) ptr: *mut b::PJRT_Device,
}

impl Client {
    /// PJRT_Client_Create with the given create options (e.g. `cpu_device_count`).
    pub fn create(api: &Arc<Api>, options: &[(String, NamedValue)]) -> Result<Client> {
        Client::create_with_store(api, options, None)
    }

    /// PJRT_Client_Create with a key-value store for the plugin's `kv_get`, `kv_try_get` and
    /// `kv_put` callbacks (how a plugin coordinates the processes of a multi-host run).
    pub fn create_with_store(
        api: &Arc<Api>,
        options: &[(String, NamedValue)],
        store: Option<Arc<dyn crate::kv::KeyValueStore>>,
    ) -> Result<Client> {
        let values = named_values(options);
        let store: Option<crate::kv::StoreBox> = store.map(Box::new);
        let user =
            store.as_ref().map_or(std::ptr::null_mut(), |s| &**s as *const Arc<dyn crate::kv::KeyValueStore> as *mut std::os::raw::c_void);
        let mut a = args!(PJRT_Client_Create_Args { create_options: values.as_ptr(), num_options: values.len() });
        if store.is_some() {
            a.kv_get_callback = Some(crate::kv::kv_get);
            a.kv_get_user_arg = user;
            a.kv_try_get_callback = Some(crate::kv::kv_try_get);
            a.kv_try_get_user_arg = user;
            a.kv_put_callback = Some(crate::kv::kv_put);
            a.kv_put_user_arg = user;
        }
        pjrt_call!(api, PJRT_Client_Create, &mut a)?;
        if a.client.is_null() {
            return Err(Error::Invalid("PJRT_Client_Create returned no client".into()));
        }
        let inner = ClientInner {
            api: api.clone(),
            ptr: a.client,
            live_buffers: Cell::new(0),
            uploads: Cell::new(0),
            downloads: Cell::new(0),
            store,
        };
        Ok(Client { inner: Rc::new(inner) })
    }

    pub fn api(&self) -> &Arc<Api> {
        &self.inner.api
    }

    pub fn platform_name(&self) -> Result<String> {
        let mut a = args!(PJRT_Client_PlatformName_Args { client: self.inner.ptr });
        pjrt_call!(&self.inner.api, PJRT_Client_PlatformName, &mut a)?;
        // SAFETY: the name is owned by the client, which `self` keeps alive.
        Ok(unsafe { lossy(a.platform_name, a.platform_name_size) })
    }

    pub fn platform_version(&self) -> Result<String> {
        let mut a = args!(PJRT_Client_PlatformVersion_Args { client: self.inner.ptr });
        pjrt_call!(&self.inner.api, PJRT_Client_PlatformVersion, &mut a)?;
        // SAFETY: as for platform_name.
        Ok(unsafe { lossy(a.platform_version, a.platform_version_size) })
    }

    /// The devices this process can address, in the plugin's order.
    pub fn addressable_devices(&self) -> Result<Vec<Device>> {
        let mut a = args!(PJRT_Client_AddressableDevices_Args { client: self.inner.ptr });
        pjrt_call!(&self.inner.api, PJRT_Client_AddressableDevices, &mut a)?;
        // SAFETY: the array is owned by the client and lives as long as it.
        let ptrs = unsafe { slice_or_empty(a.addressable_devices, a.num_addressable_devices) };
        Ok(ptrs.iter().map(|&ptr| Device { client: self.inner.clone(), ptr }).collect())
    }

    /// Every device of the run, this process's and other processes' (PJRT_Client_Devices),
    /// in the plugin's order. One process: the same devices as `addressable_devices`.
    pub fn devices(&self) -> Result<Vec<Device>> {
        let mut a = args!(PJRT_Client_Devices_Args { client: self.inner.ptr });
        pjrt_call!(&self.inner.api, PJRT_Client_Devices, &mut a)?;
        // SAFETY: the array is owned by the client and lives as long as it.
        let ptrs = unsafe { slice_or_empty(a.devices, a.num_devices) };
        Ok(ptrs.iter().map(|&ptr| Device { client: self.inner.clone(), ptr }).collect())
    }

    /// Number of buffers of this client that are alive (created and not yet dropped).
    pub fn live_buffers(&self) -> usize {
        self.inner.live_buffers.get()
    }

    /// Host-to-device copies made through this client so far.
    pub fn uploads(&self) -> usize {
        self.inner.uploads.get()
    }

    /// Device-to-host copies made from this client's buffers so far.
    pub fn downloads(&self) -> usize {
        self.inner.downloads.get()
    }

    /// PJRT_Client_Compile. `format` is "mlir" (StableHLO text or bytecode) or "hlo"
    /// (serialized HloModuleProto); `options` is a serialized xla.CompileOptionsProto.
    pub fn compile(&self, code: &[u8], format: &str, options: &[u8]) -> Result<LoadedExecutable> {
        let program = args!(PJRT_Program {
            code: code.as_ptr() as *mut _,
            code_size: code.len(),
            format: format.as_ptr() as *const _,
            format_size: format.len(),
        });
        let mut a = args!(PJRT_Client_Compile_Args {
            client: self.inner.ptr,
            program: &program,
            compile_options: options.as_ptr() as *const _,
            compile_options_size: options.len(),
        });
        pjrt_call!(&self.inner.api, PJRT_Client_Compile, &mut a)?;
        LoadedExecutable::wrap(self.inner.clone(), a.executable)
    }

    /// Loads an executable serialized by `LoadedExecutable::serialize` of the same plugin
    /// (PJRT_Executable_DeserializeAndLoad); a plugin that cannot read the bytes says so.
    pub fn deserialize_and_load(&self, bytes: &[u8]) -> Result<LoadedExecutable> {
        let mut a = args!(PJRT_Executable_DeserializeAndLoad_Args {
            client: self.inner.ptr,
            serialized_executable: bytes.as_ptr() as *const _,
            serialized_executable_size: bytes.len(),
        });
        pjrt_call!(&self.inner.api, PJRT_Executable_DeserializeAndLoad, &mut a)?;
        LoadedExecutable::wrap(self.inner.clone(), a.loaded_executable)
    }

    /// Copies a dense, row-major host array to `device` and waits until the copy is done.
    pub fn buffer_from_host(&self, data: &[u8], ty: DType, dims: &[i64], device: &Device) -> Result<Buffer> {
        if !Rc::ptr_eq(&device.client, &self.inner) {
            return Err(Error::Invalid("device belongs to a different client".into()));
        }
        let count: i64 = dims.iter().product();
        if dims.iter().any(|&d| d < 0) || count as usize * ty.size_bytes() != data.len() {
            return Err(Error::Invalid(format!(
                "host data has {} bytes but {:?} of shape {:?} needs {}",
                data.len(),
                ty,
                dims,
                count.max(0) as usize * ty.size_bytes()
            )));
        }
        let mut a = args!(PJRT_Client_BufferFromHostBuffer_Args {
            client: self.inner.ptr,
            data: data.as_ptr() as *const _,
            type_: raw_element_type(ty),
            dims: dims.as_ptr(),
            num_dims: dims.len(),
            host_buffer_semantics: b::PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes,
            device: device.ptr,
        });
        pjrt_call!(&self.inner.api, PJRT_Client_BufferFromHostBuffer, &mut a)?;
        let buffer = Buffer::wrap(self.inner.clone(), a.buffer);
        self.inner.uploads.set(self.inner.uploads.get() + 1);
        // `data` is borrowed only for this call: wait until the plugin no longer reads it.
        self.inner.api.await_event("PJRT_Client_BufferFromHostBuffer", a.done_with_host_buffer)?;
        Ok(buffer)
    }
}

impl Device {
    fn description(&self) -> Result<*mut b::PJRT_DeviceDescription> {
        let mut a = args!(PJRT_Device_GetDescription_Args { device: self.ptr });
        pjrt_call!(&self.client.api, PJRT_Device_GetDescription, &mut a)?;
        Ok(a.device_description)
    }

    /// The device's global id.
    pub fn id(&self) -> Result<i32> {
        let mut a = args!(PJRT_DeviceDescription_Id_Args { device_description: self.description()? });
        pjrt_call!(&self.client.api, PJRT_DeviceDescription_Id, &mut a)?;
        Ok(a.id)
    }

    /// E.g. "cpu", "NVIDIA H100 80GB HBM3", "TPU v5 lite".
    pub fn kind(&self) -> Result<String> {
        let mut a = args!(PJRT_DeviceDescription_Kind_Args { device_description: self.description()? });
        pjrt_call!(&self.client.api, PJRT_DeviceDescription_Kind, &mut a)?;
        // SAFETY: owned by the device description, which lives as long as the client.
        Ok(unsafe { lossy(a.device_kind, a.device_kind_size) })
    }

    /// The plugin's one-line description of the device.
    pub fn debug_string(&self) -> Result<String> {
        let mut a = args!(PJRT_DeviceDescription_DebugString_Args { device_description: self.description()? });
        pjrt_call!(&self.client.api, PJRT_DeviceDescription_DebugString, &mut a)?;
        // SAFETY: as for kind.
        Ok(unsafe { lossy(a.debug_string, a.debug_string_size) })
    }

    pub fn process_index(&self) -> Result<i32> {
        let mut a = args!(PJRT_DeviceDescription_ProcessIndex_Args { device_description: self.description()? });
        pjrt_call!(&self.client.api, PJRT_DeviceDescription_ProcessIndex, &mut a)?;
        Ok(a.process_index)
    }

    pub fn local_hardware_id(&self) -> Result<i32> {
        let mut a = args!(PJRT_Device_LocalHardwareId_Args { device: self.ptr });
        pjrt_call!(&self.client.api, PJRT_Device_LocalHardwareId, &mut a)?;
        Ok(a.local_hardware_id)
    }

    /// Whether two handles name the same device.
    pub fn same_as(&self, other: &Device) -> bool {
        self.ptr == other.ptr
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.debug_string() {
            Ok(s) => write!(f, "{s}"),
            Err(_) => write!(f, "Device({:p})", self.ptr),
        }
    }
}
