//! .npy files <-> host arrays (via npyz). Inputs may be any numeric or bool dtype, C or
//! Fortran order; outputs are written atomically. bf16 has no .npy dtype, so bf16 outputs
//! are written as f32 (exactly: every bf16 is an f32).
use crate::{Error, Result};
use half::{bf16, f16};
use npyz::{Order, TypeChar};
use runtime::{DType, Element, HostArray};
use std::io::Read;
use std::path::Path;

/// Any failure while decoding, as a message (the caller adds the file name).
type Inner<T> = std::result::Result<T, String>;

fn read_typed<T, R>(npy: npyz::NpyFile<R>, dims: &[i64]) -> Inner<HostArray>
where
    T: Element + npyz::Deserialize,
    R: Read,
{
    let fortran = npy.order() == Order::Fortran;
    let values: Vec<T> = npy.into_vec().map_err(|e| e.to_string())?;
    if !fortran {
        return HostArray::from_vec(dims, values).map_err(|e| e.to_string());
    }
    // Fortran order: the data is the row-major array of the reversed shape, transposed.
    let rev: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
    let a = ndarray::ArrayD::from_shape_vec(rev, values).map_err(|e| e.to_string())?;
    let t = a.reversed_axes();
    Ok(HostArray::from_ndarray(&t.as_standard_layout().to_owned()))
}

/// Reads a .npy file; errors name the file.
pub fn read(path: &Path) -> Result<HostArray> {
    let inner = || -> Inner<HostArray> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        check_npy_shape(&bytes)?;
        let mut data: &[u8] = &bytes;
        let header = npyz::NpyHeader::from_reader(&mut data).map_err(|e| format!("not a .npy file: {e}"))?;
        // The data must be exactly what the header describes (bounded before allocating).
        if let npyz::DType::Plain(ts) = header.dtype() {
            let need = header.shape().iter().try_fold(ts.size_field(), |acc, &d| acc.checked_mul(d));
            if need != Some(data.len() as u64) {
                let claims = need.map_or_else(|| "more bytes than fit in 64 bits".to_string(), |b| format!("{b} bytes"));
                let shape = header.shape();
                return Err(format!(
                    "the header's shape {shape:?} of {ts} needs {claims} of data, but the file holds {} (truncated?)",
                    data.len()
                ));
            }
        }
        let npy = npyz::NpyFile::with_header(header, data);
        let dims: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
        let npyz::DType::Plain(ts) = npy.dtype() else {
            return Err(format!("structured dtypes are not supported (got {})", npy.dtype().descr()));
        };
        match (ts.type_char(), ts.size_field()) {
            (TypeChar::Float, 2) => read_typed::<f16, _>(npy, &dims),
            (TypeChar::Float, 4) => read_typed::<f32, _>(npy, &dims),
            (TypeChar::Float, 8) => read_typed::<f64, _>(npy, &dims),
            (TypeChar::Int, 1) => read_typed::<i8, _>(npy, &dims),
            (TypeChar::Int, 2) => read_typed::<i16, _>(npy, &dims),
            (TypeChar::Int, 4) => read_typed::<i32, _>(npy, &dims),
            (TypeChar::Int, 8) => read_typed::<i64, _>(npy, &dims),
            (TypeChar::Uint, 1) => read_typed::<u8, _>(npy, &dims),
            (TypeChar::Uint, 2) => read_typed::<u16, _>(npy, &dims),
            (TypeChar::Uint, 4) => read_typed::<u32, _>(npy, &dims),
            (TypeChar::Uint, 8) => read_typed::<u64, _>(npy, &dims),
            (TypeChar::Bool, 1) => read_typed::<bool, _>(npy, &dims),
            (TypeChar::Complex, 8) => read_typed::<num_complex::Complex<f32>, _>(npy, &dims),
            (TypeChar::Complex, 16) => read_typed::<num_complex::Complex<f64>, _>(npy, &dims),
            _ => Err(format!("dtype {ts} is not supported")),
        }
    };
    inner().map_err(|message| Error::Read { path: path.display().to_string(), message })
}

fn encode<T: Element + npyz::Serialize + npyz::AutoSerialize>(a: &HostArray) -> Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = a.dims().iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::new();
    let io = |e: std::io::Error| Error::Io(format!("cannot encode .npy: {e}"));
    let mut w = npyz::WriteOptions::<T>::new().default_dtype().shape(&shape).writer(&mut bytes).begin_nd().map_err(io)?;
    w.extend(a.to_vec::<T>()?).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(bytes)
}

