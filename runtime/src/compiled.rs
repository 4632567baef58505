//! The signature of a compiled program, read back from the executable: PJRT's
//! `PJRT_Executable_OptimizedProgram` gives the optimized module as a serialized
//! `xla.HloModuleProtoWithConfig` (or a bare `xla.HloModuleProto`), and the module's
//! `host_program_shape` holds the entry computation's parameter and result shapes. Only
//! those fields are decoded (numbers from xla/xla_data.proto and xla/service/hlo.proto):
//!
//! - HloModuleProtoWithConfig: `hlo_module = 1`
//! - HloModuleProto: `host_program_shape = 4` (a ProgramShapeProto)
//! - ProgramShapeProto: `parameters = 1`, `result = 2` (ShapeProtos)
//! - ShapeProto: `element_type = 2` (PrimitiveType), `dimensions = 3`, `tuple_shapes = 4`
//!
//! For an SPMD program the optimized module is the partitioned one, so these are the shapes
//! of one device's shard, not of the whole arrays.
use crate::error::{Error, Result};
use dtype::{DType, TensorType};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct ModuleWithConfigProto {
    #[prost(message, optional, tag = "1")]
    hlo_module: Option<ModuleProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ModuleProto {
    #[prost(message, optional, tag = "4")]
    host_program_shape: Option<ProgramShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ProgramShapeProto {
    #[prost(message, repeated, tag = "1")]
    parameters: Vec<ShapeProto>,
    #[prost(message, optional, tag = "2")]
    result: Option<ShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ShapeProto {
    #[prost(int32, tag = "2")]
    element_type: i32,
    #[prost(int64, repeated, tag = "3")]
    dimensions: Vec<i64>,
    #[prost(message, repeated, tag = "4")]
    tuple_shapes: Vec<ShapeProto>,
}

/// xla.PrimitiveType TUPLE.
const TUPLE: i32 = 13;

/// The type of one parameter or result of a compiled program: an XLA element type (which
/// may be one gemma-xla has no `DType` for) and dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledType {
    /// The xla.PrimitiveType number.
    pub element_type: i32,
    /// The dimensions, outermost first (one device's shard for SPMD programs; empty for a tuple).
    pub dims: Vec<i64>,
}

impl CompiledType {
    /// The element type as a `DType`, when gemma-xla supports it.
    pub fn dtype(&self) -> Option<DType> {
        Some(match self.element_type {
            1 => DType::Pred,
            2 => DType::S8,
            3 => DType::S16,
            4 => DType::S32,
            5 => DType::S64,
            6 => DType::U8,
            7 => DType::U16,
            8 => DType::U32,
            9 => DType::U64,
            10 => DType::F16,
            11 => DType::F32,
            12 => DType::F64,
            15 => DType::C64,
            16 => DType::Bf16,
            18 => DType::C128,
            _ => return None,
        })
    }

    /// The type as a [`TensorType`], when the element type has a [`DType`].
    pub fn tensor_type(&self) -> Option<TensorType> {
        Some(TensorType { dtype: self.dtype()?, dims: self.dims.clone() })
    }

    /// The element type's name as XLA's HLO text writes it (`f32`, `c64`, `tuple`, ...).
    pub fn element_name(&self) -> String {
        if let Some(d) = self.dtype() {
            return d.to_string();
        }
        let name = match self.element_type {
            13 => "tuple",
            14 => "opaque",
            15 => "c64",
            17 => "token",
            18 => "c128",
            19 => "f8e5m2",
            20 => "f8e4m3fn",
            21 => "s4",
            22 => "u4",
            23 => "f8e4m3b11fnuz",
            24 => "f8e5m2fnuz",
            25 => "f8e4m3fnuz",
            26 => "s2",
            27 => "u2",
            28 => "f8e4m3",
            29 => "f8e3m4",
            30 => "s1",
            31 => "u1",
            32 => "f4e2m1fn",
            33 => "f8e8m0fnu",
            t => return format!("element type {t}"),
        };
        name.to_string()
    }
}

impl std::fmt::Display for CompiledType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.element_type == TUPLE {
            return write!(f, "a tuple");
        }
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.element_name(), dims.join(","))
    }
}

