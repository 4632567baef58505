//! PJRT_Buffer: element types, shape queries, device-to-host copies, deletion state.
use crate::api::{args, pjrt_call, slice_or_empty};
use crate::bindings as b;
use crate::client::{ClientInner, Device};
use crate::error::{Error, Result};
use std::rc::Rc;

/// The element types gemma-xla moves between host and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    Pred,
    S8,
    S16,
    S32,
    S64,
    U8,
    U16,
    U32,
    U64,
    F16,
    Bf16,
    F32,
    F64,
}

impl ElementType {
    const TABLE: [(ElementType, b::PJRT_Buffer_Type, usize, &'static str); 13] = [
        (ElementType::Pred, b::PJRT_Buffer_Type_PRED, 1, "pred"),
        (ElementType::S8, b::PJRT_Buffer_Type_S8, 1, "s8"),
        (ElementType::S16, b::PJRT_Buffer_Type_S16, 2, "s16"),
        (ElementType::S32, b::PJRT_Buffer_Type_S32, 4, "s32"),
        (ElementType::S64, b::PJRT_Buffer_Type_S64, 8, "s64"),
        (ElementType::U8, b::PJRT_Buffer_Type_U8, 1, "u8"),
        (ElementType::U16, b::PJRT_Buffer_Type_U16, 2, "u16"),
        (ElementType::U32, b::PJRT_Buffer_Type_U32, 4, "u32"),
        (ElementType::U64, b::PJRT_Buffer_Type_U64, 8, "u64"),
        (ElementType::F16, b::PJRT_Buffer_Type_F16, 2, "f16"),
        (ElementType::Bf16, b::PJRT_Buffer_Type_BF16, 2, "bf16"),
        (ElementType::F32, b::PJRT_Buffer_Type_F32, 4, "f32"),
        (ElementType::F64, b::PJRT_Buffer_Type_F64, 8, "f64"),
    ];

    fn entry(self) -> &'static (ElementType, b::PJRT_Buffer_Type, usize, &'static str) {
        Self::TABLE.iter().find(|e| e.0 == self).expect("internal: every type is in TABLE")
    }
    pub fn raw(self) -> b::PJRT_Buffer_Type {
        self.entry().1
    }
    pub fn size_bytes(self) -> usize {
        self.entry().2
    }
    /// The StableHLO / HLO spelling: "f32", "bf16", "pred", ...
    pub fn name(self) -> &'static str {
        self.entry().3
    }
    pub fn from_raw(raw: b::PJRT_Buffer_Type) -> Option<ElementType> {
        Self::TABLE.iter().find(|e| e.1 == raw).map(|e| e.0)
    }
    /// Accepts both HLO ("s32", "pred") and MLIR ("i32", "i1", "ui8") spellings.
    pub fn from_name(name: &str) -> Option<ElementType> {
        let hlo = match name {
            "i1" => "pred",
            "i8" => "s8",
            "i16" => "s16",
            "i32" => "s32",
            "i64" => "s64",
            "ui8" => "u8",
            "ui16" => "u16",
            "ui32" => "u32",
            "ui64" => "u64",
            other => other,
        };
        Self::TABLE.iter().find(|e| e.3 == hlo).map(|e| e.0)
    }
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

    pub fn element_type(&self) -> Result<ElementType> {
        let mut a = args!(PJRT_Buffer_ElementType_Args { buffer: self.ptr });
        pjrt_call!(&self.client.api, PJRT_Buffer_ElementType, &mut a)?;
        ElementType::from_raw(a.type_)
            .ok_or_else(|| Error::Invalid(format!("unsupported PJRT element type {}", a.type_)))
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
        let mut a = args!(PJRT_Buffer_ToHostBuffer_Args {
            src: self.ptr,
            dst: dst.as_mut_ptr() as *mut _,
            dst_size: dst.len(),
        });
        pjrt_call!(&self.client.api, PJRT_Buffer_ToHostBuffer, &mut a)?;
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
