//! A partition spec bound to a mesh (JAX's NamedSharding), its concrete device tiling
//! (`OpSharding`), and the reverse: which spec over a mesh a reported `OpSharding` means.
//! Device `i` of a mesh is the i-th device in row-major order over the mesh axes.
use crate::{Error, Mesh, OpSharding, PartitionSpec, Result, Tiling};

/// A partition spec bound to the mesh whose axes it names (JAX's `NamedSharding`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedSharding {
    /// The device mesh the array is placed on.
    pub mesh: Mesh,
    /// Which mesh axes each array dimension is split over.
    pub spec: PartitionSpec,
}

impl NamedSharding {
    /// Checks the spec against the mesh (known axes, each used once).
    pub fn new(mesh: Mesh, spec: PartitionSpec) -> Result<NamedSharding> {
        spec.check(&mesh)?;
        Ok(NamedSharding { mesh, spec })
    }

    /// Every device holds the whole array.
    pub fn replicated(mesh: Mesh, rank: usize) -> NamedSharding {
        NamedSharding { mesh, spec: PartitionSpec::replicated(rank) }
    }

    /// A single device (a mesh of one device, nothing split).
    pub fn single(rank: usize) -> NamedSharding {
        NamedSharding::replicated(Mesh::single(), rank)
    }

    /// The number of devices in the mesh, i.e. the number of shards (including replicas).
    pub fn num_devices(&self) -> usize {
        self.mesh.num_devices() as usize
    }

    /// The concrete tile assignment: which device holds which tile.
    pub fn op_sharding(&self) -> Result<OpSharding> {
        self.spec.check(&self.mesh)?;
        let axes = self.mesh.axes();
        let size = |names: &[String]| -> i64 { names.iter().map(|a| self.mesh.axis_size(a).unwrap_or(1)).product() };
        let mut tile_dims: Vec<i64> = self.spec.dims.iter().map(|d| size(d)).collect();
        let used: i64 = tile_dims.iter().product();
        let n = self.mesh.num_devices();
        if used == 1 {
            return Ok(OpSharding::Replicated);
        }
        let copies = n / used;
        let unused: Vec<String> =
            axes.iter().filter(|(a, _)| !self.spec.dims.iter().flatten().any(|s| s == a)).map(|(a, _)| a.clone()).collect();
        if copies > 1 {
            tile_dims.push(copies);
        }
        let mut devices = vec![0i64; n as usize];
        for device in 0..n {
            let coords = self.mesh.coords(device);
            let coord = |a: &String| coords[axes.iter().position(|(m, _)| m == a).expect("internal: checked axis")];
            // Mixed radix over the axes of one tile dimension, first listed = most major.
            let radix = |names: &[String]| names.iter().fold(0, |acc, a| acc * self.mesh.axis_size(a).unwrap_or(1) + coord(a));
            let mut tile: Vec<i64> = self.spec.dims.iter().map(|d| radix(d)).collect();
            if copies > 1 {
                tile.push(radix(&unused));
            }
            let linear = tile.iter().zip(&tile_dims).fold(0, |acc, (&t, &d)| acc * d + t);
            devices[linear as usize] = device;
        }
        Ok(OpSharding::Tiled { tile_dims, devices, replicated_copies: copies })
    }

    /// How an array of shape `dims` is cut over the mesh's devices.
    pub fn tiling(&self, dims: &[i64]) -> Result<Tiling> {
        if self.spec.dims.len() != dims.len() {
            return Err(Error::Mismatch {
                sharding: self.to_string(),
                shape: dims.to_vec(),
                why: format!("the spec has {} entries for an array of rank {}", self.spec.dims.len(), dims.len()),
            });
        }
        Tiling::new(&self.op_sharding()?, dims, self.num_devices())
    }

    /// The spec over `mesh` that places an array of shape `dims` as `op` does (same shard
    /// shape and the same region on every device), if there is one. Tries every way of
    /// giving each mesh axis to a dimension (or none), in every axis order.
    pub fn infer(mesh: &Mesh, op: &OpSharding, dims: &[i64]) -> Option<NamedSharding> {
        let n = mesh.num_devices() as usize;
        let want = Tiling::new(op, dims, n).ok()?;
        let axes: Vec<String> = mesh.axes().iter().filter(|(_, s)| *s > 1).map(|(a, _)| a.clone()).collect();
        let choices = dims.len() + 1; // a dimension, or "not used"
        let total = choices.checked_pow(axes.len() as u32)?;
        for order in permutations(axes.len()) {
            for mut code in 0..total {
                let mut spec = PartitionSpec::replicated(dims.len());
                for &k in &order {
                    let c = code % choices;
                    code /= choices;
                    if c < dims.len() {
                        spec.dims[c].push(axes[k].clone());
                    }
                }
                let named = NamedSharding { mesh: mesh.clone(), spec };
                if let Ok(t) = named.tiling(dims) {
                    if t.shard_shape == want.shard_shape && t.regions == want.regions {
                        return Some(named);
                    }
                }
            }
        }
        None
    }
}

/// All orders of 0..k (k is the number of mesh axes: small).
fn permutations(k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for p in permutations(k - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, k - 1);
            out.push(q);
        }
    }
    out
}

impl std::fmt::Display for NamedSharding {
    /// `[{"data"}, {}] over data=2,model=4`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} over {}", self.spec, self.mesh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_become_tile_assignments_and_back() {
        let mesh = Mesh::parse("data=2,model=4").unwrap();
        let rows = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&["data"], &[]])).unwrap();
        assert_eq!(rows.op_sharding().unwrap().describe(), "{devices=[2,1,4]0,1,2,3,4,5,6,7 last_tile_dim_replicate}");
        let cols = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&[], &["model"]])).unwrap();
        assert_eq!(cols.op_sharding().unwrap().describe(), "{devices=[1,4,2]0,4,1,5,2,6,3,7 last_tile_dim_replicate}");
        let both = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&["model", "data"], &[]])).unwrap();
        assert_eq!(both.op_sharding().unwrap().describe(), "{devices=[8,1]0,4,1,5,2,6,3,7}");
        for named in [rows, cols, both] {
            let op = named.op_sharding().unwrap();
            let back = NamedSharding::infer(&mesh, &op, &[8, 8]).unwrap();
            assert_eq!(back.tiling(&[8, 8]).unwrap(), named.tiling(&[8, 8]).unwrap());
        }
        let rep = NamedSharding::replicated(mesh.clone(), 2);
        assert_eq!(rep.op_sharding().unwrap(), OpSharding::Replicated);
        assert!(NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&["nope"]])).is_err());
        assert!(rows_rank_mismatch(&mesh));
    }

    fn rows_rank_mismatch(mesh: &Mesh) -> bool {
        let s = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&["data"]])).unwrap();
        s.tiling(&[4, 4]).is_err()
    }
}
