//! XLA's typed FFI (xla/ffi/api/c_api.h, API 0.3): handlers for custom calls, registered with
//! a plugin through its PJRT FFI extension.
//!
//! A handler is a type implementing [`FfiHandler`]; [`register_handler`] hands the plugin a C
//! entry point made for that type. The entry point answers XLA's metadata query (the API
//! version and traits), ignores the stages before `EXECUTE`, decodes the call frame into an
//! [`FfiCall`] (buffers with their element type and dimensions, attributes) and turns the
//! handler's `Err` (or a panic) into an `XLA_FFI_Error`, which fails the execution with that
//! message. Nothing unwinds into the plugin.
use crate::api::{args, Api};
use crate::bindings as b;
use crate::error::{Error, Result};
use dtype::DType;
use std::borrow::Cow;

/// The element type of an XLA FFI data type code, when gemma-xla has a `DType` for it.
fn dtype_from_raw(code: b::XLA_FFI_DataType) -> Option<DType> {
    Some(match code {
        b::XLA_FFI_DataType_PRED => DType::Pred,
        b::XLA_FFI_DataType_S8 => DType::S8,
        b::XLA_FFI_DataType_S16 => DType::S16,
        b::XLA_FFI_DataType_S32 => DType::S32,
        b::XLA_FFI_DataType_S64 => DType::S64,
        b::XLA_FFI_DataType_U8 => DType::U8,
        b::XLA_FFI_DataType_U16 => DType::U16,
        b::XLA_FFI_DataType_U32 => DType::U32,
        b::XLA_FFI_DataType_U64 => DType::U64,
        b::XLA_FFI_DataType_F16 => DType::F16,
        b::XLA_FFI_DataType_BF16 => DType::Bf16,
        b::XLA_FFI_DataType_F32 => DType::F32,
        b::XLA_FFI_DataType_F64 => DType::F64,
        b::XLA_FFI_DataType_C64 => DType::C64,
        b::XLA_FFI_DataType_C128 => DType::C128,
        _ => return None,
    })
}

/// An operand of a custom call: its type, dimensions (row-major logical order; the memory
/// layout is whatever the custom call's `operand_layouts` said) and bytes.
pub struct FfiArg<'a> {
    pub dtype: DType,
    pub dims: &'a [i64],
    bytes: Cow<'a, [u8]>,
}

impl FfiArg<'_> {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A result of a custom call, to be written in full by the handler.
pub struct FfiRet<'a> {
    pub dtype: DType,
    pub dims: &'a [i64],
    bytes: &'a mut [u8],
}

impl FfiRet<'_> {
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
}

/// An attribute of a custom call (`mhlo.backend_config` of a typed FFI call).
#[derive(Debug, Clone, PartialEq)]
pub enum FfiAttr {
    /// Any integer or boolean scalar, widened.
    Int(i64),
    /// A floating-point scalar, widened.
    Float(f64),
    Str(String),
    /// An array of integers, widened.
    IntArray(Vec<i64>),
    FloatArray(Vec<f64>),
    Dict(Vec<(String, FfiAttr)>),
}

/// One call of a handler: its operands, results and attributes, in the call's order.
pub struct FfiCall<'a> {
    pub args: Vec<FfiArg<'a>>,
    pub rets: Vec<FfiRet<'a>>,
    pub attrs: Vec<(String, FfiAttr)>,
}

impl FfiCall<'_> {
    /// The attribute `name`, if the call has it.
    pub fn attr(&self, name: &str) -> Option<&FfiAttr> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }
}

/// A custom-call implementation. `execute` runs on the plugin's threads, possibly several at
/// once, and must fill every result.
pub trait FfiHandler: 'static {
    fn execute(call: &mut FfiCall<'_>) -> std::result::Result<(), String>;
}

