//! Element types and tensor types: the one vocabulary that `graph` (traced values),
//! `runtime` (device buffers, program signatures, host arrays) and `gemma` (checkpoint
//! tensors) share. Pure data; PJRT's numbering lives in `xla-sys`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
use std::fmt;

/// An element type. Spelled as HLO spells it (`f32`, `s32`, `pred`) in messages, and as
/// MLIR spells it (`f32`, `i32`, `i1`) in StableHLO text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum DType {
    /// Boolean (`pred` in HLO, `i1` in MLIR); one byte per element in dense buffers.
    Pred,
    /// Signed 8-bit integer.
    S8,
    /// Signed 16-bit integer.
    S16,
    /// Signed 32-bit integer.
    S32,
    /// Signed 64-bit integer.
    S64,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE 754 half-precision float (16 bits).
    F16,
    /// bfloat16: 16 bits, with the 8-bit exponent of `f32` and 7 mantissa bits.
    Bf16,
    /// IEEE 754 single-precision float (32 bits); the default.
    #[default]
    F32,
    /// IEEE 754 double-precision float (64 bits).
    F64,
    /// Complex number of two f32 (real, then imaginary part): 64 bits. Programs may take and
    /// return it (JAX's linear algebra does); the tracer does not make it.
    C64,
    /// Complex number of two f64: 128 bits.
    C128,
}

impl DType {
    /// Every element type, in a fixed order.
    pub const ALL: [DType; 15] = [
        DType::Pred,
        DType::S8,
        DType::S16,
        DType::S32,
        DType::S64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::F16,
        DType::Bf16,
        DType::F32,
        DType::F64,
        DType::C64,
        DType::C128,
    ];

