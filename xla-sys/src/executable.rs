//! PJRT_LoadedExecutable (and the PJRT_Executable behind it): output metadata, parameter
//! and output shardings (shardings extension), and execution on one or many devices with
//! donation of chosen inputs.
use crate::api::{args, lossy, pjrt_call, slice_or_empty, Api};
use crate::bindings as b;
use crate::buffer::{element_type_from_raw, Buffer};
use crate::client::{ClientInner, Device};
use crate::error::{Error, Result};
use dtype::DType;
use std::rc::Rc;

/// A compiled program loaded on a client's devices. Drop destroys it.
pub struct LoadedExecutable {
    client: Rc<ClientInner>,
    ptr: *mut b::PJRT_LoadedExecutable,
    exe: *mut b::PJRT_Executable,
}

impl LoadedExecutable {
    pub(crate) fn wrap(client: Rc<ClientInner>, ptr: *mut b::PJRT_LoadedExecutable) -> Result<Self> {
        if ptr.is_null() {
            return Err(Error::Invalid("PJRT_Client_Compile returned no executable".into()));
        }
        let mut a = args!(PJRT_LoadedExecutable_GetExecutable_Args { loaded_executable: ptr });
        let got = pjrt_call!(&client.api, PJRT_LoadedExecutable_GetExecutable, &mut a);
        let exe = LoadedExecutable { client, ptr, exe: a.executable };
        got?;
        Ok(exe)
    }

    pub fn name(&self) -> Result<String> {
        let mut a = args!(PJRT_Executable_Name_Args { executable: self.exe });
        pjrt_call!(&self.client.api, PJRT_Executable_Name, &mut a)?;
        // SAFETY: owned by the executable, which `self` keeps alive.
        Ok(unsafe { lossy(a.executable_name, a.executable_name_size) })
    }

    pub fn num_outputs(&self) -> Result<usize> {
        let mut a = args!(PJRT_Executable_NumOutputs_Args { executable: self.exe });
        pjrt_call!(&self.client.api, PJRT_Executable_NumOutputs, &mut a)?;
        Ok(a.num_outputs)
    }

    pub fn num_partitions(&self) -> Result<i64> {
        let mut a = args!(PJRT_Executable_NumPartitions_Args { executable: self.exe });
        pjrt_call!(&self.client.api, PJRT_Executable_NumPartitions, &mut a)?;
        Ok(a.num_partitions as i64)
    }

    pub fn num_replicas(&self) -> Result<i64> {
        let mut a = args!(PJRT_Executable_NumReplicas_Args { executable: self.exe });
        pjrt_call!(&self.client.api, PJRT_Executable_NumReplicas, &mut a)?;
        Ok(a.num_replicas as i64)
    }

    /// The element type of each output (per device: the same on every device).
    pub fn output_element_types(&self) -> Result<Vec<DType>> {
        let mut a = args!(PJRT_Executable_OutputElementTypes_Args { executable: self.exe });
        pjrt_call!(&self.client.api, PJRT_Executable_OutputElementTypes, &mut a)?;
        // SAFETY: owned by the executable.
        let raw = unsafe { slice_or_empty(a.output_types, a.num_output_types) };
        raw.iter()
            .map(|&t| element_type_from_raw(t).ok_or_else(|| Error::Invalid(format!("unsupported output element type {t}"))))
            .collect()
    }

    /// The per-device (shard) dimensions of each output.
    pub fn output_dims(&self) -> Result<Vec<Vec<i64>>> {
        let mut a = args!(PJRT_Executable_OutputDimensions_Args { executable: self.exe });
        pjrt_call!(&self.client.api, PJRT_Executable_OutputDimensions, &mut a)?;
        // SAFETY: both arrays are owned by the executable; `dims` holds sum(dim_sizes) values.
        let sizes = unsafe { slice_or_empty(a.dim_sizes, a.num_outputs) };
        let all = unsafe { slice_or_empty(a.dims, sizes.iter().sum()) };
        let mut out = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for &n in sizes {
            out.push(all[at..at + n].to_vec());
            at += n;
        }
        Ok(out)
    }

    /// The compiled (optimized, and for SPMD programs partitioned) program as PJRT serializes
    /// it: `(format, bytes)`, where the format is "hlo_with_config" (a serialized
    /// xla.HloModuleProtoWithConfig, what XLA's plugins return) or "hlo" (an HloModuleProto).
    pub fn optimized_program(&self) -> Result<(String, Vec<u8>)> {
        optimized_program(&self.client.api, self.exe)
    }

