//! PJRT_Buffer: element types, shape queries, device-to-host copies, deletion state.
use crate::api::{args, pjrt_call, slice_or_empty};
use crate::bindings as b;
use crate::client::{ClientInner, Device};
use crate::error::{Error, Result};
use dtype::DType;
use std::rc::Rc;

/// PJRT's number for an element type.
pub fn raw_element_type(d: DType) -> b::PJRT_Buffer_Type {
    match d {
        DType::Pred => b::PJRT_Buffer_Type_PRED,
        DType::S8 => b::PJRT_Buffer_Type_S8,
        DType::S16 => b::PJRT_Buffer_Type_S16,
        DType::S32 => b::PJRT_Buffer_Type_S32,
        DType::S64 => b::PJRT_Buffer_Type_S64,
        DType::U8 => b::PJRT_Buffer_Type_U8,
        DType::U16 => b::PJRT_Buffer_Type_U16,
        DType::U32 => b::PJRT_Buffer_Type_U32,
        DType::U64 => b::PJRT_Buffer_Type_U64,
        DType::F16 => b::PJRT_Buffer_Type_F16,
        DType::Bf16 => b::PJRT_Buffer_Type_BF16,
        DType::F32 => b::PJRT_Buffer_Type_F32,
        DType::F64 => b::PJRT_Buffer_Type_F64,
        DType::C64 => b::PJRT_Buffer_Type_C64,
        DType::C128 => b::PJRT_Buffer_Type_C128,
    }
}

/// The element type of a PJRT number, if gemma-xla supports it.
pub fn element_type_from_raw(raw: b::PJRT_Buffer_Type) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| raw_element_type(d) == raw)
}

/// A device buffer. Drop destroys it; it keeps its client alive.
pub struct Buffer {
    client: Rc<ClientInner>,
    pub(crate) ptr: *mut b::PJRT_Buffer,
}

impl Buffer {
    pub(crate) fn wrap(client: Rc<ClientInner>, ptr: *mut b::PJRT_Buffer) -> Buffer {
        client.live_buffers.set(client.live_buffers.get() + 1);
        Buffer { client, ptr }
    }

    pub(crate) fn client_inner(&self) -> &Rc<ClientInner> {
        &self.client
    }

    pub fn element_type(&self) -> Result<DType> {
        let mut a = args!(PJRT_Buffer_ElementType_Args { buffer: self.ptr });
        pjrt_call!(&self.client.api, PJRT_Buffer_ElementType, &mut a)?;
        element_type_from_raw(a.type_).ok_or_else(|| Error::Invalid(format!("unsupported PJRT element type {}", a.type_)))
    }

    pub fn dims(&self) -> Result<Vec<i64>> {
        let mut a = args!(PJRT_Buffer_Dimensions_Args { buffer: self.ptr });
        pjrt_call!(&self.client.api, PJRT_Buffer_Dimensions, &mut a)?;
        // SAFETY: the dims array is owned by the buffer, which `self` keeps alive.
        Ok(unsafe { slice_or_empty(a.dims, a.num_dims) }.to_vec())
    }

    /// True once the buffer was deleted or donated to an execution.
    pub fn is_deleted(&self) -> Result<bool> {
        let mut a = args!(PJRT_Buffer_IsDeleted_Args { buffer: self.ptr });
        pjrt_call!(&self.client.api, PJRT_Buffer_IsDeleted, &mut a)?;
        Ok(a.is_deleted)
    }

    pub fn device(&self) -> Result<Device> {
        let mut a = args!(PJRT_Buffer_Device_Args { buffer: self.ptr });
        pjrt_call!(&self.client.api, PJRT_Buffer_Device, &mut a)?;
        Ok(Device { client: self.client.clone(), ptr: a.device })
    }

    pub fn on_device_size_bytes(&self) -> Result<usize> {
        let mut a = args!(PJRT_Buffer_OnDeviceSizeInBytes_Args { buffer: self.ptr });
        pjrt_call!(&self.client.api, PJRT_Buffer_OnDeviceSizeInBytes, &mut a)?;
        Ok(a.on_device_size_in_bytes)
    }

    /// Copies the buffer into `dst` (dense, row-major) and waits for the copy.
    pub fn copy_to_host(&self, dst: &mut [u8]) -> Result<()> {
        let mut a = args!(PJRT_Buffer_ToHostBuffer_Args { src: self.ptr, dst: dst.as_mut_ptr() as *mut _, dst_size: dst.len() });
        pjrt_call!(&self.client.api, PJRT_Buffer_ToHostBuffer, &mut a)?;
        self.client.downloads.set(self.client.downloads.get() + 1);
        self.client.api.await_event("PJRT_Buffer_ToHostBuffer", a.event)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Buffer_Destroy_Args { buffer: self.ptr });
        let _ = pjrt_call!(&self.client.api, PJRT_Buffer_Destroy, &mut a);
        self.client.live_buffers.set(self.client.live_buffers.get() - 1);
    }
}
