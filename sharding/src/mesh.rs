//! A named device mesh (e.g. `data=2,model=4`) and partition specs, and the Shardy and GSPMD
//! annotation strings they become.
use crate::{Error, Result};

/// A named device mesh: an ordered list of axes with unique, non-empty names and sizes of at least 1.
/// Its devices are numbered `0..num_devices()` in row-major order over the axes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mesh {
    axes: Vec<(String, i64)>,
}

impl Mesh {
    /// A mesh with these `(name, size)` axes, in order; fails with [`Error::Mesh`] if a name is
    /// repeated or empty or a size is below 1.
    pub fn new(axes: &[(&str, i64)]) -> Result<Mesh> {
        let mut seen = std::collections::HashSet::new();
        for (name, size) in axes {
            if !seen.insert(*name) {
                return Err(Error::Mesh(format!("axis {name:?} is listed twice")));
            }
            if *size < 1 || name.is_empty() {
                return Err(Error::Mesh(format!("bad axis {name:?}={size} (names unique, sizes >= 1)")));
            }
        }
        Ok(Mesh { axes: axes.iter().map(|(n, s)| (n.to_string(), *s)).collect() })
    }

    /// Parses `data=2,model=4`.
    pub fn parse(text: &str) -> Result<Mesh> {
        let mut axes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, size) = part.split_once('=').ok_or_else(|| Error::Mesh(format!("{part:?} is not NAME=SIZE")))?;
            let size: i64 = size.trim().parse().map_err(|_| Error::Mesh(format!("{part:?}: size is not an integer")))?;
            axes.push((name.trim(), size));
        }
        Mesh::new(&axes)
    }

    /// A mesh of one device with no axes (nothing can be split).
    pub fn single() -> Mesh {
        Mesh { axes: Vec::new() }
    }

    /// The axes and their sizes, in order.
    pub fn axes(&self) -> &[(String, i64)] {
        &self.axes
    }

    /// The coordinates of device `i` (row-major over the axes).
    pub fn coords(&self, mut i: i64) -> Vec<i64> {
        let mut c = vec![0; self.axes.len()];
        for (k, (_, size)) in self.axes.iter().enumerate().rev() {
            c[k] = i % size;
            i /= size;
        }
        c
    }

    /// The number of devices in the mesh: the product of the axis sizes (1 for no axes).
    pub fn num_devices(&self) -> i64 {
        self.axes.iter().map(|a| a.1).product()
    }

    /// The size of axis `name`, or `None` if the mesh has no such axis.
    pub fn axis_size(&self, name: &str) -> Option<i64> {
        self.axes.iter().find(|a| a.0 == name).map(|a| a.1)
    }

    /// `sdy.mesh @NAME = <["data"=2, "model"=4]>`
    pub fn sdy_declaration(&self, name: &str) -> String {
        let axes: Vec<String> = self.axes.iter().map(|(n, s)| format!("\"{n}\"={s}")).collect();
        format!("sdy.mesh @{name} = <[{}]>", axes.join(", "))
    }

    /// The GSPMD tiling of `spec`: `{devices=[..]<=[N]}` (mesh axes in mesh order).
    pub fn gspmd_sharding(&self, spec: &PartitionSpec) -> Result<String> {
        spec.check(self)?;
        let mut dims: Vec<i64> = spec.dims.iter().map(|axes| axes.iter().map(|a| self.axis_size(a).unwrap_or(1)).product()).collect();
        let used: i64 = dims.iter().product();
        if used == 1 {
            return Ok("{replicated}".into());
        }
        // Only specs whose sharded axes appear in mesh order map to a plain iota tiling.
        let order: Vec<usize> =
            spec.dims.iter().flatten().map(|a| self.axes.iter().position(|m| &m.0 == a).expect("internal: checked")).collect();
        if order.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::Unsupported("GSPMD text for axes out of mesh order".into()));
        }
        let n = self.num_devices();
        let mut text = String::from("{devices=[");
        if used < n {
            dims.push(n / used);
        }
        text += &dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
        text += &format!("]<=[{n}]");
        if used < n {
            text += " last_tile_dim_replicate";
        }
        Ok(text + "}")
    }
}

