//! A compiled program with its devices and decoded shardings. `run` takes whole host
//! arrays, places each on the devices as the program's parameter shardings say (whole when
//! replicated), executes, and assembles each output back into a whole array.
use crate::client::download;
use crate::error::{Error, Result};
use crate::host::{AsHostView, HostArray};
use crate::program::{Program, TensorType};
use sharding::{assemble, shard_of, OpSharding, Tiling};
use xla_sys::{Buffer, Device, LoadedExecutable};

pub struct Executable {
    inner: LoadedExecutable,
    devices: Vec<Device>,
    params: Option<Vec<TensorType>>,
    results: Option<Vec<TensorType>>,
    param_shardings: Option<Vec<OpSharding>>,
    output_shardings: Option<Vec<OpSharding>>,
}

/// One output: the assembled array, each device's shard, and how it was sharded.
#[derive(Debug)]
pub struct ShardedOutput {
    pub array: HostArray,
    pub shards: Vec<HostArray>,
    pub sharding: OpSharding,
}

fn decode_all(raw: Option<Vec<Vec<u8>>>) -> Result<Option<Vec<OpSharding>>> {
    raw.map(|list| list.iter().map(|b| OpSharding::decode(b).map_err(Error::from)).collect())
        .transpose()
}

impl Executable {
    pub(crate) fn new(inner: LoadedExecutable, program: &Program) -> Result<Executable> {
        let devices = inner.addressable_devices()?;
        let single = devices.len() == 1;
        // On one device every sharding is trivially the whole array.
        let (param_shardings, output_shardings) = if single {
            (None, None)
        } else {
            (decode_all(inner.parameter_shardings()?)?, decode_all(inner.output_shardings()?)?)
        };
        Ok(Executable {
            inner,
            devices,
            params: program.params.clone(),
            results: program.results.clone(),
            param_shardings,
            output_shardings,
        })
    }

    /// The devices the program runs on, in partition order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn name(&self) -> Result<String> {
        Ok(self.inner.name()?)
    }

    pub fn num_outputs(&self) -> Result<usize> {
        Ok(self.inner.num_outputs()?)
    }

    /// Parameter shardings reported by the plugin (None: not sharded or not reported).
    pub fn parameter_shardings(&self) -> Option<&[OpSharding]> {
        self.param_shardings.as_deref()
    }

    pub fn output_shardings(&self) -> Option<&[OpSharding]> {
        self.output_shardings.as_deref()
    }

    /// Executes on device buffers: `args[d]` for the d-th device. Inputs listed in
    /// `donate` may be consumed (where the program aliases them to an output); a donated
    /// buffer cannot be used afterwards. Returns `outputs[d][i]`.
    pub fn execute(&self, args: &[Vec<&Buffer>], donate: &[usize]) -> Result<Vec<Vec<Buffer>>> {
        if args.len() != self.devices.len() {
            return Err(Error::Argument(format!(
                "the program runs on {} devices but arguments were given for {}",
                self.devices.len(),
                args.len()
            )));
        }
        Ok(self.inner.execute(args, donate)?)
    }

    /// Checks whole host arguments against the program's parameter types (when known).
    pub fn check_args<A: AsHostView>(&self, args: &[A]) -> Result<()> {
        let Some(params) = &self.params else { return Ok(()) };
        if params.len() != args.len() {
            return Err(Error::Argument(format!(
                "the program takes {} arguments but {} were given",
                params.len(),
                args.len()
            )));
        }
        for (i, (p, a)) in params.iter().zip(args).enumerate() {
            let a = a.host_view();
            if p.dtype != a.dtype || p.dims != a.dims {
                return Err(Error::Argument(format!(
                    "argument {i}: the program expects {p}, got {}",
                    a.type_string()
                )));
            }
        }
        Ok(())
    }

    fn tiling(&self, sharding: Option<&OpSharding>, dims: &[i64]) -> Result<(OpSharding, Tiling)> {
        let s = sharding.cloned().unwrap_or(OpSharding::Replicated);
        let t = Tiling::new(&s, dims, self.devices.len())?;
        Ok((s, t))
    }

    /// Runs on whole host arrays and returns whole outputs with their shards.
    pub fn run_sharded<A: AsHostView>(&self, client: &crate::Client, args: &[A]) -> Result<Vec<ShardedOutput>> {
        self.check_args(args)?;
        let n = self.devices.len();
        // buffers[d][i]: argument i's piece for device d.
        let mut buffers: Vec<Vec<Buffer>> = (0..n).map(|_| Vec::new()).collect();
        for (i, arg) in args.iter().enumerate() {
            let arg = arg.host_view();
            let sharding = self.param_shardings.as_ref().and_then(|s| s.get(i));
            let (_, tiling) = self.tiling(sharding, arg.dims)?;
            let elem = arg.dtype.size_bytes();
            for (d, device) in self.devices.iter().enumerate() {
                // Whole (replicated) arguments go up straight from the caller's bytes.
                let buffer = if tiling.shard_shape == arg.dims {
                    client.upload(&arg, device)?
                } else {
                    let piece = HostArray::from_bytes(arg.dtype, &tiling.shard_shape, shard_of(arg.bytes, elem, &tiling, d))?;
                    client.upload(&piece, device)?
                };
                buffers[d].push(buffer);
            }
        }
        let refs: Vec<Vec<&Buffer>> = buffers.iter().map(|l| l.iter().collect()).collect();
        let outputs = self.execute(&refs, &[])?;
        drop(refs);
        drop(buffers);
        let mut result = Vec::new();
        for j in 0..outputs.first().map_or(0, |o| o.len()) {
            let shards: Vec<HostArray> = outputs.iter().map(|o| download(&o[j])).collect::<Result<_>>()?;
            let sharding = self.output_shardings.as_ref().and_then(|s| s.get(j));
            let full_dims = self.full_output_dims(j, sharding, shards[0].dims());
            let (sharding, tiling) = self.tiling(sharding, &full_dims)?;
            let dtype = shards[0].dtype();
            let bytes: Vec<&[u8]> = shards.iter().map(|s| s.bytes()).collect();
            let array = HostArray::from_bytes(dtype, &full_dims, assemble(&bytes, dtype.size_bytes(), &tiling))?;
            result.push(ShardedOutput { array, shards, sharding });
        }
        Ok(result)
    }

    /// Runs on whole host arrays and returns whole outputs.
    pub fn run<A: AsHostView>(&self, client: &crate::Client, args: &[A]) -> Result<Vec<HostArray>> {
        Ok(self.run_sharded(client, args)?.into_iter().map(|o| o.array).collect())
    }

    /// The whole shape of output `j`: from the program text when known, else shard x tiles.
    fn full_output_dims(&self, j: usize, sharding: Option<&OpSharding>, shard: &[i64]) -> Vec<i64> {
        if let Some(t) = self.results.as_ref().and_then(|r| r.get(j)) {
            return t.dims.clone();
        }
        match sharding {
            Some(OpSharding::Tiled { tile_dims, .. }) => {
                shard.iter().zip(tile_dims).map(|(s, t)| s * t).collect()
            }
            _ => shard.to_vec(),
        }
    }
}
