//! Loading a PJRT plugin (dlopen, never unloaded), the version check, plugin attributes,
//! and the single path every PJRT call goes through (`pjrt_call!` + `Api::check`).
use crate::bindings as b;
use crate::error::{Error, ErrorCode, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The PJRT C API minor version these bindings were generated from.
pub const BINDINGS_MINOR: i32 = b::PJRT_API_MINOR as i32;
/// The oldest plugin minor version we accept (0.81 was checked to work with header 0.114).
pub const MIN_PLUGIN_MINOR: i32 = 81;

/// Fills `struct_size` of a PJRT args struct from its `*_STRUCT_SIZE` constant and zeroes the rest.
macro_rules! args {
    ($ty:ident { $($field:ident $(: $value:expr)?),* $(,)? }) => {
        paste::paste! {
            $crate::bindings::$ty {
                struct_size: $crate::bindings::[<$ty _STRUCT_SIZE>] as usize,
                $($field $(: $value)?,)*
                ..Default::default()
            }
        }
    };
}
pub(crate) use args;

/// Calls `PJRT_Api::$name` with `&mut args`, after checking the plugin's function table is
/// long enough to hold that pointer and that it is set; converts the returned error.
macro_rules! pjrt_call {
    ($api:expr, $name:ident, $args:expr) => {{
        let api: &$crate::api::Api = $api;
        let offset = std::mem::offset_of!($crate::bindings::PJRT_Api, $name);
        match api.function_present(stringify!($name), offset) {
            Err(e) => Err(e),
            // SAFETY: `function_present` checked that the plugin's table (of `struct_size`
            // bytes, which the header guarantees is readable) extends past this field.
            Ok(()) => match unsafe { std::ptr::addr_of!((*api.table()).$name).read() } {
                None => Err(api.unsupported(stringify!($name))),
                Some(f) => {
                    // SAFETY: `f` comes from the plugin's PJRT_Api table; the args struct is
                    // fully initialised with its struct_size, and every pointer in it is valid
                    // for the duration of the call (the caller's borrows outlive this call).
                    let err = unsafe { f($args) };
                    api.check(stringify!($name), err)
                }
            },
        }
    }};
}
pub(crate) use pjrt_call;

/// A value in a PJRT_NamedValue list (plugin attributes and client create options).
#[derive(Debug, Clone, PartialEq)]
pub enum NamedValue {
    Str(String),
    Int64(i64),
    Int64List(Vec<i64>),
    Float(f32),
    Bool(bool),
}

impl std::fmt::Display for NamedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamedValue::Str(s) => write!(f, "{s}"),
            NamedValue::Int64(v) => write!(f, "{v}"),
            NamedValue::Int64List(v) => {
                let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                write!(f, "{}", parts.join("."))
            }
            NamedValue::Float(v) => write!(f, "{v}"),
            NamedValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// A loaded, initialised PJRT plugin: its function table and where it came from.
pub struct Api {
    table: *const b::PJRT_Api,
    path: PathBuf,
    major: i32,
    minor: i32,
}

// SAFETY: the PJRT_Api table is an immutable struct of function pointers owned by a library
// that is never unloaded; reading it from any thread is fine. Objects created through it
// (clients, buffers, ...) are separate types that are neither Send nor Sync.
unsafe impl Send for Api {}
// SAFETY: as above, `Api` only exposes reads of the immutable table.
unsafe impl Sync for Api {}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Api>>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Api>>>> = OnceLock::new();
    LOADED.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Api {
    /// Loads the plugin at `path` (once per process and file), checks its API version and
    /// runs PJRT_Plugin_Initialize. The library is never unloaded.
    pub fn load(path: &Path) -> Result<Arc<Api>> {
        let canonical = path.canonicalize().map_err(|e| Error::Load { path: path.to_path_buf(), message: e.to_string() })?;
        let mut loaded = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(api) = loaded.get(&canonical) {
            return Ok(api.clone());
        }
        let api = Arc::new(Self::open(&canonical)?);
        api.check_version()?;
        let mut init = args!(PJRT_Plugin_Initialize_Args {});
        pjrt_call!(&api, PJRT_Plugin_Initialize, &mut init)?;
        loaded.insert(canonical, api.clone());
        Ok(api)
    }

    fn open(path: &Path) -> Result<Api> {
        let load_err = |message: String| Error::Load { path: path.to_path_buf(), message };
        if !path.is_file() {
            return Err(load_err("not a file".into()));
        }
        // dlopen of a truncated library dies of SIGBUS, and of some garbage aborts: check first.
        crate::elf::check_shared_library(path).map_err(load_err)?;
        // SAFETY: loading a shared library runs its initialisers; we only load files the user
        // named as PJRT plugins. RTLD_NOW surfaces missing symbols here instead of later.
        let lib =
            unsafe { libloading::os::unix::Library::open(Some(path), libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL) }
                .map_err(|e| load_err(e.to_string()))?;
        type GetApi = unsafe extern "C" fn() -> *const b::PJRT_Api;
        // SAFETY: GetPjrtApi has this signature in pjrt_c_api.h.
        let get: libloading::os::unix::Symbol<GetApi> =
            unsafe { lib.get(b"GetPjrtApi\0") }.map_err(|e| Error::NotAPlugin { path: path.to_path_buf(), message: e.to_string() })?;
        // SAFETY: calling the plugin's entry point; it returns a pointer to a static table.
        let table = unsafe { get() };
        // Never unload: the table and everything created from it live as long as the process.
        std::mem::forget(lib);
        if table.is_null() {
            return Err(load_err("GetPjrtApi returned a null table".into()));
        }
        // SAFETY: the header guarantees struct_size and pjrt_api_version are the first fields
        // of every PJRT_Api version, so reading them is valid for any plugin.
        let (size, version) = unsafe { ((*table).struct_size, (*table).pjrt_api_version) };
        if size < std::mem::offset_of!(b::PJRT_Api, PJRT_Error_Destroy) {
            return Err(load_err(format!("its PJRT_Api table is only {size} bytes")));
        }
        Ok(Api { table, path: path.to_path_buf(), major: version.major_version, minor: version.minor_version })
    }

    fn check_version(&self) -> Result<()> {
        if self.major != b::PJRT_API_MAJOR as i32 || self.minor < MIN_PLUGIN_MINOR {
            return Err(Error::UnsupportedVersion {
                path: self.path.clone(),
                major: self.major,
                minor: self.minor,
                supported_major: b::PJRT_API_MAJOR as i32,
                min_minor: MIN_PLUGIN_MINOR,
                max_minor: BINDINGS_MINOR,
            });
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's PJRT C API version (major, minor).
    pub fn version(&self) -> (i32, i32) {
        (self.major, self.minor)
    }

    pub(crate) fn table(&self) -> *const b::PJRT_Api {
        self.table
    }

    pub(crate) fn function_present(&self, call: &'static str, offset: usize) -> Result<()> {
        // SAFETY: struct_size is the first field of every PJRT_Api version.
        let size = unsafe { (*self.table).struct_size };
        if offset + std::mem::size_of::<usize>() > size {
            return Err(self.unsupported(call));
        }
        Ok(())
    }

    pub(crate) fn unsupported(&self, call: &'static str) -> Error {
        Error::Unsupported { call, major: self.major, minor: self.minor }
    }

    /// Turns a returned `PJRT_Error*` into `Error::Pjrt` and destroys it.
    pub(crate) fn check(&self, call: &'static str, err: *mut b::PJRT_Error) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: `err` is a live error returned by the plugin; PJRT_Error_Message and
        // GetCode borrow it, and the message stays valid until PJRT_Error_Destroy.
        let (message, code) = unsafe {
            let t = &*self.table;
            let mut m = args!(PJRT_Error_Message_Args { error: err });
            let message = match t.PJRT_Error_Message {
                Some(f) => {
                    f(&mut m);
                    lossy(m.message, m.message_size)
                }
                None => String::from("(plugin gave no message)"),
            };
            let mut c = args!(PJRT_Error_GetCode_Args { error: err });
            let code = match t.PJRT_Error_GetCode {
                Some(f) if f(&mut c).is_null() => c.code,
                _ => b::PJRT_Error_Code_UNKNOWN,
            };
            let mut d = args!(PJRT_Error_Destroy_Args { error: err });
            if let Some(f) = t.PJRT_Error_Destroy {
                f(&mut d);
            }
            (message, code)
        };
        Err(Error::Pjrt { call, code: ErrorCode(code), message })
    }

    /// Waits for `event` (may be null: nothing to wait for), then destroys it.
    pub(crate) fn await_event(&self, call: &'static str, event: *mut b::PJRT_Event) -> Result<()> {
        if event.is_null() {
            return Ok(());
        }
        let mut a = args!(PJRT_Event_Await_Args { event });
        let result = pjrt_call!(self, PJRT_Event_Await, &mut a).map_err(|e| match e {
            Error::Pjrt { code, message, .. } => Error::Pjrt { call, code, message },
            other => other,
        });
        let mut d = args!(PJRT_Event_Destroy_Args { event });
        let _ = pjrt_call!(self, PJRT_Event_Destroy, &mut d);
        result
    }

    /// PJRT_Plugin_Attributes: xla_version, stablehlo_current_version, ... (empty if the
    /// plugin does not implement it).
    pub fn attributes(&self) -> Result<Vec<(String, NamedValue)>> {
        let mut a = args!(PJRT_Plugin_Attributes_Args {});
        match pjrt_call!(self, PJRT_Plugin_Attributes, &mut a) {
            Err(Error::Unsupported { .. }) => return Ok(Vec::new()),
            r => r?,
        }
        // SAFETY: the plugin returns `num_attributes` NamedValues it owns for its lifetime.
        let values = unsafe { slice_or_empty(a.attributes, a.num_attributes) };
        Ok(values.iter().map(read_named_value).collect())
    }

    /// Finds the extension of `type_` in the table's extension chain.
    pub(crate) fn extension(&self, type_: b::PJRT_Extension_Type) -> Option<*const b::PJRT_Extension_Base> {
        let offset = std::mem::offset_of!(b::PJRT_Api, extension_start);
        self.function_present("extension_start", offset).ok()?;
        // SAFETY: extension_start is within the table; each extension's base struct (of
        // PJRT_Extension_Base layout) points to the next or is null.
        unsafe {
            let mut ext = (*self.table).extension_start as *const b::PJRT_Extension_Base;
            while !ext.is_null() {
                if (*ext).type_ == type_ {
                    return Some(ext);
                }
                ext = (*ext).next;
            }
        }
        None
    }
}

/// Reads a NamedValue the plugin owns into an owned Rust value.
pub(crate) fn read_named_value(v: &b::PJRT_NamedValue) -> (String, NamedValue) {
    // SAFETY: name/name_size and the union member selected by `type_` are set by the plugin
    // and stay valid while it is loaded (forever).
    unsafe {
        let name = lossy(v.name, v.name_size);
        let value = match v.type_ {
            b::PJRT_NamedValue_kString => NamedValue::Str(lossy(v.__bindgen_anon_1.string_value, v.value_size)),
            b::PJRT_NamedValue_kInt64 => NamedValue::Int64(v.__bindgen_anon_1.int64_value),
            b::PJRT_NamedValue_kInt64List => {
                NamedValue::Int64List(slice_or_empty(v.__bindgen_anon_1.int64_array_value, v.value_size).to_vec())
            }
            b::PJRT_NamedValue_kFloat => NamedValue::Float(v.__bindgen_anon_1.float_value),
            b::PJRT_NamedValue_kBool => NamedValue::Bool(v.__bindgen_anon_1.bool_value),
            other => NamedValue::Str(format!("<unknown named value type {other}>")),
        };
        (name, value)
    }
}

/// Builds PJRT_NamedValues that borrow from `options` (which must outlive the call).
pub(crate) fn named_values(options: &[(String, NamedValue)]) -> Vec<b::PJRT_NamedValue> {
    options
        .iter()
        .map(|(name, value)| {
            let mut v = args!(PJRT_NamedValue { name: name.as_ptr() as *const _, name_size: name.len() });
            match value {
                NamedValue::Str(s) => {
                    v.type_ = b::PJRT_NamedValue_kString;
                    v.__bindgen_anon_1.string_value = s.as_ptr() as *const _;
                    v.value_size = s.len();
                }
                NamedValue::Int64(i) => {
                    v.type_ = b::PJRT_NamedValue_kInt64;
                    v.__bindgen_anon_1.int64_value = *i;
                    v.value_size = 1;
                }
                NamedValue::Int64List(l) => {
                    v.type_ = b::PJRT_NamedValue_kInt64List;
                    v.__bindgen_anon_1.int64_array_value = l.as_ptr();
                    v.value_size = l.len();
                }
                NamedValue::Float(x) => {
                    v.type_ = b::PJRT_NamedValue_kFloat;
                    v.__bindgen_anon_1.float_value = *x;
                    v.value_size = 1;
                }
                NamedValue::Bool(x) => {
                    v.type_ = b::PJRT_NamedValue_kBool;
                    v.__bindgen_anon_1.bool_value = *x;
                    v.value_size = 1;
                }
            }
            v
        })
        .collect()
}

/// A (pointer, length) pair from the plugin as a slice; null or zero length gives `&[]`.
///
/// # Safety
/// `ptr` must point to `len` initialised values that outlive the returned slice.
pub(crate) unsafe fn slice_or_empty<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// A (char pointer, length) pair from the plugin as an owned String.
///
/// # Safety
/// As for `slice_or_empty`.
pub(crate) unsafe fn lossy(ptr: *const std::os::raw::c_char, len: usize) -> String {
    String::from_utf8_lossy(slice_or_empty(ptr as *const u8, len)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(major: i32, minor: i32) -> Api {
        let mut table = Box::new(b::PJRT_Api::default());
        table.struct_size = 100; // a short table: only the first few functions exist
        table.pjrt_api_version.major_version = major;
        table.pjrt_api_version.minor_version = minor;
        Api { table: Box::leak(table), path: PathBuf::from("/plugins/old.so"), major, minor }
    }

    #[test]
    fn old_and_foreign_versions_are_refused_with_the_file_named() {
        let err = fake(0, 54).check_version().unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "PJRT plugin /plugins/old.so implements PJRT C API 0.54, but gemma-xla supports \
                 0.{MIN_PLUGIN_MINOR} up to 0.{BINDINGS_MINOR} (and later minors)"
            )
        );
        assert!(fake(1, 0).check_version().is_err());
        assert!(fake(0, MIN_PLUGIN_MINOR).check_version().is_ok());
        assert!(fake(0, 200).check_version().is_ok());
    }

    #[test]
    fn functions_beyond_a_short_table_are_unsupported_not_called() {
        let api = fake(0, 90);
        let mut a = args!(PJRT_Client_Create_Args {});
        let err = pjrt_call!(&api, PJRT_Client_Create, &mut a).unwrap_err().to_string();
        assert_eq!(err, "PJRT_Client_Create is not provided by this PJRT plugin (its C API is 0.90)");
    }
}
