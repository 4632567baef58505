//! Host arrays: dense row-major bytes with an element type and dimensions, convertible to
//! and from `ndarray` arrays of the matching Rust type.
use crate::error::{Error, Result};
use dtype::{DType, TensorType};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use std::ops::Range;

/// A Rust type that maps to one PJRT element type.
pub trait Element: Copy + 'static {
    /// The element type of this Rust type.
    const TYPE: DType;
    /// The values' bytes in the host's native byte order (`bool`: one byte, 0 or 1, per value).
    fn to_bytes(values: &[Self]) -> Vec<u8>;
    /// Values read back from bytes laid out as [`Element::to_bytes`] writes them (`bool`: any
    /// non-zero byte is true); `bytes` should hold whole elements.
    fn from_bytes(bytes: &[u8]) -> Vec<Self>;
}

macro_rules! pod_element {
    ($($t:ty => $e:ident),*) => {$(
        impl Element for $t {
            const TYPE: DType = DType::$e;
            fn to_bytes(values: &[Self]) -> Vec<u8> {
                bytemuck::cast_slice(values).to_vec()
            }
            fn from_bytes(bytes: &[u8]) -> Vec<Self> {
                bytemuck::pod_collect_to_vec(bytes)
            }
        }
    )*};
}
pod_element!(f32 => F32, f64 => F64, f16 => F16, bf16 => Bf16, i8 => S8, i16 => S16,
             i32 => S32, i64 => S64, u8 => U8, u16 => U16, u32 => U32, u64 => U64,
             num_complex::Complex<f32> => C64, num_complex::Complex<f64> => C128);

impl Element for bool {
    const TYPE: DType = DType::Pred;
    fn to_bytes(values: &[Self]) -> Vec<u8> {
        values.iter().map(|&b| b as u8).collect()
    }
    fn from_bytes(bytes: &[u8]) -> Vec<Self> {
        bytes.iter().map(|&b| b != 0).collect()
    }
}

/// A borrowed dense row-major array (e.g. a tensor inside a memory-mapped checkpoint).
#[derive(Clone, Copy, Debug)]
pub struct HostView<'a> {
    /// The element type.
    pub dtype: DType,
    /// The dimensions, outermost first.
    pub dims: &'a [i64],
    /// The elements, row-major, in the host's native byte order.
    pub bytes: &'a [u8],
}

impl HostView<'_> {
    /// A copy converted to another float type (f16, bf16, f32, f64), rounding to nearest.
    pub fn convert_float(&self, to: DType) -> Result<HostArray> {
        let owned = HostArray::from_bytes(self.dtype, self.dims, self.bytes.to_vec())?;
        if !matches!(self.dtype, DType::F16 | DType::Bf16 | DType::F32 | DType::F64) {
            return Err(Error::Argument(format!("cannot convert {} to {to}: not a float", self.dtype)));
        }
        let v = owned.to_f64_vec();
        match to {
            DType::F64 => HostArray::from_vec(self.dims, v),
            DType::F32 => HostArray::from_vec(self.dims, v.into_iter().map(|x| x as f32).collect()),
            DType::Bf16 => HostArray::from_vec(self.dims, v.into_iter().map(bf16::from_f64).collect()),
            DType::F16 => HostArray::from_vec(self.dims, v.into_iter().map(f16::from_f64).collect()),
            other => Err(Error::Argument(format!("cannot convert {} to {other}: not a float", self.dtype))),
        }
    }

    /// The array's element type and dimensions.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype, self.dims)
    }

    /// `f32[4,2]`
    pub fn type_string(&self) -> String {
        self.ty().to_string()
    }

    /// The box `region` (one range per dimension) of the array, as a new array.
    pub fn slice(&self, region: &[Range<i64>]) -> Result<HostArray> {
        if region.len() != self.dims.len() || region.iter().zip(self.dims).any(|(r, &n)| r.start < 0 || r.start > r.end || r.end > n) {
            return Err(Error::Argument(format!("region {region:?} is not inside {}", self.type_string())));
        }
        let extent: Vec<i64> = region.iter().map(|r| r.end - r.start).collect();
        let mut out = vec![0u8; element_count(&extent)? * self.dtype.size_bytes()];
        let (at, zero): (Vec<i64>, Vec<i64>) = region.iter().map(|r| (r.start, 0)).unzip();
        sharding::copy_box(self.bytes, self.dims, &at, &mut out, &extent, &zero, &extent, self.dtype.size_bytes());
        HostArray::from_bytes(self.dtype, &extent, out)
    }
}

/// Anything that can be read as a host array without copying.
pub trait AsHostView {
    /// A borrowed view of the array's element type, dimensions and bytes.
    fn host_view(&self) -> HostView<'_>;
}

impl AsHostView for HostView<'_> {
    fn host_view(&self) -> HostView<'_> {
        *self
    }
}

impl AsHostView for HostArray {
    fn host_view(&self) -> HostView<'_> {
        HostView { dtype: self.dtype, dims: &self.dims, bytes: &self.data }
    }
}

