//! Arrays that live on the devices: a tensor type, a sharding over a mesh and one buffer per
//! device of the mesh that this process drives (device i of the mesh is the client's i-th
//! device). They stay on the devices across executions; only `place`, `fetch` and `gather`
//! cross to the host. In a multi-process run an array holds only this process's shards
//! ([`Ownership`]): it is not fully addressable, and reading it whole needs a gather.
use crate::client::{download, Client};
use crate::error::{Error, Result};
use crate::host::{AsHostView, HostArray};
use crate::ownership::Ownership;
use crate::program::Program;
use dtype::TensorType;
use sharding::{assemble, shard_of, NamedSharding, Tiling};
use std::ops::Range;
use std::sync::Arc;
use xla_sys::{Buffer, Device};

/// An array on the devices: its whole type, its sharding over a mesh, and one buffer per device
/// of the mesh that this process drives, holding that device's (padded) shard.
pub struct DeviceArray {
    ty: TensorType,
    sharding: NamedSharding,
    tiling: Tiling,
    devices: Vec<Device>,
    buffers: Vec<Buffer>,
    /// The mesh device of each buffer.
    positions: Vec<usize>,
    /// Which process owns each mesh device (None: this process owns them all).
    ownership: Option<Arc<Ownership>>,
}

/// One shard of an array that this process owns (see [`DeviceArray::addressable_shards`]).
pub struct AddressableShard<'a> {
    /// The device's index in the mesh.
    pub index: usize,
    /// The part of the whole array the device holds (unpadded).
    pub region: &'a [Range<i64>],
    /// The device.
    pub device: &'a Device,
    /// Its buffer (padded to the shard shape).
    pub buffer: &'a Buffer,
}

impl std::fmt::Debug for DeviceArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceArray({} sharded {})", self.ty, self.sharding)
    }
}

impl DeviceArray {
    /// Copies a host array to the devices of `sharding`'s mesh, each device receiving its
    /// shard (the whole array where nothing is split).
    pub fn place(client: &Client, host: &impl AsHostView, sharding: &NamedSharding) -> Result<DeviceArray> {
        let v = host.host_view();
        let ty = v.ty();
        let tiling = sharding.tiling(v.dims)?;
        let devices = mesh_devices(client, sharding)?;
        let elem = v.dtype.size_bytes();
        let mut buffers = Vec::with_capacity(devices.len());
        for (d, device) in devices.iter().enumerate() {
            let buffer = if tiling.shard_shape == v.dims {
                client.upload(&v, device)?
            } else {
                let piece = HostArray::from_bytes(v.dtype, &tiling.shard_shape, shard_of(v.bytes, elem, &tiling, d))?;
                client.upload(&piece, device)?
            };
            buffers.push(buffer);
        }
        let positions = (0..devices.len()).collect();
        Ok(DeviceArray { ty, sharding: sharding.clone(), tiling, devices, buffers, positions, ownership: None })
    }

    /// Places an array of type `ty` over the global mesh of `sharding`, calling `shard(d,
    /// region)` for the data of each mesh device `d` this process drives (its own, and the
    /// stand-ins' where [`Ownership::has_stand_ins`]): JAX's `make_array_from_callback`. The
    /// callback returns the region's data, unpadded (`region`'s extents as its shape).
    pub fn place_with(
        client: &Client,
        ownership: &Arc<Ownership>,
        sharding: &NamedSharding,
        ty: &TensorType,
        mut shard: impl FnMut(usize, &[Range<i64>]) -> Result<HostArray>,
    ) -> Result<DeviceArray> {
        let tiling = sharding.tiling(&ty.dims)?;
        let n = sharding.num_devices();
        if ownership.devices() != n {
            return Err(Error::Argument(format!(
                "the ownership covers {} devices, the mesh {} has {n}",
                ownership.devices(),
                sharding.mesh
            )));
        }
        let global = client.global_devices()?;
        if global.len() < n {
            return Err(Error::NotEnoughDevices { needed: n, available: global.len(), hint: String::new() });
        }
        let positions = ownership.local();
        let (mut devices, mut buffers) = (Vec::with_capacity(positions.len()), Vec::with_capacity(positions.len()));
        for &d in &positions {
            let region = &tiling.regions[d];
            let piece = shard(d, region)?;
            let extent: Vec<i64> = region.iter().map(|r| r.end - r.start).collect();
            if piece.dtype() != ty.dtype || piece.dims() != extent.as_slice() {
                return Err(Error::Argument(format!(
                    "the data for device {d} of {ty} sharded {sharding} is {}, expected {}",
                    piece.type_string(),
                    TensorType::new(ty.dtype, &extent)
                )));
            }
            let padded = if extent == tiling.shard_shape { piece } else { piece.padded(&tiling.shard_shape)? };
            buffers.push(client.upload(&padded, &global[d])?);
            devices.push(global[d].clone());
        }
        Ok(DeviceArray {
            ty: ty.clone(),
            sharding: sharding.clone(),
            tiling,
            devices,
            buffers,
            positions,
            ownership: Some(ownership.clone()),
        })
    }

