//! Element types and tensor types of traced values.
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    #[default]
    F32,
    Bf16,
    F16,
    F64,
    S32,
    S64,
    U32,
    U64,
    Pred,
}

impl DType {
    /// The MLIR spelling (`f32`, `bf16`, `i32`, `ui32`, `i1`).
    pub fn mlir(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::F64 => "f64",
            DType::S32 => "i32",
            DType::S64 => "i64",
            DType::U32 => "ui32",
            DType::U64 => "ui64",
            DType::Pred => "i1",
        }
    }

    /// The HLO / jaxpr spelling (`f32`, `s32`, `u32`, `pred`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::F64 => "f64",
            DType::S32 => "s32",
            DType::S64 => "s64",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::Pred => "pred",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::Bf16 | DType::F16 | DType::F64)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::S32 | DType::S64 | DType::U32 | DType::U64)
    }

    pub fn is_unsigned(self) -> bool {
        matches!(self, DType::U32 | DType::U64)
    }

    pub fn bits(self) -> u32 {
        match self {
            DType::Pred => 1,
            DType::Bf16 | DType::F16 => 16,
            DType::F32 | DType::S32 | DType::U32 => 32,
            DType::F64 | DType::S64 | DType::U64 => 64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a traced value: element type and static shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TensorType {
    pub dtype: DType,
    pub dims: Vec<i64>,
}

impl TensorType {
    pub fn new(dtype: DType, dims: &[i64]) -> TensorType {
        TensorType { dtype, dims: dims.to_vec() }
    }

    pub fn scalar(dtype: DType) -> TensorType {
        TensorType { dtype, dims: Vec::new() }
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn num_elements(&self) -> i64 {
        self.dims.iter().product()
    }

    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType { dtype, dims: self.dims.clone() }
    }

    /// `tensor<4x2xf32>`
    pub fn mlir(&self) -> String {
        let mut s = String::from("tensor<");
        for d in &self.dims {
            s += &format!("{d}x");
        }
        s + self.dtype.mlir() + ">"
    }
}

impl fmt::Display for TensorType {
    /// `f32[4,2]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(","))
    }
}