impl std::fmt::Display for Mesh {
    /// `data=2,model=4` (`single` for a one-device mesh without axes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.axes.is_empty() {
            return f.write_str("single");
        }
        let axes: Vec<String> = self.axes.iter().map(|(n, s)| format!("{n}={s}")).collect();
        f.write_str(&axes.join(","))
    }
}

/// For each array dimension, the mesh axes it is split over (empty: not split).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PartitionSpec {
    /// One entry per array dimension, outermost first: the names of the mesh axes that
    /// dimension is split over, most major first (empty: not split).
    pub dims: Vec<Vec<String>>,
}

impl PartitionSpec {
    /// `PartitionSpec::new(&[&["data"], &[]])` shards dim 0 over `data`.
    pub fn new(dims: &[&[&str]]) -> PartitionSpec {
        PartitionSpec { dims: dims.iter().map(|d| d.iter().map(|a| a.to_string()).collect()).collect() }
    }

    /// A spec for an array of rank `rank` that splits no dimension (every device holds the whole array).
    pub fn replicated(rank: usize) -> PartitionSpec {
        PartitionSpec { dims: vec![Vec::new(); rank] }
    }

    /// Every axis named is in the mesh, and none is used twice.
    pub fn check(&self, mesh: &Mesh) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for a in self.dims.iter().flatten() {
            if mesh.axis_size(a).is_none() {
                return Err(Error::UnknownAxis { axis: a.clone(), mesh: mesh.to_string() });
            }
            if !seen.insert(a) {
                return Err(Error::Mesh(format!("axis {a:?} used twice in {self}")));
            }
        }
        Ok(())
    }

    /// `#sdy.sharding<@MESH, [{"data"}, {}]>`
    pub fn sdy_sharding(&self, mesh: &Mesh, mesh_name: &str) -> Result<String> {
        self.check(mesh)?;
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|axes| {
                let names: Vec<String> = axes.iter().map(|a| format!("\"{a}\"")).collect();
                format!("{{{}}}", names.join(", "))
            })
            .collect();
        Ok(format!("#sdy.sharding<@{mesh_name}, [{}]>", dims.join(", ")))
    }
}

impl std::fmt::Display for PartitionSpec {
    /// `[{"data"}, {}]`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> =
            self.dims.iter().map(|axes| format!("{{{}}}", axes.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "))).collect();
        write!(f, "[{}]", dims.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_text() {
        let mesh = Mesh::parse("data=2,model=4").unwrap();
        assert_eq!(mesh.num_devices(), 8);
        assert_eq!(mesh.sdy_declaration("mesh"), r#"sdy.mesh @mesh = <["data"=2, "model"=4]>"#);
        let spec = PartitionSpec::new(&[&["data"], &["model"]]);
        assert_eq!(spec.sdy_sharding(&mesh, "mesh").unwrap(), r#"#sdy.sharding<@mesh, [{"data"}, {"model"}]>"#);
        assert_eq!(mesh.gspmd_sharding(&spec).unwrap(), "{devices=[2,4]<=[8]}");
        let rows = PartitionSpec::new(&[&["data"], &[]]);
        assert_eq!(mesh.gspmd_sharding(&rows).unwrap(), "{devices=[2,1,4]<=[8] last_tile_dim_replicate}");
        assert_eq!(mesh.gspmd_sharding(&PartitionSpec::replicated(2)).unwrap(), "{replicated}");
    }

    #[test]
    fn bad_meshes_and_specs() {
        assert!(Mesh::parse("data=2,data=2").is_err());
        assert!(Mesh::parse("data").is_err());
        assert!(Mesh::parse("data=x").is_err());
        let mesh = Mesh::parse("x=2").unwrap();
        let err = PartitionSpec::new(&[&["y"]]).sdy_sharding(&mesh, "m").unwrap_err();
        assert_eq!(err.to_string(), "axis \"y\" is not in the mesh x=2");
    }
}