/// The C entry point XLA calls for handler `H`.
unsafe extern "C" fn entry<H: FfiHandler>(frame: *mut b::XLA_FFI_CallFrame) -> *mut b::XLA_FFI_Error {
    if frame.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY (whole block): XLA passes a call frame that is valid for the duration of the
    // call, whose extension chain, args, rets and attrs arrays have the lengths it states.
    unsafe {
        let ext = (*frame).extension_start;
        if !ext.is_null() && (*ext).type_ == b::XLA_FFI_Extension_Metadata {
            // The registration-time query: which FFI API version this handler was built for.
            let md = (*(ext as *mut b::XLA_FFI_Metadata_Extension)).metadata;
            if !md.is_null() {
                (*md).api_version.major_version = b::XLA_FFI_API_MAJOR as i32;
                (*md).api_version.minor_version = b::XLA_FFI_API_MINOR as i32;
                (*md).traits = 0;
            }
            return std::ptr::null_mut();
        }
        if (*frame).stage != b::XLA_FFI_ExecutionStage_EXECUTE {
            return std::ptr::null_mut();
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ieee = IeeeSubnormals::enter();
            let mut call = decode(&*frame)?;
            H::execute(&mut call)
        }));
        let message = match outcome {
            Ok(Ok(())) => return std::ptr::null_mut(),
            Ok(Err(m)) => m,
            Err(p) => {
                let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                format!("handler panicked: {}", what.unwrap_or_default())
            }
        };
        make_error(&*frame, &message)
    }
}

/// XLA's CPU threads flush subnormal numbers to zero (MXCSR FTZ and DAZ on x86-64), which
/// breaks algorithms that scale by tiny numbers (faer's complex SVD gives wrong singular
/// values under it). Handlers run with IEEE subnormals; the caller's mode is restored on drop.
struct IeeeSubnormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl IeeeSubnormals {
    #[cfg(target_arch = "x86_64")]
    const FTZ_DAZ: u32 = 0x8040;

    fn enter() -> IeeeSubnormals {
        #[cfg(target_arch = "x86_64")]
        {
            let mut saved = 0u32;
            // SAFETY: stmxcsr stores the 32-bit MXCSR register into `saved`; ldmxcsr loads a
            // value that differs from it only in the FTZ and DAZ bits.
            unsafe {
                std::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack));
                let ieee = saved & !Self::FTZ_DAZ;
                std::arch::asm!("ldmxcsr [{}]", in(reg) &ieee, options(nostack, readonly));
            }
            IeeeSubnormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        IeeeSubnormals {}
    }
}

impl Drop for IeeeSubnormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: restores the MXCSR value read in `enter` on this same thread.
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.saved, options(nostack, readonly));
        }
    }
}

/// Builds an `XLA_FFI_Error` with `message` through the frame's API table.
unsafe fn make_error(frame: &b::XLA_FFI_CallFrame, message: &str) -> *mut b::XLA_FFI_Error {
    let text = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `frame.api` is XLA's FFI API table for this call (null only in the metadata
    // query, handled before); Error_Create copies the message.
    unsafe {
        let Some(api) = frame.api.as_ref() else { return std::ptr::null_mut() };
        let Some(create) = api.XLA_FFI_Error_Create else { return std::ptr::null_mut() };
        let mut a = b::XLA_FFI_Error_Create_Args {
            struct_size: b::XLA_FFI_Error_Create_Args_STRUCT_SIZE as usize,
            extension_start: std::ptr::null_mut(),
            message: text.as_ptr(),
            errc: b::XLA_FFI_Error_Code_INVALID_ARGUMENT,
        };
        create(&mut a)
    }
}

/// Number of bytes of a buffer of `dtype` and `dims`, with checked arithmetic.
fn byte_len(dtype: DType, dims: &[i64]) -> std::result::Result<usize, String> {
    let mut n = dtype.size_bytes();
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| format!("negative dimension {d} in {dims:?}"))?;
        n = n.checked_mul(d).ok_or_else(|| format!("buffer of {dims:?} {} overflows", dtype.name()))?;
    }
    Ok(n)
}

struct RawBuffer {
    dtype: DType,
    dims: *const i64,
    rank: usize,
    data: *mut u8,
    len: usize,
}