    /// The compiled executable as bytes the same plugin (same version) can load again with
    /// `Client::deserialize_and_load` (PJRT_Executable_Serialize).
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let mut a = args!(PJRT_Executable_Serialize_Args { executable: self.exe });
        pjrt_call!(&self.client.api, PJRT_Executable_Serialize, &mut a)?;
        // SAFETY: the bytes belong to `serialized_executable` until its deleter runs, below.
        let bytes = unsafe { slice_or_empty(a.serialized_bytes as *const u8, a.serialized_bytes_size) }.to_vec();
        if let Some(delete) = a.serialized_executable_deleter {
            // SAFETY: the plugin's deleter for the object it handed us, called once.
            unsafe { delete(a.serialized_executable) };
        }
        Ok(bytes)
    }

    /// The devices the program runs on, in execution order (`argument_lists[i]` goes to i).
    pub fn addressable_devices(&self) -> Result<Vec<Device>> {
        let mut a = args!(PJRT_LoadedExecutable_AddressableDevices_Args { executable: self.ptr });
        pjrt_call!(&self.client.api, PJRT_LoadedExecutable_AddressableDevices, &mut a)?;
        // SAFETY: owned by the executable.
        let ptrs = unsafe { slice_or_empty(a.addressable_devices, a.num_addressable_devices) };
        Ok(ptrs.iter().map(|&ptr| Device { client: self.client.clone(), ptr }).collect())
    }

    /// Serialized xla.OpSharding of each parameter, or None when the plugin lacks the
    /// shardings extension.
    pub fn parameter_shardings(&self) -> Result<Option<Vec<Vec<u8>>>> {
        self.shardings(true)
    }

    /// Serialized xla.OpSharding of each output, or None (see `parameter_shardings`).
    pub fn output_shardings(&self) -> Result<Option<Vec<Vec<u8>>>> {
        self.shardings(false)
    }

    fn shardings(&self, parameters: bool) -> Result<Option<Vec<Vec<u8>>>> {
        let api = &self.client.api;
        let Some(ext) = api.extension(b::PJRT_Extension_Type_Shardings) else {
            return Ok(None);
        };
        let ext = ext as *const b::PJRT_Shardings_Extension;
        let call = |err: *mut b::PJRT_Error, name| api.check(name, err);
        // SAFETY: an extension of type Shardings has the PJRT_Shardings_Extension layout;
        // the returned arrays are owned by the executable and outlive this function.
        unsafe {
            let (num, ptrs, sizes) = if parameters {
                let Some(f) = (*ext).PJRT_Shardings_PJRT_Executable_ParameterShardings else {
                    return Ok(None);
                };
                let mut a = args!(PJRT_Shardings_PJRT_Executable_ParameterShardings_Args { executable: self.exe });
                call(f(&mut a), "PJRT_Shardings_PJRT_Executable_ParameterShardings")?;
                (a.num_parameters, a.shardings, a.sharding_sizes)
            } else {
                let Some(f) = (*ext).PJRT_Shardings_PJRT_Executable_OutputShardings else {
                    return Ok(None);
                };
                let mut a = args!(PJRT_Shardings_PJRT_Executable_OutputShardings_Args { executable: self.exe });
                call(f(&mut a), "PJRT_Shardings_PJRT_Executable_OutputShardings")?;
                (a.num_outputs, a.shardings, a.sharding_sizes)
            };
            if ptrs.is_null() || sizes.is_null() {
                return Ok(None);
            }
            let ptrs = slice_or_empty(ptrs, num);
            let sizes = slice_or_empty(sizes, num);
            Ok(Some(ptrs.iter().zip(sizes).map(|(&p, &n)| slice_or_empty(p as *const u8, n).to_vec()).collect()))
        }
    }

    /// Runs the program: `args[d]` are the arguments for the d-th addressable device.
    /// Inputs whose index is in `donate` may be donated (consumed) where the program
    /// aliases them to an output; all others are kept. Returns `outputs[d][i]`.
    pub fn execute(&self, args: &[Vec<&Buffer>], donate: &[usize]) -> Result<Vec<Vec<Buffer>>> {
        let num_args = args.first().map_or(0, |a| a.len());
        for (d, list) in args.iter().enumerate() {
            if list.len() != num_args {
                return Err(Error::Invalid(format!("device {d} got {} arguments, device 0 got {num_args}", list.len())));
            }
            for (i, buf) in list.iter().enumerate() {
                if !Rc::ptr_eq(buf.client_inner(), &self.client) {
                    return Err(Error::Invalid(format!("argument {i} belongs to another client")));
                }
                if buf.is_deleted()? {
                    return Err(Error::Invalid(format!(
                        "argument {i} (device {d}) was donated to an earlier execution or deleted; \
                         it cannot be used again"
                    )));
                }
            }
        }
        let num_outputs = self.num_outputs()?;
        let keep: Vec<i64> = (0..num_args).filter(|i| !donate.contains(i)).map(|i| i as i64).collect();
        let mut options =
            args!(PJRT_ExecuteOptions { non_donatable_input_indices: keep.as_ptr(), num_non_donatable_input_indices: keep.len() });
        let arg_ptrs: Vec<Vec<*mut b::PJRT_Buffer>> = args.iter().map(|l| l.iter().map(|b| b.ptr).collect()).collect();
        let arg_lists: Vec<*const *mut b::PJRT_Buffer> = arg_ptrs.iter().map(|l| l.as_ptr()).collect();
        let mut out_ptrs: Vec<Vec<*mut b::PJRT_Buffer>> = vec![vec![std::ptr::null_mut(); num_outputs]; args.len()];
        let out_lists: Vec<*mut *mut b::PJRT_Buffer> = out_ptrs.iter_mut().map(|l| l.as_mut_ptr()).collect();
        let mut events: Vec<*mut b::PJRT_Event> = vec![std::ptr::null_mut(); args.len()];
        let mut a = args!(PJRT_LoadedExecutable_Execute_Args {
            executable: self.ptr,
            options: &mut options,
            argument_lists: arg_lists.as_ptr(),
            num_devices: args.len(),
            num_args,
            output_lists: out_lists.as_ptr(),
            device_complete_events: events.as_mut_ptr(),
        });
        pjrt_call!(&self.client.api, PJRT_LoadedExecutable_Execute, &mut a)?;
        // Wrap outputs first so they are freed even if an event reports an error.
        let outputs: Vec<Vec<Buffer>> =
            out_ptrs.iter().map(|l| l.iter().filter(|p| !p.is_null()).map(|&p| Buffer::wrap(self.client.clone(), p)).collect()).collect();
        let mut first_err = None;
        for ev in events {
            if let Err(e) = self.client.api.await_event("PJRT_LoadedExecutable_Execute", ev) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(outputs),
        }
    }
}

