//! xla.OpSharding (xla_data.proto), the form in which PJRT reports parameter and output
//! shardings of a compiled executable. Only the fields needed to place data are decoded.
use crate::{Error, Result};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct OpShardingProto {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(int64, repeated, tag = "3")]
    tile_assignment_dimensions: Vec<i64>,
    #[prost(int64, repeated, tag = "4")]
    tile_assignment_devices: Vec<i64>,
    #[prost(message, repeated, tag = "5")]
    tuple_shardings: Vec<OpShardingProto>,
    #[prost(bool, tag = "6")]
    replicate_on_last_tile_dim: bool,
    #[prost(int32, repeated, tag = "8")]
    last_tile_dims: Vec<i32>,
    #[prost(int64, repeated, tag = "9")]
    iota_reshape_dims: Vec<i64>,
    #[prost(int32, repeated, tag = "10")]
    iota_transpose_perm: Vec<i32>,
}

const REPLICATED: i32 = 0;
const MAXIMAL: i32 = 1;
const OTHER: i32 = 3;

/// Where the pieces of one array live.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpSharding {
    /// Every device holds the whole array.
    Replicated,
    /// One device holds the whole array.
    Maximal {
        /// The id of the device that holds the array.
        device: i64,
    },
    /// The array is cut into `tile_dims[..rank]` tiles; `devices` lists, in row-major tile
    /// order, the device of each tile. With `replicated_copies > 1` the last tile dimension
    /// counts copies of the same tile.
    Tiled {
        /// The number of tiles along each array dimension, followed by the number of copies
        /// when `replicated_copies > 1`.
        tile_dims: Vec<i64>,
        /// The device id of each tile, in row-major order over `tile_dims`.
        devices: Vec<i64>,
        /// How many devices hold each tile (1: no replication); equals the last entry of
        /// `tile_dims` when above 1.
        replicated_copies: i64,
    },
}

impl OpSharding {
    /// Decodes a serialized xla.OpSharding.
    pub fn decode(bytes: &[u8]) -> Result<OpSharding> {
        let p = OpShardingProto::decode(bytes).map_err(|e| Error::Decode(e.to_string()))?;
        match p.r#type {
            REPLICATED => Ok(OpSharding::Replicated),
            MAXIMAL => Ok(OpSharding::Maximal { device: first_device(&p)? }),
            OTHER => {
                if !p.last_tile_dims.is_empty() {
                    return Err(Error::Unsupported("subgroup (manual/unreduced) tile dimensions".into()));
                }
                let dims = p.tile_assignment_dimensions.clone();
                let devices = device_list(&p)?;
                let copies = if p.replicate_on_last_tile_dim { *dims.last().unwrap_or(&1) } else { 1 };
                Ok(OpSharding::Tiled { tile_dims: dims, devices, replicated_copies: copies })
            }
            t => Err(Error::Unsupported(format!("OpSharding type {t} (tuple/manual/unknown)"))),
        }
    }

    /// A short text form in XLA's HLO notation, for messages.
    pub fn describe(&self) -> String {
        match self {
            OpSharding::Replicated => "{replicated}".into(),
            OpSharding::Maximal { device } => format!("{{maximal device={device}}}"),
            OpSharding::Tiled { tile_dims, devices, replicated_copies } => {
                let dims: Vec<String> = tile_dims.iter().map(|d| d.to_string()).collect();
                let devs: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
                let last = if *replicated_copies > 1 { " last_tile_dim_replicate" } else { "" };
                format!("{{devices=[{}]{}{last}}}", dims.join(","), devs.join(","))
            }
        }
    }
}

fn first_device(p: &OpShardingProto) -> Result<i64> {
    device_list(p)?.first().copied().ok_or_else(|| Error::Decode("maximal sharding without a device".into()))
}

/// The device of each tile in row-major order: listed explicitly, or as an iota reshaped to
/// `iota_reshape_dims`, transposed by `iota_transpose_perm`, and flattened.
fn device_list(p: &OpShardingProto) -> Result<Vec<i64>> {
    if !p.tile_assignment_devices.is_empty() {
        return Ok(p.tile_assignment_devices.clone());
    }
    let shape = if p.iota_reshape_dims.is_empty() {
        vec![p.tile_assignment_dimensions.iter().product::<i64>()]
    } else {
        p.iota_reshape_dims.clone()
    };
    let perm: Vec<usize> = if p.iota_transpose_perm.is_empty() {
        (0..shape.len()).collect()
    } else {
        p.iota_transpose_perm.iter().map(|&x| x as usize).collect()
    };
    if perm.len() != shape.len() || perm.iter().any(|&x| x >= shape.len()) {
        return Err(Error::Decode(format!("iota transpose {perm:?} does not fit dims {shape:?}")));
    }
    // Strides of the un-transposed iota, then walk the transposed shape row-major.
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let tshape: Vec<i64> = perm.iter().map(|&p| shape[p]).collect();
    let tstrides: Vec<i64> = perm.iter().map(|&p| strides[p]).collect();
    let total: i64 = tshape.iter().product();
    let mut out = Vec::with_capacity(total as usize);
    let mut idx = vec![0i64; tshape.len()];
    for _ in 0..total {
        out.push(idx.iter().zip(&tstrides).map(|(i, s)| i * s).sum());
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < tshape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(p: OpShardingProto) -> Vec<u8> {
        p.encode_to_vec()
    }

    #[test]
    fn explicit_and_iota_device_lists() {
        let explicit = encode(OpShardingProto {
            r#type: OTHER,
            tile_assignment_dimensions: vec![2, 1],
            tile_assignment_devices: vec![1, 0],
            ..Default::default()
        });
        assert_eq!(
            OpSharding::decode(&explicit).unwrap(),
            OpSharding::Tiled { tile_dims: vec![2, 1], devices: vec![1, 0], replicated_copies: 1 }
        );
        // devices=[2,2]<=[2,2]T(1,0) is the device order 0,2,1,3.
        let iota = encode(OpShardingProto {
            r#type: OTHER,
            tile_assignment_dimensions: vec![2, 2],
            iota_reshape_dims: vec![2, 2],
            iota_transpose_perm: vec![1, 0],
            ..Default::default()
        });
        let OpSharding::Tiled { devices, .. } = OpSharding::decode(&iota).unwrap() else { panic!() };
        assert_eq!(devices, vec![0, 2, 1, 3]);
    }

    #[test]
    fn replicated_and_last_dim_replication() {
        assert_eq!(OpSharding::decode(&[]).unwrap(), OpSharding::Replicated);
        let p = encode(OpShardingProto {
            r#type: OTHER,
            tile_assignment_dimensions: vec![2, 1, 4],
            replicate_on_last_tile_dim: true,
            ..Default::default()
        });
        let s = OpSharding::decode(&p).unwrap();
        assert_eq!(s, OpSharding::Tiled { tile_dims: vec![2, 1, 4], devices: (0..8).collect(), replicated_copies: 4 });
        assert_eq!(s.describe(), "{devices=[2,1,4]0,1,2,3,4,5,6,7 last_tile_dim_replicate}");
        assert!(OpSharding::decode(&[0xff, 0xff]).is_err());
    }
}