    /// Places an array whose dimension 0 is split over processes from this process's rows
    /// (JAX's `make_array_from_process_local_data`): `local` holds the rows `local_rows` of
    /// the whole array of type `ty`, concatenated in order, and each device this process owns
    /// takes its region from them. Stand-in devices (tests of the multi-process path) take
    /// theirs from `stand_in(d, region)`, which a real multi-host run never calls.
    pub fn from_process_local_data(
        client: &Client,
        ownership: &Arc<Ownership>,
        sharding: &NamedSharding,
        ty: &TensorType,
        local: &HostArray,
        local_rows: &[Range<i64>],
        mut stand_in: impl FnMut(usize, &[Range<i64>]) -> Result<HostArray>,
    ) -> Result<DeviceArray> {
        let rows: i64 = local_rows.iter().map(|r| r.end - r.start).sum();
        if local.dims().first() != Some(&rows) || local.dims()[1..] != ty.dims[1..] || local.dtype() != ty.dtype {
            return Err(Error::Argument(format!(
                "process-local data of {} for rows {local_rows:?} of {ty}: expected {rows} rows of the rest of its shape",
                local.type_string()
            )));
        }
        DeviceArray::place_with(client, ownership, sharding, ty, |d, region| {
            if !ownership.is_mine(d) {
                return stand_in(d, region);
            }
            rows_region(local, local_rows, region).unwrap_or_else(|| {
                Err(Error::Argument(format!(
                    "device {d} holds rows {:?} of {ty}, which are not among this process's rows {local_rows:?}",
                    region[0]
                )))
            })
        })
    }

    /// Wraps the buffers of the devices this process drives under `ownership` (e.g. an
    /// execution's outputs) after checking their shapes.
    pub(crate) fn from_buffers_owned(
        ty: TensorType,
        sharding: NamedSharding,
        devices: Vec<Device>,
        buffers: Vec<Buffer>,
        ownership: Option<Arc<Ownership>>,
    ) -> Result<DeviceArray> {
        let tiling = sharding.tiling(&ty.dims)?;
        let positions = match &ownership {
            Some(o) => o.local(),
            None => (0..sharding.num_devices()).collect(),
        };
        if buffers.len() != devices.len() || devices.len() != positions.len() {
            return Err(Error::Argument(format!("{} buffers for {} devices of mesh {}", buffers.len(), devices.len(), sharding.mesh)));
        }
        for b in &buffers {
            let (dtype, dims) = (b.element_type()?, b.dims()?);
            if dtype != ty.dtype || dims != tiling.shard_shape {
                return Err(Error::Argument(format!(
                    "a device buffer of {ty} sharded {sharding} is {}, expected {}",
                    TensorType::new(dtype, &dims),
                    TensorType::new(ty.dtype, &tiling.shard_shape)
                )));
            }
        }
        Ok(DeviceArray { ty, sharding, tiling, devices, buffers, positions, ownership })
    }

    /// The same array under another name for its placement (e.g. the spec a program was
    /// annotated with); the placement itself must be the same.
    pub fn with_sharding(mut self, sharding: NamedSharding) -> Result<DeviceArray> {
        let tiling = sharding.tiling(&self.ty.dims)?;
        if tiling.shard_shape != self.tiling.shard_shape || tiling.regions != self.tiling.regions {
            return Err(Error::Argument(format!("{self:?} is not placed as {sharding}")));
        }
        self.sharding = sharding;
        Ok(self)
    }