/// PJRT_Executable_OptimizedProgram of `exe` (loaded or not): `(format, bytes)`.
pub(crate) fn optimized_program(api: &Api, exe: *mut b::PJRT_Executable) -> Result<(String, Vec<u8>)> {
    // First call with no buffer: the plugin reports the size (and the format).
    let mut program = args!(PJRT_Program {});
    let mut a = args!(PJRT_Executable_OptimizedProgram_Args { executable: exe, program: &mut program });
    pjrt_call!(api, PJRT_Executable_OptimizedProgram, &mut a)?;
    let mut code = vec![0u8; program.code_size];
    // Second call fills our buffer of exactly the reported size.
    let mut program2 = args!(PJRT_Program { code: code.as_mut_ptr() as *mut _, code_size: code.len() });
    let mut a = args!(PJRT_Executable_OptimizedProgram_Args { executable: exe, program: &mut program2 });
    pjrt_call!(api, PJRT_Executable_OptimizedProgram, &mut a)?;
    // SAFETY: the format string is owned by the plugin (a static in XLA's wrapper).
    let format = unsafe { lossy(program2.format, program2.format_size) };
    Ok((format, code))
}

impl Drop for LoadedExecutable {
    fn drop(&mut self) {
        let api = &self.client.api;
        if !self.exe.is_null() {
            let mut a = args!(PJRT_Executable_Destroy_Args { executable: self.exe });
            let _ = pjrt_call!(api, PJRT_Executable_Destroy, &mut a);
        }
        let mut a = args!(PJRT_LoadedExecutable_Destroy_Args { executable: self.ptr });
        let _ = pjrt_call!(api, PJRT_LoadedExecutable_Destroy, &mut a);
    }
}
