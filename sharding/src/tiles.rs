//! Index math between a full row-major array and its per-device shards.
//!
//! XLA cuts dimension `d` of size `n` into `t` tiles of `ceil(n / t)` elements; the last
//! tiles may be partly or wholly padding. Device buffers always have the padded tile shape.
use crate::{Error, OpSharding, Result};
use std::ops::Range;

/// The placement of one array over `num_devices` devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiling {
    /// The shape of the full (unsharded) array.
    pub shape: Vec<i64>,
    /// The (padded) shape of every device's buffer.
    pub shard_shape: Vec<i64>,
    /// For each device, the part of the full array it holds (valid, unpadded region).
    pub regions: Vec<Vec<Range<i64>>>,
    /// For assembling: the devices whose regions together cover the array once.
    pub owners: Vec<usize>,
}

impl Tiling {
    /// The placement of an array of shape `shape` under `sharding` over `num_devices` devices.
    /// Fails with [`Error::Mismatch`] if the tile dimensions do not fit the rank, the tile count
    /// is not `num_devices`, or a device id is out of range.
    pub fn new(sharding: &OpSharding, shape: &[i64], num_devices: usize) -> Result<Tiling> {
        let full: Vec<Range<i64>> = shape.iter().map(|&n| 0..n).collect();
        let mismatch = |why: String| Error::Mismatch { sharding: sharding.describe(), shape: shape.to_vec(), why };
        match sharding {
            OpSharding::Replicated => {
                Ok(Tiling { shape: shape.to_vec(), shard_shape: shape.to_vec(), regions: vec![full; num_devices], owners: vec![0] })
            }
            OpSharding::Maximal { device } => {
                let d = usize::try_from(*device)
                    .ok()
                    .filter(|&d| d < num_devices)
                    .ok_or_else(|| mismatch(format!("device {device} of {num_devices}")))?;
                Ok(Tiling { shape: shape.to_vec(), shard_shape: shape.to_vec(), regions: vec![full; num_devices], owners: vec![d] })
            }
            OpSharding::Tiled { tile_dims, devices, replicated_copies } => {
                let copies = *replicated_copies;
                let rank = shape.len();
                let expect = rank + usize::from(copies > 1);
                if tile_dims.len() != expect {
                    return Err(mismatch(format!("{} tile dimensions for rank {rank}", tile_dims.len())));
                }
                let total: i64 = tile_dims.iter().product();
                if devices.len() as i64 != total || total as usize != num_devices {
                    return Err(mismatch(format!(
                        "{} tiles listed over {} devices, but the program runs on {num_devices}",
                        total,
                        devices.len()
                    )));
                }
                let tiles = &tile_dims[..rank];
                let shard_shape: Vec<i64> = shape.iter().zip(tiles).map(|(&n, &t)| (n + t - 1) / t).collect();
                let mut regions = vec![Vec::new(); num_devices];
                let mut owners = Vec::new();
                for (k, &dev) in devices.iter().enumerate() {
                    let dev = usize::try_from(dev)
                        .ok()
                        .filter(|&d| d < num_devices)
                        .ok_or_else(|| mismatch(format!("device id {dev} out of range")))?;
                    let (tile, copy) = (k as i64 / copies, k as i64 % copies);
                    let index = unflatten(tile, tiles);
                    regions[dev] =
                        index.iter().zip(&shard_shape).zip(shape).map(|((&i, &c), &n)| (i * c).min(n)..((i + 1) * c).min(n)).collect();
                    if copy == 0 {
                        owners.push(dev);
                    }
                }
                Ok(Tiling { shape: shape.to_vec(), shard_shape, regions, owners })
            }
        }
    }
}

fn unflatten(mut flat: i64, dims: &[i64]) -> Vec<i64> {
    let mut idx = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        idx[d] = flat % dims[d];
        flat /= dims[d];
    }
    idx
}