unsafe fn read_buffer(ptr: *mut std::ffi::c_void, what: &str) -> std::result::Result<RawBuffer, String> {
    // SAFETY: the caller passes an arg/ret of type BUFFER, which points to an XLA_FFI_Buffer.
    unsafe {
        let buf = ptr as *const b::XLA_FFI_Buffer;
        let buf = buf.as_ref().ok_or_else(|| format!("{what} is null"))?;
        let dtype = dtype_from_raw(buf.dtype).ok_or_else(|| format!("{what} has unsupported element type code {}", buf.dtype))?;
        let rank = usize::try_from(buf.rank).map_err(|_| format!("{what} has rank {}", buf.rank))?;
        let dims: &[i64] = if rank == 0 { &[] } else { std::slice::from_raw_parts(buf.dims, rank) };
        let len = byte_len(dtype, dims).map_err(|e| format!("{what}: {e}"))?;
        if buf.data.is_null() && len > 0 {
            return Err(format!("{what} has no data"));
        }
        Ok(RawBuffer { dtype, dims: buf.dims, rank, data: buf.data as *mut u8, len })
    }
}

fn overlaps(a: &RawBuffer, b: &RawBuffer) -> bool {
    let (a0, b0) = (a.data as usize, b.data as usize);
    a.len > 0 && b.len > 0 && a0 < b0 + b.len && b0 < a0 + a.len
}

/// Decodes a call frame. Operands that share memory with a result (XLA aliases them when the
/// custom call says `output_operand_aliases`) are copied first, so a handler may read every
/// operand while it writes the results.
unsafe fn decode(frame: &b::XLA_FFI_CallFrame) -> std::result::Result<FfiCall<'_>, String> {
    // SAFETY (whole block): the arrays have `size` entries (XLA's call frame contract), each
    // buffer's data holds `len` bytes and stays valid while the handler runs; results do not
    // overlap one another (checked), so the `&mut` slices are disjoint.
    unsafe {
        let nargs = usize::try_from(frame.args.size).map_err(|_| "negative argument count".to_string())?;
        let nrets = usize::try_from(frame.rets.size).map_err(|_| "negative result count".to_string())?;
        let mut args = Vec::with_capacity(nargs);
        for i in 0..nargs {
            if *frame.args.types.add(i) != b::XLA_FFI_ArgType_BUFFER {
                return Err(format!("operand {i} is not a buffer"));
            }
            args.push(read_buffer(*frame.args.args.add(i), &format!("operand {i}"))?);
        }
        let mut rets = Vec::with_capacity(nrets);
        for i in 0..nrets {
            if *frame.rets.types.add(i) != b::XLA_FFI_RetType_BUFFER {
                return Err(format!("result {i} is not a buffer"));
            }
            rets.push(read_buffer(*frame.rets.rets.add(i), &format!("result {i}"))?);
        }
        for i in 0..rets.len() {
            for j in i + 1..rets.len() {
                if overlaps(&rets[i], &rets[j]) {
                    return Err(format!("results {i} and {j} share memory"));
                }
            }
        }
        let dims = |r: &RawBuffer| -> &[i64] {
            if r.rank == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(r.dims, r.rank)
            }
        };
        let call_args = args
            .iter()
            .map(|a| {
                let data = if a.len == 0 {
                    Cow::Borrowed(&[][..])
                } else if rets.iter().any(|r| overlaps(a, r)) {
                    let mut copy = vec![0u8; a.len];
                    std::ptr::copy_nonoverlapping(a.data, copy.as_mut_ptr(), a.len);
                    Cow::Owned(copy)
                } else {
                    Cow::Borrowed(std::slice::from_raw_parts(a.data as *const u8, a.len))
                };
                FfiArg { dtype: a.dtype, dims: dims(a), bytes: data }
            })
            .collect();
        let call_rets = rets
            .iter()
            .map(|r| {
                let bytes: &mut [u8] = if r.len == 0 { &mut [] } else { std::slice::from_raw_parts_mut(r.data, r.len) };
                FfiRet { dtype: r.dtype, dims: dims(r), bytes }
            })
            .collect();
        let attrs = decode_attrs(&frame.attrs)?;
        Ok(FfiCall { args: call_args, rets: call_rets, attrs })
    }
}

unsafe fn decode_attrs(attrs: &b::XLA_FFI_Attrs) -> std::result::Result<Vec<(String, FfiAttr)>, String> {
    // SAFETY: `attrs` has `size` names, types and values as XLA's call frame states.
    unsafe {
        let n = usize::try_from(attrs.size).map_err(|_| "negative attribute count".to_string())?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let name = &**attrs.names.add(i);
            let name = String::from_utf8_lossy(span(name.ptr as *const u8, name.len)).into_owned();
            let value = decode_attr(*attrs.types.add(i), *attrs.attrs.add(i)).map_err(|e| format!("attribute {name}: {e}"))?;
            out.push((name, value));
        }
        Ok(out)
    }
}

