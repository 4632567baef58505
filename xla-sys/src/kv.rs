//! The key-value store a plugin may use to coordinate the processes of a multi-host run: the
//! `kv_get`/`kv_try_get`/`kv_put` callbacks of `PJRT_Client_Create` (JAX hands libtpu its
//! distributed client's store this way). The store is a Rust trait object; the C callbacks
//! here call it, turn its errors into PJRT errors through the plugin's `callback_error`, and
//! hand values out in allocations the plugin frees through `value_deleter_callback`.
use crate::bindings as b;
use std::os::raw::c_char;
use std::sync::Arc;
use std::time::Duration;

/// Why a store operation failed, as the plugin is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No value under the key (after the timeout, for `get`).
    NotFound(String),
    /// The wait ran out.
    DeadlineExceeded(String),
    /// Anything else (the coordinator is gone, another host failed, ...).
    Unavailable(String),
}

/// A key-value store shared by the processes of a run. Called from the plugin's threads.
pub trait KeyValueStore: Send + Sync {
    /// The value under `key`, waiting up to `timeout` for some process to put it.
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, StoreError>;
    /// The value under `key` if present now.
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key`.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
}

/// What `user_arg` points to while a client lives.
pub(crate) type StoreBox = Box<Arc<dyn KeyValueStore>>;

/// Values handed to the plugin: an 8-byte length header before the bytes, so the deleter
/// (which gets only the data pointer) can rebuild the allocation.
fn leak_value(v: Vec<u8>) -> (*mut c_char, usize) {
    let n = v.len();
    let mut boxed = Vec::with_capacity(8 + n);
    boxed.extend_from_slice(&(n as u64).to_ne_bytes());
    boxed.extend_from_slice(&v);
    let raw = Box::into_raw(boxed.into_boxed_slice()) as *mut u8;
    // SAFETY: the allocation holds 8 + n bytes; the data starts after the header.
    (unsafe { raw.add(8) } as *mut c_char, n)
}

unsafe extern "C" fn delete_value(value: *mut c_char) {
    if value.is_null() {
        return;
    }
    // SAFETY: `value` came from `leak_value`: its allocation starts 8 bytes before it, with
    // the data length there.
    unsafe {
        let start = (value as *mut u8).sub(8);
        let mut len = [0u8; 8];
        std::ptr::copy_nonoverlapping(start, len.as_mut_ptr(), 8);
        let n = u64::from_ne_bytes(len) as usize;
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(start, 8 + n)));
    }
}

/// A PJRT error made by the plugin's `callback_error` (null when it gave none).
unsafe fn error(callback_error: *mut b::PJRT_CallbackError, e: &StoreError) -> *mut b::PJRT_Error {
    let (code, message) = match e {
        StoreError::NotFound(m) => (b::PJRT_Error_Code_NOT_FOUND, m),
        StoreError::DeadlineExceeded(m) => (b::PJRT_Error_Code_DEADLINE_EXCEEDED, m),
        StoreError::Unavailable(m) => (b::PJRT_Error_Code_UNAVAILABLE, m),
    };
    // SAFETY: the plugin passes a valid pointer to its error constructor (or null).
    match unsafe { callback_error.as_ref() }.copied().flatten() {
        Some(make) => unsafe { make(code, message.as_ptr() as *const c_char, message.len()) },
        None => std::ptr::null_mut(),
    }
}

unsafe fn key_of(key: *const c_char, size: usize) -> String {
    if key.is_null() {
        return String::new();
    }
    // SAFETY: the plugin passes `size` readable bytes at `key`.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(key as *const u8, size) }).into_owned()
}

fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    // A panic must not unwind into the plugin's C++ frames.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(StoreError::Unavailable("the key-value store panicked".into())))
}

pub(crate) unsafe extern "C" fn kv_get(args: *mut b::PJRT_KeyValueGetCallback_Args) -> *mut b::PJRT_Error {
    // SAFETY: the plugin passes valid arguments; `user_arg` is the `StoreBox` of this client.
    let a = unsafe { &mut *args };
    let store = unsafe { &*(a.user_arg as *const Arc<dyn KeyValueStore>) };
    let key = unsafe { key_of(a.key, a.key_size) };
    let timeout = Duration::from_millis(a.timeout_in_ms.max(0) as u64);
    match guarded(|| store.get(&key, timeout)) {
        Ok(v) => {
            let (ptr, n) = leak_value(v);
            a.value = ptr;
            a.value_size = n;
            a.value_deleter_callback = Some(delete_value);
            std::ptr::null_mut()
        }
        Err(e) => unsafe { error(a.callback_error, &e) },
    }
}

pub(crate) unsafe extern "C" fn kv_try_get(args: *mut b::PJRT_KeyValueTryGetCallback_Args) -> *mut b::PJRT_Error {
    // SAFETY: as for `kv_get`.
    let a = unsafe { &mut *args };
    let store = unsafe { &*(a.user_arg as *const Arc<dyn KeyValueStore>) };
    let key = unsafe { key_of(a.key, a.key_size) };
    match guarded(|| store.try_get(&key)) {
        Ok(Some(v)) => {
            let (ptr, n) = leak_value(v);
            a.value = ptr;
            a.value_size = n;
            a.value_deleter_callback = Some(delete_value);
            std::ptr::null_mut()
        }
        Ok(None) => unsafe { error(a.callback_error, &StoreError::NotFound(format!("no value for key {key:?}"))) },
        Err(e) => unsafe { error(a.callback_error, &e) },
    }
}

pub(crate) unsafe extern "C" fn kv_put(args: *mut b::PJRT_KeyValuePutCallback_Args) -> *mut b::PJRT_Error {
    // SAFETY: as for `kv_get`; `value` holds `value_size` bytes.
    let a = unsafe { &mut *args };
    let store = unsafe { &*(a.user_arg as *const Arc<dyn KeyValueStore>) };
    let key = unsafe { key_of(a.key, a.key_size) };
    let value = if a.value.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(a.value as *const u8, a.value_size) } };
    match guarded(|| store.put(&key, value)) {
        Ok(()) => std::ptr::null_mut(),
        Err(e) => unsafe { error(a.callback_error, &e) },
    }
}

#[cfg(test)]
mod tests {
    //! No plugin on this machine calls the callbacks (the CPU plugin ignores them; libtpu
    //! calls them on TPU hardware only), so they are called here as a plugin would.
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    struct Map(Mutex<HashMap<String, Vec<u8>>>);

    impl KeyValueStore for Map {
        fn get(&self, key: &str, _: Duration) -> Result<Vec<u8>, StoreError> {
            self.0.lock().unwrap().get(key).cloned().ok_or_else(|| StoreError::DeadlineExceeded(format!("{key} never came")))
        }
        fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.0.lock().unwrap().insert(key.to_string(), value.to_vec());
            Ok(())
        }
    }

    static LAST: Mutex<Option<(u32, String)>> = Mutex::new(None);

    unsafe extern "C" fn make_error(code: b::PJRT_Error_Code, message: *const c_char, size: usize) -> *mut b::PJRT_Error {
        let m = unsafe { key_of(message, size) };
        *LAST.lock().unwrap() = Some((code, m));
        std::ptr::dangling_mut::<b::PJRT_Error>() // a non-null marker; never dereferenced
    }

    #[test]
    fn the_callbacks_put_get_and_report_errors_as_a_plugin_sees_them() {
        let store: StoreBox = Box::new(Arc::new(Map(Mutex::new(HashMap::new()))));
        let user = &*store as *const Arc<dyn KeyValueStore> as *mut std::os::raw::c_void;
        let mut make: b::PJRT_CallbackError = Some(make_error);
        let (key, value) = ("topology/1", b"\x00\x01 bytes".to_vec());
        let mut put = b::PJRT_KeyValuePutCallback_Args {
            key: key.as_ptr() as *const c_char,
            key_size: key.len(),
            value: value.as_ptr() as *const c_char,
            value_size: value.len(),
            callback_error: &mut make,
            user_arg: user,
            ..Default::default()
        };
        assert!(unsafe { kv_put(&mut put) }.is_null());
        let mut get = b::PJRT_KeyValueGetCallback_Args {
            key: key.as_ptr() as *const c_char,
            key_size: key.len(),
            timeout_in_ms: 1000,
            callback_error: &mut make,
            user_arg: user,
            ..Default::default()
        };
        assert!(unsafe { kv_get(&mut get) }.is_null());
        let got = unsafe { std::slice::from_raw_parts(get.value as *const u8, get.value_size) }.to_vec();
        assert_eq!(got, value);
        unsafe { get.value_deleter_callback.unwrap()(get.value) };
        // A missing key: the plugin's error constructor is called with the code and message.
        let missing = "nobody/put/this";
        let mut try_get = b::PJRT_KeyValueTryGetCallback_Args {
            key: missing.as_ptr() as *const c_char,
            key_size: missing.len(),
            callback_error: &mut make,
            user_arg: user,
            ..Default::default()
        };
        assert!(!unsafe { kv_try_get(&mut try_get) }.is_null());
        assert_eq!(LAST.lock().unwrap().clone().unwrap(), (b::PJRT_Error_Code_NOT_FOUND, "no value for key \"nobody/put/this\"".into()));
        get.key = missing.as_ptr() as *const c_char;
        get.key_size = missing.len();
        assert!(!unsafe { kv_get(&mut get) }.is_null());
        assert_eq!(LAST.lock().unwrap().clone().unwrap().0, b::PJRT_Error_Code_DEADLINE_EXCEEDED);
        // An empty value round-trips too.
        put.value_size = 0;
        assert!(unsafe { kv_put(&mut put) }.is_null());
        get.key = key.as_ptr() as *const c_char;
        get.key_size = key.len();
        assert!(unsafe { kv_get(&mut get) }.is_null());
        assert_eq!(get.value_size, 0);
        unsafe { delete_value(get.value) };
    }
}