/// A dense row-major array in host memory.
#[derive(Clone, PartialEq)]
pub struct HostArray {
    dtype: DType,
    dims: Vec<i64>,
    data: Vec<u8>,
}

impl HostArray {
    /// An array of `dtype` and `dims` over `data` (row-major, native byte order). Fails with
    /// [`Error::Argument`] when a dimension is negative or `data` is not exactly the array's size.
    pub fn from_bytes(dtype: DType, dims: &[i64], data: Vec<u8>) -> Result<HostArray> {
        let count = element_count(dims)?;
        if count * dtype.size_bytes() != data.len() {
            return Err(Error::Argument(format!(
                "{} bytes do not make a {dtype}{dims:?} array ({} bytes)",
                data.len(),
                count * dtype.size_bytes()
            )));
        }
        Ok(HostArray { dtype, dims: dims.to_vec(), data })
    }

    /// An array of `dims` holding `values` (row-major). Fails with [`Error::Argument`] when a
    /// dimension is negative or the number of values does not match `dims`.
    pub fn from_vec<T: Element>(dims: &[i64], values: Vec<T>) -> Result<HostArray> {
        Self::from_bytes(T::TYPE, dims, T::to_bytes(&values))
    }

    /// A copy of `array`, in row-major order whatever its memory layout.
    pub fn from_ndarray<T: Element>(array: &ArrayD<T>) -> HostArray {
        let dims: Vec<i64> = array.shape().iter().map(|&d| d as i64).collect();
        let values: Vec<T> = array.iter().copied().collect(); // row-major, whatever the layout
        HostArray { dtype: T::TYPE, dims, data: T::to_bytes(&values) }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[i64] {
        &self.dims
    }
    /// The elements, row-major, in the host's native byte order.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size_bytes()
    }
    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values as a Vec of `T`; `T` must be this array's element type.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::TYPE != self.dtype {
            return Err(Error::Argument(format!("array holds {} but {} was requested", self.dtype, T::TYPE)));
        }
        Ok(T::from_bytes(&self.data))
    }

    /// The array as an `ndarray` of `T`; `T` must be this array's element type.
    pub fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>> {
        let shape: Vec<usize> = self.dims.iter().map(|&d| d as usize).collect();
        ArrayD::from_shape_vec(IxDyn(&shape), self.to_vec()?).map_err(|e| Error::Argument(format!("internal shape error: {e}")))
    }

    /// Values converted to f64, for summaries and comparisons of any numeric type; for a
    /// complex type, each element's real and imaginary parts, interleaved (twice as many).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let d = &self.data;
        match self.dtype {
            DType::Pred => d.iter().map(|&b| (b != 0) as u8 as f64).collect(),
            DType::S8 => i8::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::S16 => i16::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::S32 => i32::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::S64 => i64::from_bytes(d).into_iter().map(|v| v as f64).collect(),
            DType::U8 => d.iter().map(|&v| v as f64).collect(),
            DType::U16 => u16::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::U32 => u32::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::U64 => u64::from_bytes(d).into_iter().map(|v| v as f64).collect(),
            DType::F16 => f16::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::Bf16 => bf16::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::F32 => f32::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::F64 => f64::from_bytes(d),
            DType::C64 => f32::from_bytes(d).into_iter().map(f64::from).collect(),
            DType::C128 => f64::from_bytes(d),
        }
    }

    /// The array's element type and dimensions.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype, &self.dims)
    }

    /// The box `region` (one range per dimension) of the array, as a new array.
    pub fn slice(&self, region: &[Range<i64>]) -> Result<HostArray> {
        self.host_view().slice(region)
    }

    /// The array at the top-left corner of a zero array of the larger shape `dims` (a shard
    /// padded as XLA pads the last tiles).
    pub fn padded(&self, dims: &[i64]) -> Result<HostArray> {
        if dims.len() != self.dims.len() || dims.iter().zip(&self.dims).any(|(&d, &n)| d < n) {
            return Err(Error::Argument(format!("cannot pad {} to {dims:?}", self.type_string())));
        }
        let elem = self.dtype.size_bytes();
        let mut out = vec![0u8; element_count(dims)? * elem];
        let zero = vec![0i64; dims.len()];
        if dims.is_empty() {
            out.copy_from_slice(&self.data);
        } else {
            sharding::copy_box(&self.data, &self.dims, &zero, &mut out, dims, &zero, &self.dims, elem);
        }
        HostArray::from_bytes(self.dtype, dims, out)
    }

    /// `f32[4,2]`
    pub fn type_string(&self) -> String {
        self.ty().to_string()
    }
}

impl std::fmt::Debug for HostArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values = self.to_f64_vec();
        let shown: Vec<String> = values.iter().take(8).map(|v| format!("{v}")).collect();
        let more = if values.len() > 8 { ", ..." } else { "" };
        write!(f, "{} [{}{more}]", self.type_string(), shown.join(", "))
    }
}

pub(crate) fn element_count(dims: &[i64]) -> Result<usize> {
    if dims.iter().any(|&d| d < 0) {
        return Err(Error::Argument(format!("negative dimension in {dims:?}")));
    }
    Ok(dims.iter().product::<i64>() as usize)
}
