//! The runtime's client: a loaded plugin plus a PJRT client, with plugin facts for
//! `gemma-xla devices`, compilation, and host <-> device copies of `HostArray`s.
use crate::compile_cache::CompileCache;
use crate::discovery::PluginSpec;
use crate::error::{Error, Result};
use crate::executable::Executable;
use crate::host::{AsHostView, HostArray};
use crate::options::CompileOptions;
use crate::program::Program;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use xla_sys::{Api, Buffer, Device, NamedValue};

/// What a plugin says about itself.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// The plugin file that was loaded.
    pub path: PathBuf,
    /// The PJRT C API version the plugin implements, as `(major, minor)`.
    pub api_version: (i32, i32),
    /// The plugin's attributes (PJRT_Plugin_Attributes: `xla_version`,
    /// `stablehlo_current_version`, ...), in the plugin's order; empty when it reports none.
    pub attributes: Vec<(String, NamedValue)>,
    /// The custom-call targets we registered with the plugin through XLA's FFI (JAX's CPU
    /// LAPACK calls, on the CPU plugin), or why none could be.
    pub ffi_targets: std::result::Result<Vec<String>, String>,
}

impl PluginInfo {
    /// The value of the plugin attribute `name`, if the plugin reports one.
    pub fn attribute(&self, name: &str) -> Option<&NamedValue> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// A PJRT client of a loaded plugin. Cheap to clone: clones share the plugin, the client,
/// its devices and the compilation cache (reference counted, one thread), so `Jit`,
/// trainers and generators each own one.
#[derive(Clone)]
pub struct Client {
    inner: xla_sys::Client,
    info: Rc<PluginInfo>,
    cache: Option<Rc<CompileCache>>,
}

impl Client {
    /// Finds (or installs) the plugin and creates a client. `devices` sets the CPU plugin's
    /// `cpu_device_count`; on other plugins it is checked against the devices present.
    pub fn open(spec: &PluginSpec, devices: Option<usize>) -> Result<Client> {
        Client::open_as(spec, devices, None)
    }

    /// [`Client::open`] for process `process` of a multi-process run. The CPU plugin is given
    /// the create option `process_id` (its devices then carry that process index and ids
    /// 2048 * process + i); other plugins learn their process from their own environment, so
    /// their process index must already be `process`.
    pub fn open_as(spec: &PluginSpec, devices: Option<usize>, process: Option<usize>) -> Result<Client> {
        Client::open_with_store(spec, devices, process, None)
    }

    /// [`Client::open_as`], handing the plugin `store` for its key-value callbacks (libtpu
    /// coordinates the hosts of a slice through it, as under JAX; the CPU plugin never calls it).
    pub fn open_with_store(
        spec: &PluginSpec,
        devices: Option<usize>,
        process: Option<usize>,
        store: Option<std::sync::Arc<dyn xla_sys::KeyValueStore>>,
    ) -> Result<Client> {
        if devices == Some(0) {
            return Err(Error::Argument("the number of devices must be at least 1, got 0".into()));
        }
        if let Some(n) = devices.filter(|&n| n > MAX_DEVICES) {
            return Err(Error::Argument(format!("{n} devices asked for; at most {MAX_DEVICES} are supported")));
        }
        let path = spec.resolve()?;
        if matches!(spec, PluginSpec::Tpu) || path.file_name().is_some_and(|n| n.to_string_lossy().contains("libtpu")) {
            // Without it libtpu queries the GCE metadata server for minutes on a machine that
            // is not a TPU VM before failing; on a TPU VM the queries are not needed to run.
            crate::topology::skip_metadata_queries();
        }
        let mut options = Vec::new();
        let cpu = spec.is_cpu() || is_cpu_plugin_file(&path);
        if let (true, Some(n)) = (cpu, devices) {
            options.push(("cpu_device_count".to_string(), NamedValue::Int64(n as i64)));
        }
        if let (true, Some(p)) = (cpu, process) {
            let p =
                i64::try_from(p).ok().filter(|&p| p < 1 << 20).ok_or_else(|| Error::Argument(format!("process index {p} is too large")))?;
            options.push(("process_id".to_string(), NamedValue::Int64(p)));
        }
        let client = Client::with_options_and_store(&path, &options, store)?;
        if let Some(p) = process {
            let have = client.process_index()?;
            if have != p {
                return Err(Error::Argument(format!("this process was started as process {p}, but the plugin says it is process {have}")));
            }
        }
        if let Some(n) = devices {
            let have = client.devices()?.len();
            if have < n {
                return Err(Error::NotEnoughDevices { needed: n, available: have, hint: String::new() });
            }
        }
        Ok(client)
    }