/// Parameter and result types of a compiled program (per device for SPMD programs). The
/// results are the elements of the entry computation's result tuple, as PJRT returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledSignature {
    /// One type per parameter of the entry computation, in order.
    pub params: Vec<CompiledType>,
    /// One type per element of the entry computation's result tuple (a single non-tuple result
    /// gives one).
    pub results: Vec<CompiledType>,
}

fn flat(s: &ShapeProto) -> CompiledType {
    CompiledType { element_type: s.element_type, dims: if s.element_type == TUPLE { Vec::new() } else { s.dimensions.clone() } }
}

impl CompiledSignature {
    /// Decodes what `PJRT_Executable_OptimizedProgram` returned in `format`.
    pub fn decode(format: &str, bytes: &[u8]) -> Result<CompiledSignature> {
        let bad = |e: String| Error::Program(format!("cannot read the compiled program's signature: {e}"));
        let module = match format {
            "hlo_with_config" => ModuleWithConfigProto::decode(bytes).map_err(|e| bad(e.to_string()))?.hlo_module,
            "hlo" => Some(ModuleProto::decode(bytes).map_err(|e| bad(e.to_string()))?),
            other => return Err(bad(format!("the plugin returned it in the unknown format {other:?}"))),
        };
        let shape = module.and_then(|m| m.host_program_shape).ok_or_else(|| bad("it has no entry program shape".into()))?;
        let result = shape.result.ok_or_else(|| bad("it has no result shape".into()))?;
        let results = if result.element_type == TUPLE { result.tuple_shapes.iter().map(flat).collect() } else { vec![flat(&result)] };
        Ok(CompiledSignature { params: shape.parameters.iter().map(flat).collect(), results })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(t: i32, dims: &[i64]) -> ShapeProto {
        ShapeProto { element_type: t, dimensions: dims.to_vec(), tuple_shapes: Vec::new() }
    }

    #[test]
    fn decodes_parameters_and_a_result_tuple() {
        let program = ProgramShapeProto {
            parameters: vec![shape(11, &[2, 3]), shape(4, &[])],
            result: Some(ShapeProto {
                element_type: TUPLE,
                dimensions: vec![],
                tuple_shapes: vec![shape(16, &[2]), shape(15, &[4]), shape(20, &[1])],
            }),
        };
        let module = ModuleWithConfigProto { hlo_module: Some(ModuleProto { host_program_shape: Some(program.clone()) }) };
        let sig = CompiledSignature::decode("hlo_with_config", &module.encode_to_vec()).unwrap();
        assert_eq!(sig.params[0].tensor_type(), Some(TensorType::new(DType::F32, &[2, 3])));
        assert_eq!(sig.params[1].to_string(), "s32[]");
        assert_eq!(sig.results[0].dtype(), Some(DType::Bf16));
        assert_eq!(sig.results[1].to_string(), "c64[4]");
        assert_eq!(sig.results[1].dtype(), Some(DType::C64));
        assert_eq!(sig.results[2].to_string(), "f8e4m3fn[1]");
        assert_eq!(sig.results[2].dtype(), None);
        let bare = ModuleProto { host_program_shape: Some(ProgramShapeProto { parameters: vec![], result: Some(shape(1, &[3])) }) };
        let sig = CompiledSignature::decode("hlo", &bare.encode_to_vec()).unwrap();
        assert_eq!(sig.results, vec![CompiledType { element_type: 1, dims: vec![3] }]);
        assert!(CompiledSignature::decode("mlir", b"").is_err());
        assert!(CompiledSignature::decode("hlo", b"\xff\xff").is_err());
        assert!(CompiledSignature::decode("hlo", b"").is_err());
    }
}