    /// The HLO / jaxpr spelling (`f32`, `s32`, `u32`, `pred`).
    pub fn name(self) -> &'static str {
        match self {
            DType::Pred => "pred",
            DType::S8 => "s8",
            DType::S16 => "s16",
            DType::S32 => "s32",
            DType::S64 => "s64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::C64 => "c64",
            DType::C128 => "c128",
        }
    }

    /// The MLIR spelling (`f32`, `bf16`, `i32`, `ui32`, `i1`).
    pub fn mlir(self) -> &'static str {
        match self {
            DType::Pred => "i1",
            DType::S8 => "i8",
            DType::S16 => "i16",
            DType::S32 => "i32",
            DType::S64 => "i64",
            DType::U8 => "ui8",
            DType::U16 => "ui16",
            DType::U32 => "ui32",
            DType::U64 => "ui64",
            DType::C64 => "complex<f32>",
            DType::C128 => "complex<f64>",
            other => other.name(),
        }
    }

    /// Accepts both the HLO (`s32`, `pred`) and the MLIR (`i32`, `i1`, `ui8`) spellings.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name || d.mlir() == name)
    }

    /// The safetensors spelling (`F32`, `BF16`, `I32`, `BOOL`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::Pred => "BOOL",
            DType::S8 => "I8",
            DType::S16 => "I16",
            DType::S32 => "I32",
            DType::S64 => "I64",
            DType::U8 => "U8",
            DType::U16 => "U16",
            DType::U32 => "U32",
            DType::U64 => "U64",
            DType::F16 => "F16",
            DType::Bf16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::C64 => "C64",
            DType::C128 => "C128",
        }
    }

    /// Whether this is a floating-point type (`f16`, `bf16`, `f32`, `f64`).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::Bf16 | DType::F32 | DType::F64)
    }

    /// Whether this is a complex type (`c64`, `c128`).
    pub fn is_complex(self) -> bool {
        matches!(self, DType::C64 | DType::C128)
    }

    /// Signed or unsigned integers (not pred).
    pub fn is_int(self) -> bool {
        self.is_signed_int() || self.is_unsigned()
    }

    /// Whether this is a signed integer type (`s8` to `s64`).
    pub fn is_signed_int(self) -> bool {
        matches!(self, DType::S8 | DType::S16 | DType::S32 | DType::S64)
    }

    /// Whether this is an unsigned integer type (`u8` to `u64`); pred is not.
    pub fn is_unsigned(self) -> bool {
        matches!(self, DType::U8 | DType::U16 | DType::U32 | DType::U64)
    }

    /// Bits per element (pred counts as 1).
    pub fn bits(self) -> u32 {
        match self {
            DType::Pred => 1,
            DType::S8 | DType::U8 => 8,
            DType::S16 | DType::U16 | DType::F16 | DType::Bf16 => 16,
            DType::S32 | DType::U32 | DType::F32 => 32,
            DType::S64 | DType::U64 | DType::F64 | DType::C64 => 64,
            DType::C128 => 128,
        }
    }

    /// Bytes per element in a dense host or device buffer (pred takes one byte).
    pub fn size_bytes(self) -> usize {
        (self.bits() as usize).div_ceil(8)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An element type and a static shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TensorType {
    /// The element type.
    pub dtype: DType,
    /// The size of each dimension, outermost first; empty for a scalar.
    pub dims: Vec<i64>,
}

impl TensorType {
    /// A tensor type of `dtype` with dimensions `dims`.
    pub fn new(dtype: DType, dims: &[i64]) -> TensorType {
        TensorType { dtype, dims: dims.to_vec() }
    }

    /// A rank-0 (scalar) tensor type of `dtype`.
    pub fn scalar(dtype: DType) -> TensorType {
        TensorType { dtype, dims: Vec::new() }
    }

    /// The number of dimensions (0 for a scalar).
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The number of elements (1 for a scalar). Dimensions are never negative in a type
    /// built by this project; a negative one counts as 0.
    pub fn num_elements(&self) -> i64 {
        self.dims.iter().map(|&d| d.max(0)).product()
    }

    /// Bytes of the dense array, or None when that overflows.
    pub fn size_bytes(&self) -> Option<usize> {
        self.dims.iter().try_fold(self.dtype.size_bytes(), |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
    }

    /// A tensor type with the same dimensions as this one and element type `dtype`.
    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType { dtype, dims: self.dims.clone() }
    }

    /// `tensor<4x2xf32>`
    pub fn mlir(&self) -> String {
        let mut s = String::with_capacity(12 + 6 * self.dims.len());
        self.write_mlir(&mut s);
        s
    }

    /// Appends [`TensorType::mlir`]'s text to `out` (no allocation of its own: lowering
    /// writes megabytes of these).
    pub fn write_mlir(&self, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        out.push_str("tensor<");
        for &d in &self.dims {
            out.push_str(digits.format(d));
            out.push('x');
        }
        out.push_str(self.dtype.mlir());
        out.push('>');
    }

    /// Parses `tensor<4x2xf32>` (static shapes only).
    pub fn parse_mlir(text: &str) -> Option<TensorType> {
        let inner = text.trim().strip_prefix("tensor<")?.strip_suffix('>')?;
        // `complex<f32>` holds an `x` of its own: the element type is what follows the dims.
        let (shape, element) = match inner.find("complex<") {
            Some(0) => ("", inner),
            Some(at) => (inner[..at].strip_suffix('x')?, &inner[at..]),
            None => inner.rsplit_once('x').unwrap_or(("", inner)),
        };
        let dtype = DType::from_name(element)?;
        let parts: Vec<&str> = if shape.is_empty() { Vec::new() } else { shape.split('x').collect() };
        let dims = parts.iter().map(|p| p.parse::<i64>().ok().filter(|&d| d >= 0)).collect::<Option<Vec<_>>>()?;
        Some(TensorType { dtype, dims })
    }
}

impl fmt::Display for TensorType {
    /// `f32[4,2]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
            assert_eq!(DType::from_name(d.mlir()), Some(d));
        }
        assert_eq!(DType::from_name("i1"), Some(DType::Pred));
        assert_eq!(DType::from_name("ui8"), Some(DType::U8));
        assert_eq!(DType::from_name("f8"), None);
        assert_eq!(DType::Pred.size_bytes(), 1);
        assert_eq!(DType::Bf16.size_bytes(), 2);
        assert_eq!(DType::C64.size_bytes(), 8);
        assert_eq!(DType::C128.size_bytes(), 16);
        assert_eq!(TensorType::parse_mlir("tensor<3x4xcomplex<f32>>"), Some(TensorType::new(DType::C64, &[3, 4])));
        assert_eq!(TensorType::parse_mlir("tensor<complex<f64>>"), Some(TensorType::scalar(DType::C128)));
        assert_eq!(TensorType::new(DType::C64, &[2]).mlir(), "tensor<2xcomplex<f32>>");
        assert_eq!(TensorType::parse_mlir("tensor<2x3xf32>"), Some(TensorType::new(DType::F32, &[2, 3])));
        assert_eq!(TensorType::parse_mlir("tensor<f32>"), Some(TensorType::scalar(DType::F32)));
    }

    #[test]
    fn tensor_types_print_and_parse() {
        let t = TensorType::new(DType::S32, &[4, 2]);
        assert_eq!(t.to_string(), "s32[4,2]");
        assert_eq!(t.mlir(), "tensor<4x2xi32>");
        assert_eq!(TensorType::parse_mlir("tensor<4x2xi32>"), Some(t));
        assert_eq!(TensorType::parse_mlir("tensor<f32>"), Some(TensorType::scalar(DType::F32)));
        assert_eq!(TensorType::parse_mlir("tensor<?x2xf32>"), None);
        assert_eq!(TensorType::new(DType::F32, &[i64::MAX, 4]).size_bytes(), None);
    }
}