    /// Loads the plugin at `path` and creates a client with raw create options.
    pub fn with_options(path: &Path, options: &[(String, NamedValue)]) -> Result<Client> {
        Client::with_options_and_store(path, options, None)
    }

    fn with_options_and_store(
        path: &Path,
        options: &[(String, NamedValue)],
        store: Option<std::sync::Arc<dyn xla_sys::KeyValueStore>>,
    ) -> Result<Client> {
        let api = Api::load(path)?;
        let mut info = plugin_info(&api)?;
        let inner = xla_sys::Client::create_with_store(&api, options, store)?;
        if inner.platform_name().is_ok_and(|p| p == "cpu") {
            // JAX's CPU programs call LAPACK through custom calls that jaxlib, not the plugin,
            // implements. Registering again (another client) is harmless.
            info.ffi_targets = match crate::linalg::register(&api) {
                Ok(()) => Ok(crate::linalg::targets()),
                Err(e) => Err(e.to_string()),
            };
        }
        Ok(Client { inner, info: Rc::new(info), cache: None })
    }

    /// What this client's plugin says about itself.
    pub fn plugin(&self) -> &PluginInfo {
        &self.info
    }

    /// The platform name the PJRT client reports (e.g. `cpu`, `cuda`, `tpu`).
    pub fn platform_name(&self) -> Result<String> {
        Ok(self.inner.platform_name()?)
    }

    /// The platform version string the PJRT client reports (plugin-specific; part of the
    /// compilation cache key).
    pub fn platform_version(&self) -> Result<String> {
        Ok(self.inner.platform_version()?)
    }

    /// The devices this process can address, in the plugin's order: device i of a mesh is
    /// the i-th of them.
    pub fn devices(&self) -> Result<Vec<Device>> {
        Ok(self.inner.addressable_devices()?)
    }

    /// Every device of the run, including other processes' on a multi-host slice
    /// (`PJRT_Client_Devices`), in the plugin's order.
    pub fn global_devices(&self) -> Result<Vec<Device>> {
        Ok(self.inner.devices()?)
    }

    /// This process's index among the processes of a multi-host run, as PJRT reports it (the
    /// process index of its first addressable device; 0 when alone).
    pub fn process_index(&self) -> Result<usize> {
        let devices = self.inner.addressable_devices()?;
        let Some(first) = devices.first() else { return Ok(0) };
        let p = first.process_index()?;
        usize::try_from(p).map_err(|_| Error::Argument(format!("the plugin gives process index {p}")))
    }

    /// Host-to-device copies made so far (tests show arrays stay on the devices).
    pub fn uploads(&self) -> usize {
        self.inner.uploads()
    }

    /// Device-to-host copies made so far.
    pub fn downloads(&self) -> usize {
        self.inner.downloads()
    }

    /// Buffers of this client currently alive: tests end by checking it is back to zero.
    pub fn live_buffers(&self) -> usize {
        self.inner.live_buffers()
    }

    /// Compiled programs are kept in (and loaded from) `cache` from now on; None: no cache.
    /// Applies to this value and to clones made after the call.
    pub fn set_compile_cache(&mut self, cache: Option<CompileCache>) {
        self.cache = cache.map(Rc::new);
    }

    /// The persistent compilation cache, if any.
    pub fn compile_cache(&self) -> Option<&CompileCache> {
        self.cache.as_deref()
    }