unsafe fn span<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    // SAFETY: the caller passes a pointer to `len` readable bytes (or len 0).
    unsafe {
        if len == 0 || ptr.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(ptr, len)
        }
    }
}

unsafe fn decode_attr(ty: b::XLA_FFI_AttrType, value: *mut std::ffi::c_void) -> std::result::Result<FfiAttr, String> {
    // SAFETY: `value` points to the struct `ty` names (XLA's call frame contract); scalar and
    // array data have the element type they state.
    unsafe {
        match ty {
            b::XLA_FFI_AttrType_SCALAR => {
                let s = &*(value as *const b::XLA_FFI_Scalar);
                scalar(s.dtype, s.value as *const u8, 0)
            }
            b::XLA_FFI_AttrType_STRING => {
                let s = &*(value as *const b::XLA_FFI_ByteSpan);
                Ok(FfiAttr::Str(String::from_utf8_lossy(span(s.ptr as *const u8, s.len)).into_owned()))
            }
            b::XLA_FFI_AttrType_ARRAY => {
                let a = &*(value as *const b::XLA_FFI_Array);
                let mut ints = Vec::new();
                let mut floats = Vec::new();
                for k in 0..a.size {
                    match scalar(a.dtype, a.data as *const u8, k)? {
                        FfiAttr::Int(v) => ints.push(v),
                        FfiAttr::Float(v) => floats.push(v),
                        _ => unreachable!("scalar() returns numbers"),
                    }
                }
                Ok(if floats.is_empty() { FfiAttr::IntArray(ints) } else { FfiAttr::FloatArray(floats) })
            }
            b::XLA_FFI_AttrType_DICTIONARY => Ok(FfiAttr::Dict(decode_attrs(&*(value as *const b::XLA_FFI_Attrs))?)),
            other => Err(format!("unknown attribute kind {other}")),
        }
    }
}

/// Element `k` of an array of scalars of type `dtype` at `ptr`.
unsafe fn scalar(dtype: b::XLA_FFI_DataType, ptr: *const u8, k: usize) -> std::result::Result<FfiAttr, String> {
    let t = dtype_from_raw(dtype).ok_or_else(|| format!("unsupported element type code {dtype}"))?;
    // SAFETY: `ptr` holds at least k + 1 elements of type `t` (caller); read_unaligned
    // tolerates any alignment.
    unsafe {
        let p = ptr.add(k * t.size_bytes());
        Ok(match t {
            DType::Pred | DType::U8 => FfiAttr::Int(p.read() as i64),
            DType::S8 => FfiAttr::Int((p as *const i8).read() as i64),
            DType::S16 => FfiAttr::Int((p as *const i16).read_unaligned() as i64),
            DType::U16 => FfiAttr::Int((p as *const u16).read_unaligned() as i64),
            DType::S32 => FfiAttr::Int((p as *const i32).read_unaligned() as i64),
            DType::U32 => FfiAttr::Int((p as *const u32).read_unaligned() as i64),
            DType::S64 => FfiAttr::Int((p as *const i64).read_unaligned()),
            DType::U64 => FfiAttr::Int((p as *const u64).read_unaligned() as i64),
            DType::F32 => FfiAttr::Float((p as *const f32).read_unaligned() as f64),
            DType::F64 => FfiAttr::Float((p as *const f64).read_unaligned()),
            other => return Err(format!("unsupported {} attribute", other.name())),
        })
    }
}

