//! Counter-based random numbers: `rng_bit_generator` (Threefry) turns a u64[2] key into
//! u32 bits; `uniform` and `normal` build floats from them with ordinary ops.
use crate::lower::Emitter;
use crate::prim::Prim;
use crate::trace::Tensor;
use crate::types::{DType, TensorType};

pub(crate) fn infer(p: &Prim, x: &[&TensorType]) -> Result<TensorType, String> {
    let Prim::RngBitGenerator { dims } = p else { unreachable!("internal") };
    if x.len() != 1 || x[0].dtype != DType::U64 || x[0].dims != [2] {
        return Err("needs a u64[2] key".into());
    }
    Ok(TensorType::new(DType::U32, dims))
}

pub(crate) fn lower(_p: &Prim, e: &mut Emitter, a: &[(&str, &TensorType)], out: &TensorType) -> String {
    let results = [a[0].1.clone(), out.clone()];
    let names =
        e.multi_op("stablehlo.rng_bit_generator", &[(a[0].0, a[0].1)], "rng_algorithm = #stablehlo<rng_algorithm THREE_FRY>", &results);
    names[1].clone()
}

pub(crate) fn vjp(_p: &Prim, _x: &[Tensor], _y: &Tensor, _ct: &Tensor) -> Result<Vec<Option<Tensor>>, ()> {
    Err(())
}

impl Tensor {
    /// Random u32 bits of shape `dims` from this `u64[2]` key (Threefry).
    #[track_caller]
    pub fn random_bits(&self, dims: &[i64]) -> Tensor {
        Tensor::apply(Prim::RngBitGenerator { dims: dims.to_vec() }, &[self])
    }

    /// Uniform floats in [0, 1) of shape `dims` from this `u64[2]` key.
    #[track_caller]
    pub fn uniform(&self, dims: &[i64], dtype: DType) -> Tensor {
        // Put 23 random bits in the mantissa of a float in [1, 2), then subtract 1.
        let bits = self.random_bits(dims);
        let u32s = TensorType::scalar(DType::U32);
        let mantissa = bits.shift_right_logical(&self.tracer().constant_int(&u32s, vec![9]));
        let one_bits = self.tracer().constant_int(&u32s, vec![0x3f80_0000]);
        let f = mantissa.or(&one_bits).bitcast(DType::F32) - 1.0;
        f.convert(dtype)
    }

    /// Standard normal floats of shape `dims` from this `u64[2]` key (Box-Muller).
    #[track_caller]
    pub fn normal(&self, dims: &[i64], dtype: DType) -> Tensor {
        let mut two = vec![2];
        two.extend(dims);
        let u = self.uniform(&two, DType::F32);
        let u1 = u.slice_axis(0, 0, 1).reshape(dims).rsub(1.0); // in (0, 1]: log is finite
        let u2 = u.slice_axis(0, 1, 2).reshape(dims);
        let r = (u1.log() * -2.0).sqrt();
        (r * (u2 * (2.0 * std::f64::consts::PI)).cos()).convert(dtype)
    }
}