    /// Whether this process holds every shard (always, in a single-process run).
    pub fn is_fully_addressable(&self) -> bool {
        self.ownership.as_ref().is_none_or(|o| o.owns_all())
    }

    /// Which process owns each mesh device (None: this process owns them all).
    pub fn ownership(&self) -> Option<&Arc<Ownership>> {
        self.ownership.as_ref()
    }

    /// The shards this process owns, in mesh order.
    pub fn addressable_shards(&self) -> Vec<AddressableShard<'_>> {
        (0..self.buffers.len())
            .filter(|&i| self.ownership.as_ref().is_none_or(|o| o.is_mine(self.positions[i])))
            .map(|i| AddressableShard {
                index: self.positions[i],
                region: &self.tiling.regions[self.positions[i]],
                device: &self.devices[i],
                buffer: &self.buffers[i],
            })
            .collect()
    }

    /// The unpadded data of an addressable shard (its region of the whole array).
    pub fn fetch_shard(&self, shard: &AddressableShard<'_>) -> Result<HostArray> {
        let whole = download(shard.buffer)?;
        let extent: Vec<i64> = shard.region.iter().map(|r| r.end - r.start).collect();
        if extent == whole.dims() {
            return Ok(whole);
        }
        whole.slice(&extent.iter().map(|&e| 0..e).collect::<Vec<_>>())
    }

    /// The whole array on this host: read directly when this process holds it (fully
    /// addressable, or one of its own devices has a whole copy), else through a compiled
    /// program that replicates it over the mesh, whose copy on one of this process's devices
    /// is read. Every process of the run must call it for the same arrays in the same order
    /// (the program's collectives span them all).
    pub fn gather(&self, client: &Client) -> Result<HostArray> {
        if self.is_fully_addressable() {
            return self.fetch();
        }
        if let Some(shard) =
            self.addressable_shards().into_iter().find(|s| s.region.iter().zip(&self.ty.dims).all(|(r, &n)| r.start == 0 && r.end == n))
        {
            return self.fetch_shard(&shard);
        }
        // In the sdy dialect, as the rest of our programs (so XLA partitions it with Shardy).
        let mesh = self.sharding.mesh.axes().iter().map(|(a, n)| format!("\"{a}\"={n}")).collect::<Vec<_>>().join(", ");
        let dims = |split: bool| {
            let d: Vec<String> = self
                .sharding
                .spec
                .dims
                .iter()
                .map(|axes| {
                    if split {
                        format!("{{{}}}", axes.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", "))
                    } else {
                        "{}".into()
                    }
                })
                .collect();
            format!("#sdy.sharding<@mesh, [{}]>", d.join(", "))
        };
        let ty = self.ty.mlir();
        let text = format!(
            "module @gather attributes {{mhlo.num_partitions = {n} : i32, mhlo.num_replicas = 1 : i32}} {{\n  \
             sdy.mesh @mesh = <[{mesh}]>\n  \
             func.func public @main(%arg0: {ty} {{sdy.sharding = {from}}}) -> ({ty} {{sdy.sharding = {to}}}) {{\n    \
             return %arg0 : {ty}\n  }}\n}}\n",
            n = self.sharding.num_devices(),
            from = dims(true),
            to = dims(false),
        );
        let program = Program::from_text(&text)?;
        let exe = client.compile(&program, &crate::CompileOptions::for_mesh(&self.sharding.mesh))?;
        let out = exe.call(vec![crate::Arg::Keep(self)])?;
        let replicated = out.into_iter().next().ok_or_else(|| Error::Program("the gather program has no output".into()))?;
        let shard = replicated.addressable_shards().into_iter().next().map(|s| (s.index, s.buffer));
        match shard {
            Some((_, buffer)) => download(buffer),
            None => Err(Error::Program("the gathered array has no shard on this process".into())),
        }
    }

    /// Copies the array back to the host, reading only one copy of each piece. Fails with
    /// [`Error::NotFullyAddressable`] in a multi-process run where this process does not own
    /// every shard: use [`DeviceArray::gather`].
    pub fn fetch(&self) -> Result<HostArray> {
        if let Some(o) = self.ownership.as_ref().filter(|o| !o.owns_all()) {
            return Err(Error::NotFullyAddressable {
                array: format!("{self:?}"),
                process: o.process(),
                held: o.mine().len(),
                devices: o.devices(),
            });
        }
        if self.positions.len() != self.sharding.num_devices() {
            return Err(Error::Argument(format!("{self:?} has buffers on {} of its mesh's devices", self.positions.len())));
        }
        let elem = self.ty.dtype.size_bytes();
        let mut shards: Vec<Option<HostArray>> = (0..self.buffers.len()).map(|_| None).collect();
        for &d in &self.tiling.owners {
            shards[d] = Some(download(&self.buffers[d])?);
        }
        if self.tiling.shard_shape == self.ty.dims {
            if let Some(whole) = shards.into_iter().flatten().next() {
                return Ok(whole);
            }
            return Err(Error::Argument(format!("{self:?} has no device holding it")));
        }
        let bytes: Vec<&[u8]> = shards.iter().map(|s| s.as_ref().map_or(&[][..], |h| h.bytes())).collect();
        HostArray::from_bytes(self.ty.dtype, &self.ty.dims, assemble(&bytes, elem, &self.tiling))
    }

    /// Each driven device's shard (padded to the shard shape), in mesh device order.
    pub fn fetch_shards(&self) -> Result<Vec<HostArray>> {
        self.buffers.iter().map(download).collect()
    }

    /// The type of the whole array (not of a shard).
    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    /// How the array is placed over the mesh.
    pub fn sharding(&self) -> &NamedSharding {
        &self.sharding
    }

    /// How the array is cut into the shards its buffers hold: shard shape and each device's region.
    pub fn tiling(&self) -> &Tiling {
        &self.tiling
    }

    /// The device of each buffer, in mesh device order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// One buffer per device of the mesh this process drives, each of the padded shard shape,
    /// in mesh device order.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// The mesh device of each buffer.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }
}

