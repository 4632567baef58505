//! Arrays that live on the devices: a tensor type, a sharding over a mesh and one buffer per
//! device of the mesh (device i of the mesh is the client's i-th addressable device). They
//! stay on the devices across executions; only `place` and `fetch` cross to the host.
use crate::client::{download, Client};
use crate::error::{Error, Result};
use crate::host::{AsHostView, HostArray};
use dtype::TensorType;
use sharding::{assemble, shard_of, NamedSharding, Tiling};
use xla_sys::{Buffer, Device};

/// An array on the devices: its whole type, its sharding over a mesh, and one buffer per device
/// of the mesh holding that device's (padded) shard.
pub struct DeviceArray {
    ty: TensorType,
    sharding: NamedSharding,
    tiling: Tiling,
    devices: Vec<Device>,
    buffers: Vec<Buffer>,
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
        Ok(DeviceArray { ty, sharding: sharding.clone(), tiling, devices, buffers })
    }

    /// Wraps per-device buffers (e.g. an execution's outputs) after checking their shapes.
    pub(crate) fn from_buffers(ty: TensorType, sharding: NamedSharding, devices: Vec<Device>, buffers: Vec<Buffer>) -> Result<DeviceArray> {
        let tiling = sharding.tiling(&ty.dims)?;
        if buffers.len() != devices.len() || devices.len() != sharding.num_devices() {
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
        Ok(DeviceArray { ty, sharding, tiling, devices, buffers })
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

    /// Copies the array back to the host, reading only one copy of each piece.
    pub fn fetch(&self) -> Result<HostArray> {
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

    /// Each device's shard (padded to the shard shape), in mesh device order.
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

    /// One buffer per device of the mesh, each of the padded shard shape, in mesh device order.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }
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