/// The .npy encoding of `a` (bf16 as f32).
pub fn encode_array(a: &HostArray) -> Result<Vec<u8>> {
    match a.dtype() {
        DType::F16 => encode::<f16>(a),
        DType::F32 => encode::<f32>(a),
        DType::F64 => encode::<f64>(a),
        DType::S8 => encode::<i8>(a),
        DType::S16 => encode::<i16>(a),
        DType::S32 => encode::<i32>(a),
        DType::S64 => encode::<i64>(a),
        DType::U8 => encode::<u8>(a),
        DType::U16 => encode::<u16>(a),
        DType::U32 => encode::<u32>(a),
        DType::U64 => encode::<u64>(a),
        DType::Pred => encode::<bool>(a),
        DType::C64 => encode::<num_complex::Complex<f32>>(a),
        DType::C128 => encode::<num_complex::Complex<f64>>(a),
        DType::Bf16 => {
            let f: Vec<f32> = a.to_vec::<bf16>()?.into_iter().map(f32::from).collect();
            encode::<f32>(&HostArray::from_vec(a.dims(), f)?)
        }
    }
}

/// Refuses a .npy header whose shape's element count overflows 64 bits (npyz multiplies the
/// dimensions unchecked). Anything it cannot parse is left for npyz to report.
pub(crate) fn check_npy_shape(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return Ok(());
    }
    let (start, len) = match bytes[6] {
        1 => (10usize, usize::from(u16::from_le_bytes([bytes[8], bytes[9]]))),
        _ if bytes.len() >= 12 => (12, u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize),
        _ => return Ok(()),
    };
    let Some(header) = bytes.get(start..start.saturating_add(len)) else { return Ok(()) };
    let header = String::from_utf8_lossy(header);
    let Some(key) = header.find("shape") else { return Ok(()) };
    let rest = &header[key..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else { return Ok(()) };
    if close < open {
        return Ok(());
    }
    let mut count: u64 = 1;
    for dim in rest[open + 1..close].split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let Ok(d) = dim.trim_end_matches('L').parse::<u64>() else { return Ok(()) };
        count = count
            .checked_mul(d)
            .ok_or_else(|| format!("the header's shape {} has more elements than fit in 64 bits", &rest[open..=close]))?;
    }
    Ok(())
}

/// Token ids from an int32/int64 .npy [B, T] with T >= `min_len`, each checked against the
/// vocabulary `[0, vocab)` (an error names the row and column), as s32.
pub fn read_token_ids(path: &Path, vocab: i64, min_len: i64) -> Result<HostArray> {
    let bad = |message: String| Error::Data { path: path.display().to_string(), message };
    let t = read(path)?;
    let ids: Vec<i64> = match t.dtype() {
        DType::S32 => t.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
        DType::S64 => t.to_vec::<i64>()?,
        other => return Err(bad(format!("token ids must be int32 or int64, got {other}"))),
    };
    let dims = t.dims();
    if dims.len() != 2 {
        return Err(bad(format!("tokens must be [batch, seq], got shape {dims:?}")));
    }
    if ids.is_empty() {
        return Err(bad(format!("the token file is empty (shape {dims:?})")));
    }
    if dims[1] < min_len {
        let why = if min_len >= 2 { "for a next-token loss" } else { "to continue" };
        return Err(bad(format!("each row needs at least {min_len} tokens {why}, got {}", dims[1])));
    }
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id < 0 || id >= vocab) {
        let (row, col) = (i as i64 / dims[1], i as i64 % dims[1]);
        return Err(bad(format!("token [{row}, {col}] = {id} is outside the vocabulary [0, {vocab})")));
    }
    Ok(HostArray::from_vec(dims, ids.into_iter().map(|id| id as i32).collect())?)
}

/// A 0/1 padding mask (any numeric dtype; nonzero = a real token) of the tokens' shape
/// `dims`, as s32. It must show at least one token and leave at least one target (a real
/// token at position >= 1 of some row), or the loss is undefined.
pub fn read_mask(path: &Path, dims: &[i64]) -> Result<HostArray> {
    let bad = |message: String| Error::Data { path: path.display().to_string(), message };
    let m = read(path)?;
    if m.dims() != dims {
        return Err(bad(format!("the mask has shape {:?} but the tokens have {dims:?}", m.dims())));
    }
    let values = m.to_f64_vec();
    if values.iter().all(|&v| v == 0.0) {
        return Err(bad("the mask hides every token".into()));
    }
    let t = dims.get(1).copied().unwrap_or(1).max(1) as usize;
    if values.chunks(t).all(|row| row[1..].iter().all(|&v| v == 0.0)) {
        return Err(bad(format!("the mask leaves no target token (positions 1..{t} of every row are padding), so the loss is undefined")));
    }
    Ok(HostArray::from_vec(dims, values.into_iter().map(|v| (v != 0.0) as i32).collect())?)
}