/// Registers `H` as the typed-FFI handler of custom-call `target` on `platform` (XLA
/// canonicalizes the name: "cpu" and "Host" are the same) in the plugin's process-wide
/// registry. Registering the same handler again is harmless; a different handler under a
/// registered name is refused by XLA. `Error::Unsupported` when the plugin has no FFI extension.
pub fn register_handler<H: FfiHandler>(api: &Api, target: &str, platform: &str) -> Result<()> {
    let Some(ext) = api.extension(b::PJRT_Extension_Type_FFI) else {
        return Err(api.unsupported("PJRT_FFI_Extension"));
    };
    // SAFETY: an extension of type FFI has the PJRT_FFI_Extension layout (its struct_size is
    // checked to cover register_handler); the args borrow `target` and `platform`, which the
    // plugin copies during the call.
    unsafe {
        let needed = std::mem::offset_of!(b::PJRT_FFI_Extension, register_handler) + std::mem::size_of::<usize>();
        if (*ext).struct_size < needed {
            return Err(api.unsupported("PJRT_FFI_Register_Handler"));
        }
        let ext = ext as *const b::PJRT_FFI_Extension;
        let Some(f) = (*ext).register_handler else {
            return Err(api.unsupported("PJRT_FFI_Register_Handler"));
        };
        let handler: unsafe extern "C" fn(*mut b::XLA_FFI_CallFrame) -> *mut b::XLA_FFI_Error = entry::<H>;
        let mut a = args!(PJRT_FFI_Register_Handler_Args {
            target_name: target.as_ptr() as *const _,
            target_name_size: target.len(),
            handler: handler as *mut std::ffi::c_void,
            platform_name: platform.as_ptr() as *const _,
            platform_name_size: platform.len(),
        });
        api.check("PJRT_FFI_Register_Handler", f(&mut a)).map_err(|e| match e {
            Error::Pjrt { call, code, message } => {
                Error::Pjrt { call, code, message: format!("registering FFI handler {target}: {message}") }
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The entry point driven as XLA drives it, with call frames built here: the metadata
    //! query, skipped stages, buffers and attributes, operands that alias results, and the
    //! handler's errors and panics turned into `XLA_FFI_Error`s.
    use super::*;
    use std::cell::RefCell;

    // The entry calls the handler on the calling thread: per-thread records keep the tests,
    // which run in parallel, apart.
    thread_local! {
        static MESSAGES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        static ATTRS: RefCell<Vec<(String, FfiAttr)>> = const { RefCell::new(Vec::new()) };
    }

    unsafe extern "C" fn create_error(args: *mut b::XLA_FFI_Error_Create_Args) -> *mut b::XLA_FFI_Error {
        // SAFETY: the entry passes a valid args struct with a NUL-terminated message.
        let message = unsafe { std::ffi::CStr::from_ptr((*args).message) }.to_string_lossy().into_owned();
        MESSAGES.with(|m| m.borrow_mut().push(message));
        std::ptr::NonNull::dangling().as_ptr() // non-null: "an error"; never dereferenced here
    }

    /// Doubles operand 0 into result 0 (after the attribute checks the test asks for).
    struct Double;
    impl FfiHandler for Double {
        fn execute(call: &mut FfiCall<'_>) -> std::result::Result<(), String> {
            if call.attr("panic").is_some() {
                panic!("asked to");
            }
            if let Some(FfiAttr::Int(1)) = call.attr("fail") {
                return Err("told to fail".into());
            }
            let x: Vec<f32> = call.args[0].bytes().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            for (o, v) in call.rets[0].bytes_mut().chunks_mut(4).zip(&x) {
                o.copy_from_slice(&(2.0 * v).to_le_bytes());
            }
            ATTRS.with(|a| a.borrow_mut().clone_from(&call.attrs));
            Ok(())
        }
    }

    /// What the frame points into, kept alive through the call.
    #[allow(dead_code)]
    struct Frame {
        api: Box<b::XLA_FFI_Api>,
        dims: Box<[i64; 1]>,
        arg: Box<b::XLA_FFI_Buffer>,
        ret: Box<b::XLA_FFI_Buffer>,
        arg_types: Box<[b::XLA_FFI_ArgType; 1]>,
        ret_types: Box<[b::XLA_FFI_RetType; 1]>,
        arg_ptrs: Box<[*mut std::ffi::c_void; 1]>,
        ret_ptrs: Box<[*mut std::ffi::c_void; 1]>,
    }

    /// A call frame over `input` -> `output` (the same memory when `alias`) with `attrs`
    /// (name, type, value pointer).
    fn run(input: &mut [f32; 3], output: &mut [f32; 3], alias: bool, attrs: &mut [Attr<'_>]) -> *mut b::XLA_FFI_Error {
        run_at(b::XLA_FFI_ExecutionStage_EXECUTE, input, output, alias, attrs)
    }

    type Attr<'a> = (&'a str, b::XLA_FFI_AttrType, *mut std::ffi::c_void);

    fn run_at(
        stage: b::XLA_FFI_ExecutionStage,
        input: &mut [f32; 3],
        output: &mut [f32; 3],
        alias: bool,
        attrs: &mut [Attr<'_>],
    ) -> *mut b::XLA_FFI_Error {
        let mut api = Box::new(b::XLA_FFI_Api::default());
        api.XLA_FFI_Error_Create = Some(create_error);
        let mut dims = Box::new([3i64]);
        let buffer = |data: *mut f32, dims: &mut [i64; 1]| b::XLA_FFI_Buffer {
            struct_size: b::XLA_FFI_Buffer_STRUCT_SIZE as usize,
            extension_start: std::ptr::null_mut(),
            dtype: b::XLA_FFI_DataType_F32,
            data: data as *mut _,
            rank: 1,
            dims: dims.as_mut_ptr(),
        };
        let mut arg = Box::new(buffer(input.as_mut_ptr(), &mut dims));
        let out_ptr = if alias { input.as_mut_ptr() } else { output.as_mut_ptr() };
        let mut ret = Box::new(buffer(out_ptr, &mut dims));
        let mut f = Frame {
            arg_ptrs: Box::new([&mut *arg as *mut _ as *mut _]),
            ret_ptrs: Box::new([&mut *ret as *mut _ as *mut _]),
            api,
            dims,
            arg,
            ret,
            arg_types: Box::new([b::XLA_FFI_ArgType_BUFFER]),
            ret_types: Box::new([b::XLA_FFI_RetType_BUFFER]),
        };
        let mut names: Vec<b::XLA_FFI_ByteSpan> =
            attrs.iter().map(|(n, _, _)| b::XLA_FFI_ByteSpan { ptr: n.as_ptr() as *const _, len: n.len() }).collect();
        let mut name_ptrs: Vec<*mut b::XLA_FFI_ByteSpan> = names.iter_mut().map(|n| n as *mut _).collect();
        let mut types: Vec<b::XLA_FFI_AttrType> = attrs.iter().map(|a| a.1).collect();
        let mut values: Vec<*mut std::ffi::c_void> = attrs.iter().map(|a| a.2).collect();
        let mut frame = b::XLA_FFI_CallFrame {
            struct_size: b::XLA_FFI_CallFrame_STRUCT_SIZE as usize,
            api: &*f.api,
            stage,
            args: b::XLA_FFI_Args {
                struct_size: b::XLA_FFI_Args_STRUCT_SIZE as usize,
                extension_start: std::ptr::null_mut(),
                size: 1,
                types: f.arg_types.as_mut_ptr(),
                args: f.arg_ptrs.as_mut_ptr(),
            },
            rets: b::XLA_FFI_Rets {
                struct_size: b::XLA_FFI_Rets_STRUCT_SIZE as usize,
                extension_start: std::ptr::null_mut(),
                size: 1,
                types: f.ret_types.as_mut_ptr(),
                rets: f.ret_ptrs.as_mut_ptr(),
            },
            attrs: b::XLA_FFI_Attrs {
                struct_size: b::XLA_FFI_Attrs_STRUCT_SIZE as usize,
                extension_start: std::ptr::null_mut(),
                size: attrs.len() as i64,
                types: types.as_mut_ptr(),
                names: name_ptrs.as_mut_ptr(),
                attrs: values.as_mut_ptr(),
            },
            ..Default::default()
        };
        // SAFETY: every pointer in the frame points into the boxes and vectors above, alive
        // for the call.
        unsafe { entry::<Double>(&mut frame) }
    }

    #[test]
    fn the_metadata_query_gets_the_header_version() {
        let mut md = b::XLA_FFI_Metadata { struct_size: b::XLA_FFI_Metadata_STRUCT_SIZE as usize, ..Default::default() };
        let mut ext = b::XLA_FFI_Metadata_Extension {
            extension_base: b::XLA_FFI_Extension_Base {
                struct_size: b::XLA_FFI_Metadata_Extension_STRUCT_SIZE as usize,
                type_: b::XLA_FFI_Extension_Metadata,
                next: std::ptr::null_mut(),
            },
            metadata: &mut md,
        };
        let mut frame = b::XLA_FFI_CallFrame {
            struct_size: b::XLA_FFI_CallFrame_STRUCT_SIZE as usize,
            extension_start: &mut ext.extension_base,
            ..Default::default()
        };
        // SAFETY: a metadata frame as XLA builds one (no api, no buffers).
        assert!(unsafe { entry::<Double>(&mut frame) }.is_null());
        assert_eq!((md.api_version.major_version, md.api_version.minor_version), (0, 3));
        assert_eq!(md.traits, 0);
    }

    #[test]
    fn buffers_and_attributes_reach_the_handler() {
        let (mut x, mut y) = ([1f32, 2., 3.], [0f32; 3]);
        let mut mode = 86u8; // 'V', as JAX passes mode = 86 : ui8
        let mut mode_scalar = b::XLA_FFI_Scalar { dtype: b::XLA_FFI_DataType_U8, value: &mut mode as *mut _ as *mut _ };
        let mut low = -7i32;
        let mut low_scalar = b::XLA_FFI_Scalar { dtype: b::XLA_FFI_DataType_S32, value: &mut low as *mut _ as *mut _ };
        let text = "abc";
        let mut span = b::XLA_FFI_ByteSpan { ptr: text.as_ptr() as *const _, len: 3 };
        let mut items = [4i64, 5];
        let mut array = b::XLA_FFI_Array { dtype: b::XLA_FFI_DataType_S64, size: 2, data: items.as_mut_ptr() as *mut _ };
        let err = run(
            &mut x,
            &mut y,
            false,
            &mut [
                ("mode", b::XLA_FFI_AttrType_SCALAR, &mut mode_scalar as *mut _ as *mut _),
                ("low", b::XLA_FFI_AttrType_SCALAR, &mut low_scalar as *mut _ as *mut _),
                ("s", b::XLA_FFI_AttrType_STRING, &mut span as *mut _ as *mut _),
                ("a", b::XLA_FFI_AttrType_ARRAY, &mut array as *mut _ as *mut _),
            ],
        );
        assert!(err.is_null());
        assert_eq!(y, [2., 4., 6.]);
        let attrs = ATTRS.with(|a| a.borrow().clone());
        assert_eq!(
            attrs,
            vec![
                ("mode".to_string(), FfiAttr::Int(86)),
                ("low".to_string(), FfiAttr::Int(-7)),
                ("s".to_string(), FfiAttr::Str("abc".into())),
                ("a".to_string(), FfiAttr::IntArray(vec![4, 5])),
            ]
        );
    }

    #[test]
    fn an_operand_that_aliases_its_result_is_read_before_it_is_written() {
        let (mut x, mut y) = ([1f32, 2., 3.], [0f32; 3]);
        assert!(run(&mut x, &mut y, true, &mut []).is_null());
        assert_eq!(x, [2., 4., 6.]);
    }

    #[test]
    fn errors_and_panics_become_ffi_errors() {
        let (mut x, mut y) = ([1f32, 2., 3.], [0f32; 3]);
        let mut one = 1u8;
        let mut s = b::XLA_FFI_Scalar { dtype: b::XLA_FFI_DataType_PRED, value: &mut one as *mut _ as *mut _ };
        let err = run(&mut x, &mut y, false, &mut [("fail", b::XLA_FFI_AttrType_SCALAR, &mut s as *mut _ as *mut _)]);
        assert!(!err.is_null());
        assert!(MESSAGES.with(|m| m.borrow().contains(&"told to fail".to_string())));
        let err = run(&mut x, &mut y, false, &mut [("panic", b::XLA_FFI_AttrType_SCALAR, &mut s as *mut _ as *mut _)]);
        assert!(!err.is_null());
        assert!(MESSAGES.with(|m| m.borrow().iter().any(|m| m == "handler panicked: asked to")));
        // Before the execute stage the handler is not called (no error though told to fail).
        let err = run_at(
            b::XLA_FFI_ExecutionStage_PREPARE,
            &mut x,
            &mut y,
            false,
            &mut [("fail", b::XLA_FFI_AttrType_SCALAR, &mut s as *mut _ as *mut _)],
        );
        assert!(err.is_null());
    }
}