#[allow(clippy::too_many_arguments)] // two (array, shape, offset) triples, extent, size
/// Copies `extent` elements (a box) from `src` at `src_at` to `dst` at `dst_at`, both
/// row-major arrays of the given shapes with `elem`-byte elements.
pub fn copy_box(
    src: &[u8],
    src_shape: &[i64],
    src_at: &[i64],
    dst: &mut [u8],
    dst_shape: &[i64],
    dst_at: &[i64],
    extent: &[i64],
    elem: usize,
) {
    if extent.iter().any(|&e| e <= 0) {
        return;
    }
    let rank = extent.len();
    if rank == 0 {
        dst[..elem].copy_from_slice(&src[..elem]);
        return;
    }
    let offset = |shape: &[i64], at: &[i64], idx: &[i64]| -> usize {
        let mut off = 0i64;
        for d in 0..rank {
            off = off * shape[d] + at[d] + idx[d];
        }
        off as usize * elem
    };
    let row = extent[rank - 1] as usize * elem;
    let mut idx = vec![0i64; rank];
    loop {
        let s = offset(src_shape, src_at, &idx);
        let t = offset(dst_shape, dst_at, &idx);
        dst[t..t + row].copy_from_slice(&src[s..s + row]);
        // Advance over all but the last (contiguous) dimension.
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < extent[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// The bytes of `device`'s shard of `full` (padded with zeros to the shard shape).
pub fn shard_of(full: &[u8], elem: usize, tiling: &Tiling, device: usize) -> Vec<u8> {
    let n: i64 = tiling.shard_shape.iter().product();
    let mut out = vec![0u8; n as usize * elem];
    let region = &tiling.regions[device];
    let at: Vec<i64> = region.iter().map(|r| r.start).collect();
    let extent: Vec<i64> = region.iter().map(|r| r.end - r.start).collect();
    let zero = vec![0; at.len()];
    copy_box(full, &tiling.shape, &at, &mut out, &tiling.shard_shape, &zero, &extent, elem);
    out
}

/// Puts the owners' shards (`shards[device]`, padded shard shape) back into a full array.
pub fn assemble(shards: &[&[u8]], elem: usize, tiling: &Tiling) -> Vec<u8> {
    let n: i64 = tiling.shape.iter().product();
    let mut out = vec![0u8; n as usize * elem];
    for &dev in &tiling.owners {
        let region = &tiling.regions[dev];
        let at: Vec<i64> = region.iter().map(|r| r.start).collect();
        let extent: Vec<i64> = region.iter().map(|r| r.end - r.start).collect();
        let zero = vec![0; at.len()];
        copy_box(shards[dev], &tiling.shard_shape, &zero, &mut out, &tiling.shape, &at, &extent, elem);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &[u8]) -> Vec<u8> {
        v.to_vec()
    }

    #[test]
    fn rows_over_two_devices_round_trip() {
        // 4x2 array of u8 0..8, rows split over 2 devices.
        let full: Vec<u8> = (0..8).collect();
        let s = OpSharding::Tiled { tile_dims: vec![2, 1], devices: vec![0, 1], replicated_copies: 1 };
        let t = Tiling::new(&s, &[4, 2], 2).unwrap();
        assert_eq!(t.shard_shape, vec![2, 2]);
        assert_eq!(shard_of(&full, 1, &t, 0), bytes(&[0, 1, 2, 3]));
        assert_eq!(shard_of(&full, 1, &t, 1), bytes(&[4, 5, 6, 7]));
        let shards = [shard_of(&full, 1, &t, 0), shard_of(&full, 1, &t, 1)];
        assert_eq!(assemble(&[&shards[0], &shards[1]], 1, &t), full);
    }

    #[test]
    fn two_by_four_mesh_with_permuted_devices_and_padding() {
        // 3x8 array split 2x4 over 8 devices listed in reverse: rows pad 3 -> 2+2.
        let full: Vec<u8> = (0..24).collect();
        let s = OpSharding::Tiled { tile_dims: vec![2, 4], devices: (0..8).rev().collect(), replicated_copies: 1 };
        let t = Tiling::new(&s, &[3, 8], 8).unwrap();
        assert_eq!(t.shard_shape, vec![2, 2]);
        // Device 7 holds tile (0,0): rows 0-1, cols 0-1.
        assert_eq!(shard_of(&full, 1, &t, 7), bytes(&[0, 1, 8, 9]));
        // Device 0 holds tile (1,3): row 2 (+1 padding row), cols 6-7.
        assert_eq!(shard_of(&full, 1, &t, 0), bytes(&[22, 23, 0, 0]));
        let shards: Vec<Vec<u8>> = (0..8).map(|d| shard_of(&full, 1, &t, d)).collect();
        let refs: Vec<&[u8]> = shards.iter().map(|s| s.as_slice()).collect();
        assert_eq!(assemble(&refs, 1, &t), full);
    }

    #[test]
    fn last_dim_replication_and_errors() {
        let s = OpSharding::Tiled { tile_dims: vec![2, 2], devices: vec![0, 1, 2, 3], replicated_copies: 2 };
        let t = Tiling::new(&s, &[4], 4).unwrap();
        assert_eq!(t.regions[0], t.regions[1]);
        assert_eq!(t.regions[2], vec![2..4]);
        assert_eq!(t.owners, vec![0, 2]);
        let bad = Tiling::new(&s, &[4, 4], 4).unwrap_err();
        assert!(bad.to_string().contains("tile dimensions for rank 2"), "{bad}");
        assert!(Tiling::new(&s, &[4], 8).is_err());
    }
}