/// The box `region` of a whole array from `local`, which holds only its rows `local_rows`
/// (concatenated in order): None when the region's rows are not among them.
pub fn rows_region(local: &HostArray, local_rows: &[Range<i64>], region: &[Range<i64>]) -> Option<Result<HostArray>> {
    // Row r of the whole array is row `offset + (r - range.start)` of `local`.
    let mut offset = 0i64;
    for range in local_rows {
        if region[0].start >= range.start && region[0].end <= range.end {
            let mut within = region.to_vec();
            within[0] = offset + region[0].start - range.start..offset + region[0].end - range.start;
            return Some(local.slice(&within));
        }
        offset += range.end - range.start;
    }
    None
}

/// The client's first `n` devices for a mesh of `n` devices.
pub(crate) fn mesh_devices(client: &Client, sharding: &NamedSharding) -> Result<Vec<Device>> {
    let mut devices = client.devices()?;
    let n = sharding.num_devices();
    if devices.len() < n {
        return Err(Error::NotEnoughDevices { needed: n, available: devices.len(), hint: String::new() });
    }
    devices.truncate(n);
    Ok(devices)
}

/// An argument of `Executable::call`: borrowed (kept by the caller) or moved in (donated:
/// the program may reuse its memory, and the caller no longer has it).
#[allow(clippy::large_enum_variant)] // moved once per call; boxing would only add a heap hop
pub enum Arg<'a> {
    /// Lent: the caller keeps the array; the parameter must not be one the program donates.
    Keep(&'a DeviceArray),
    /// Moved in: the program may reuse the array's memory for its outputs, and the array is
    /// consumed by the call.
    Donate(DeviceArray),
}

impl Arg<'_> {
    /// The device array, whichever way it is passed.
    pub fn array(&self) -> &DeviceArray {
        match self {
            Arg::Keep(a) => a,
            Arg::Donate(a) => a,
        }
    }
}

impl<'a> From<&'a DeviceArray> for Arg<'a> {
    fn from(a: &'a DeviceArray) -> Arg<'a> {
        Arg::Keep(a)
    }
}

impl From<DeviceArray> for Arg<'_> {
    fn from(a: DeviceArray) -> Self {
        Arg::Donate(a)
    }
}