    /// Compiles `program` (or loads it from the compilation cache, when there is one and it
    /// has a sound entry for exactly this program, these options, this plugin and this many
    /// devices). Compilations that ask XLA for a dump (in the options, or `--xla_dump_to` in
    /// `XLA_FLAGS`) always compile, so that the dump is written.
    pub fn compile(&self, program: &Program, options: &CompileOptions) -> Result<Executable> {
        check_sizes(program)?;
        let have = self.devices()?.len();
        if options.num_devices() > have {
            return Err(Error::NotEnoughDevices {
                needed: options.num_devices(),
                available: have,
                hint: if self.info.path.to_string_lossy().contains("cpu") {
                    format!(" (ask for more with --devices {})", options.num_devices())
                } else {
                    String::new()
                },
            });
        }
        let encoded = options.encode();
        let dumping = options.dump.is_some() || std::env::var("XLA_FLAGS").is_ok_and(|f| f.contains("xla_dump_to"));
        let Some(cache) = self.cache.as_ref().filter(|_| !dumping) else {
            let exe = self.inner.compile(&program.bytes, program.pjrt_format(), &encoded)?;
            return Executable::new(exe, program, options.mesh.as_ref());
        };
        let key = CompileCache::key(
            &self.info,
            &self.platform_version()?,
            &self.devices()?.iter().map(|d| d.id().map(i64::from)).collect::<Result<Vec<i64>, _>>()?,
            program.pjrt_format(),
            &program.bytes,
            &encoded,
            &CompileCache::compiler_env(),
        );
        if let Some(bytes) = cache.load(&key) {
            match self.inner.deserialize_and_load(&bytes) {
                Ok(exe) => {
                    cache.count_hit();
                    return Executable::new(exe, program, options.mesh.as_ref());
                }
                Err(_) => cache.count_rejected(),
            }
        }
        cache.count_miss();
        let exe = self.inner.compile(&program.bytes, program.pjrt_format(), &encoded)?;
        match exe.serialize() {
            Ok(bytes) => cache.store(&key, &bytes),
            Err(e) => crate::notes::note(&format!("note: this plugin cannot serialize executables, so nothing is cached: {e}")),
        }
        Executable::new(exe, program, options.mesh.as_ref())
    }

    /// Copies `array` (a `HostArray` or a borrowed `HostView`) to `device`.
    pub fn upload(&self, array: &impl AsHostView, device: &Device) -> Result<Buffer> {
        let v = array.host_view();
        Ok(self.inner.buffer_from_host(v.bytes, v.dtype, v.dims, device)?)
    }
}

/// Copies a buffer back to the host; a donated or deleted buffer is a clear error.
pub fn download(buffer: &Buffer) -> Result<HostArray> {
    if buffer.is_deleted()? {
        return Err(Error::Argument("this buffer was donated to an execution (or deleted) and cannot be used again".into()));
    }
    let dtype = buffer.element_type()?;
    let dims = buffer.dims()?;
    let mut data = vec![0u8; crate::host::element_count(&dims)? * dtype.size_bytes()];
    buffer.copy_to_host(&mut data)?;
    HostArray::from_bytes(dtype, &dims, data)
}

/// The most devices a client may be asked for (the CPU plugin creates as many as asked).
pub const MAX_DEVICES: usize = 4096;

/// The largest array a program may take or return: 1 TiB (far above any device's memory).
const MAX_ARRAY_BYTES: usize = 1 << 40;

/// Refuses programs typed with impossibly large arrays before the compiler sees them (XLA
/// would fail with an exception that cannot cross the C API).
fn check_sizes(program: &Program) -> Result<()> {
    let lists = [("parameter", &program.params), ("result", &program.results)];
    for (what, types) in lists.iter().filter_map(|(w, t)| Some((*w, t.as_ref()?))) {
        for (i, t) in types.iter().enumerate() {
            if t.size_bytes().is_none_or(|b| b > MAX_ARRAY_BYTES) {
                return Err(Error::Program(format!("{what} {i} is {t}, larger than the supported {MAX_ARRAY_BYTES} bytes")));
            }
        }
    }
    Ok(())
}

fn is_cpu_plugin_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().contains("cpu"))
}

fn plugin_info(api: &Arc<Api>) -> Result<PluginInfo> {
    Ok(PluginInfo {
        path: api.path().to_path_buf(),
        api_version: api.version(),
        attributes: api.attributes()?,
        ffi_targets: Err("not a CPU plugin".into()),
    })
}
