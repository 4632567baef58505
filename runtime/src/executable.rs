//! A compiled program with its devices and decoded shardings. `run` takes whole host
//! arrays, places each on the devices as the program's parameter shardings say (whole when
//! replicated), executes, and assembles each output back into a whole array.
use crate::client::download;
use crate::compiled::{CompiledSignature, CompiledType};
use crate::device_array::{Arg, DeviceArray};
use crate::error::{Error, Result};
use crate::host::{AsHostView, HostArray};
use crate::program::Program;
use dtype::TensorType;
use sharding::{assemble, shard_of, Mesh, NamedSharding, OpSharding, Tiling};
use xla_sys::{Buffer, Device, LoadedExecutable};

/// A program compiled and loaded on a client's devices, with its parameter and output
/// shardings decoded and, where known, its whole parameter and result types. Made by
/// [`Client::compile`](crate::Client::compile).
pub struct Executable {
    inner: LoadedExecutable,
    devices: Vec<Device>,
    mesh: Mesh,
    donated: Vec<bool>,
    /// How each parameter must be placed (text programs: from the compiled shardings).
    param_tilings: Option<Vec<Tiling>>,
    /// Time spent inside PJRT executions (launch to completion) so far.
    execute_time: std::cell::Cell<std::time::Duration>,
    /// Each output's sharding as a spec over `mesh` (text programs; None where no spec over
    /// the mesh describes it, which only `call` minds).
    out_named: Option<Vec<Option<NamedSharding>>>,
    /// Whole parameter and result types: the compiled program's own on one device; on
    /// several, the text signature where it agrees with the compiled shards (else None).
    params: Option<Vec<TensorType>>,
    results: Option<Vec<TensorType>>,
    /// The compiled program's parameter and result types, read back from the executable
    /// (per device for SPMD programs). None only for text programs on a plugin that cannot
    /// report them; their text signature is used instead.
    compiled: Option<CompiledSignature>,
    param_shardings: Option<Vec<OpSharding>>,
    output_shardings: Option<Vec<OpSharding>>,
}

/// One output: the assembled array, each device's shard, and how it was sharded.
#[derive(Debug)]
pub struct ShardedOutput {
    /// The whole output, assembled from the shards.
    pub array: HostArray,
    /// Each device's shard (padded to the shard shape), in the program's device order.
    pub shards: Vec<HostArray>,
    /// How the output is placed over the devices (`Replicated` when the plugin reports none).
    pub sharding: OpSharding,
}

fn decode_all(raw: Option<Vec<Vec<u8>>>) -> Result<Option<Vec<OpSharding>>> {
    raw.map(|list| list.iter().map(|b| OpSharding::decode(b).map_err(Error::from)).collect()).transpose()
}

impl Executable {
    pub(crate) fn new(inner: LoadedExecutable, program: &Program, mesh: Option<&Mesh>) -> Result<Executable> {
        let devices = inner.addressable_devices()?;
        let n = devices.len();
        let single = n == 1;
        // On one device every sharding is trivially the whole array.
        let (param_shardings, output_shardings) =
            if single { (None, None) } else { (decode_all(inner.parameter_shardings()?)?, decode_all(inner.output_shardings()?)?) };
        let mesh = match mesh {
            Some(m) if m.num_devices() as usize == n => m.clone(),
            // A multi-host run: the program spans the global mesh; this process addresses its
            // own devices only.
            Some(m) if (m.num_devices() as usize) > n && inner.num_partitions()? == m.num_devices() => m.clone(),
            Some(m) => return Err(Error::Program(format!("the mesh {m} has {} devices but the program runs on {n}", m.num_devices()))),
            None if single => Mesh::single(),
            None => Mesh::new(&[("devices", n as i64)])?,
        };
        // Every format is checked against what XLA compiled, not what the file seems to
        // say: read the parameter and result types back from the optimized program.
        let compiled = match inner.optimized_program().map_err(Error::from).and_then(|(f, b)| CompiledSignature::decode(&f, &b)) {
            Ok(c) => Some(c),
            Err(_) if program.params.is_some() => None,
            Err(e) => {
                return Err(Error::Program(format!(
                    "cannot read the compiled program's parameter types, so arguments cannot be checked: {e}"
                )))
            }
        };
        let n = mesh.num_devices() as usize;
        let op = |ops: &Option<Vec<OpSharding>>, i: usize| ops.as_ref().and_then(|o| o.get(i)).cloned().unwrap_or(OpSharding::Replicated);
        // A whole type agrees with a compiled (per-device) one when it has the same element
        // type and its shard under the compiled sharding has the compiled shape.
        let agrees = |whole: &[TensorType], compiled: &[CompiledType], ops: &Option<Vec<OpSharding>>| {
            whole.len() == compiled.len()
                && whole.iter().zip(compiled).enumerate().all(|(i, (w, c))| {
                    c.dtype() == Some(w.dtype) && Tiling::new(&op(ops, i), &w.dims, n).is_ok_and(|t| t.shard_shape == c.dims)
                })
        };
        let whole = |types: &[CompiledType]| types.iter().map(CompiledType::tensor_type).collect::<Option<Vec<_>>>();
        let (params, results) = match &compiled {
            // On one device the compiled types are the whole types.
            Some(c) if single => (whole(&c.params), whole(&c.results)),
            // SPMD: XLA's optimized module is the partitioned one, so its types are shards.
            // Whole types come from the text signature (read before partitioning), kept only
            // where they agree with the compiled shards; otherwise (bytecode, protos)
            // `check_args` compares each argument's shard under the parameter sharding.
            Some(c) => (
                program.params.clone().filter(|p| agrees(p, &c.params, &param_shardings)),
                program.results.clone().filter(|r| agrees(r, &c.results, &output_shardings)),
            ),
            None => (program.params.clone(), program.results.clone()),
        };
        let tilings = |types: &Option<Vec<TensorType>>, ops: &Option<Vec<OpSharding>>| -> Result<Option<Vec<Tiling>>> {
            let Some(types) = types else { return Ok(None) };
            Ok(Some(types.iter().enumerate().map(|(i, t)| Tiling::new(&op(ops, i), &t.dims, n)).collect::<Result<_, _>>()?))
        };
        let param_tilings = tilings(&params, &param_shardings)?;
        let out_named = results.as_ref().map(|results| {
            results.iter().enumerate().map(|(j, t)| NamedSharding::infer(&mesh, &op(&output_shardings, j), &t.dims)).collect()
        });
        // Donation is read from the text signature: trust it only where that signature is
        // the one used (an undonated parameter is merely copied if the program aliases it).
        let mut donated = if params.is_some() && params == program.params { program.donated.clone() } else { Vec::new() };
        let num_params = params.as_ref().map(|p| p.len()).or(compiled.as_ref().map(|c| c.params.len())).unwrap_or(0);
        donated.resize(num_params, false);
        Ok(Executable {
            inner,
            devices,
            mesh,
            donated,
            execute_time: Default::default(),
            param_tilings,
            out_named,
            params,
            results,
            compiled,
            param_shardings,
            output_shardings,
        })
    }

    /// The devices the program runs on, in partition order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The executable's name as the plugin reports it (XLA uses the HLO module's name).
    pub fn name(&self) -> Result<String> {
        Ok(self.inner.name()?)
    }

    /// The number of outputs the program returns on each device.
    pub fn num_outputs(&self) -> Result<usize> {
        Ok(self.inner.num_outputs()?)
    }

    /// Parameter shardings reported by the plugin (None: not sharded or not reported).
    pub fn parameter_shardings(&self) -> Option<&[OpSharding]> {
        self.param_shardings.as_deref()
    }

    /// Output shardings reported by the plugin (None: on one device, or not reported).
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

    /// The mesh the program's shardings are read against.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Time spent in `call`'s executions so far (from launch until every device finished):
    /// the rest of a training loop's time is host overhead.
    pub fn execute_time(&self) -> std::time::Duration {
        self.execute_time.get()
    }

    /// Which parameters the program donates.
    pub fn donated(&self) -> &[bool] {
        &self.donated
    }

    /// Runs on arrays that stay on the devices and returns the outputs, also on the devices.
    /// Each argument must have the parameter's type and placement; parameters the program
    /// donates must be moved in (`Arg::Donate`), and their memory may be reused for outputs.
    pub fn call(&self, args: Vec<Arg<'_>>) -> Result<Vec<DeviceArray>> {
        self.check_outputs()?;
        let (Some(params), Some(tilings), Some(results), Some(out_named)) =
            (&self.params, &self.param_tilings, &self.results, &self.out_named)
        else {
            return Err(Error::Program(
                "calling with device arrays needs the whole parameter and result types (for SPMD programs, a StableHLO text signature)"
                    .into(),
            ));
        };
        if args.len() != params.len() {
            return Err(Error::ArgumentCount { expected: params.len(), actual: args.len() });
        }
        let mut donate = Vec::new();
        let ownership = args.iter().find_map(|a| a.array().ownership().cloned());
        for (i, arg) in args.iter().enumerate() {
            let a = arg.array();
            if let (Some(o), Some(mine)) = (a.ownership(), &ownership) {
                if o != mine {
                    return Err(Error::Argument(format!("argument {i} is owned by the processes of another run than argument 0's")));
                }
            }
            if a.buffers().len() != self.devices.len() {
                return Err(Error::Argument(format!(
                    "argument {i} has buffers on {} devices, the program runs on this process's {}",
                    a.buffers().len(),
                    self.devices.len()
                )));
            }
            if a.ty() != &params[i] {
                return Err(Error::ArgumentType { index: i, expected: params[i].clone(), actual: a.ty().clone() });
            }
            let t = a.tiling();
            if t.shard_shape != tilings[i].shard_shape || t.regions != tilings[i].regions {
                let expected = NamedSharding::infer(&self.mesh, &self.param_op_sharding(i), &params[i].dims)
                    .map_or_else(|| self.param_op_sharding(i).describe(), |n| n.to_string());
                return Err(Error::ArgumentSharding { index: i, expected, actual: a.sharding().to_string() });
            }
            if let Some(d) = (0..self.devices.len()).find(|&d| !a.devices()[d].same_as(&self.devices[d])) {
                return Err(Error::ArgumentDevices { index: i, device: d });
            }
            match arg {
                Arg::Keep(_) if self.donated[i] => return Err(Error::MustDonate { index: i }),
                Arg::Donate(_) => donate.push(i),
                Arg::Keep(_) => {}
            }
        }
        let lists: Vec<Vec<&Buffer>> = (0..self.devices.len()).map(|d| args.iter().map(|a| &a.array().buffers()[d]).collect()).collect();
        let started = std::time::Instant::now();
        let outputs = self.execute(&lists, &donate)?;
        self.execute_time.set(self.execute_time.get() + started.elapsed());
        drop(lists);
        drop(args); // donated arrays end here; their buffers are already deleted by PJRT
        let mut per_output: Vec<Vec<Buffer>> = (0..results.len()).map(|_| Vec::new()).collect();
        for device_outputs in outputs {
            for (j, b) in device_outputs.into_iter().enumerate() {
                if let Some(list) = per_output.get_mut(j) {
                    list.push(b);
                }
            }
        }
        per_output
            .into_iter()
            .enumerate()
            .map(|(j, buffers)| {
                let named = out_named[j].clone().ok_or_else(|| {
                    let op = self.output_shardings.as_ref().and_then(|o| o.get(j)).map_or("{replicated}".into(), |o| o.describe());
                    Error::Program(format!("output {j} is placed as {op}, which no spec over the mesh {} describes", self.mesh))
                })?;
                DeviceArray::from_buffers_owned(results[j].clone(), named, self.devices.clone(), buffers, ownership.clone())
            })
            .collect()
    }

    fn param_op_sharding(&self, i: usize) -> OpSharding {
        self.param_shardings.as_ref().and_then(|s| s.get(i)).cloned().unwrap_or(OpSharding::Replicated)
    }

    /// The compiled program's parameter and result types as XLA reports them (per device
    /// for SPMD programs), when the plugin could report them.
    pub fn compiled_signature(&self) -> Option<&CompiledSignature> {
        self.compiled.as_ref()
    }

    /// Checks whole host arguments against the compiled program's parameter types: the whole
    /// types where known; for SPMD programs without a text signature, the element type, the
    /// rank and the shard each device would get under the parameter's sharding.
    pub fn check_args<A: AsHostView>(&self, args: &[A]) -> Result<()> {
        let count = match (&self.params, &self.compiled) {
            (Some(p), _) => p.len(),
            (None, Some(c)) => c.params.len(),
            (None, None) => return Ok(()),
        };
        if count != args.len() {
            return Err(Error::Argument(format!("the program takes {count} arguments but {} were given", args.len())));
        }
        for (i, a) in args.iter().enumerate() {
            let a = a.host_view();
            if let Some(p) = self.params.as_ref().and_then(|p| p.get(i)) {
                if p.dtype != a.dtype || p.dims != a.dims {
                    let actual = TensorType { dtype: a.dtype, dims: a.dims.to_vec() };
                    return Err(Error::ArgumentType { index: i, expected: p.clone(), actual });
                }
            } else if let Some(c) = self.compiled.as_ref().and_then(|c| c.params.get(i)) {
                let op = self.param_op_sharding(i);
                let shard = Tiling::new(&op, a.dims, self.devices.len()).ok().filter(|_| a.dims.len() == c.dims.len());
                if c.dtype() == Some(a.dtype) && shard.as_ref().is_some_and(|t| t.shard_shape == c.dims) {
                    continue;
                }
                let message = if self.devices.len() == 1 || matches!(op, OpSharding::Replicated) {
                    format!("argument {i}: the program expects {c}, got {}", a.type_string())
                } else {
                    let got = match shard {
                        Some(t) => {
                            format!("{}, whose shards would be {}", a.type_string(), TensorType { dtype: a.dtype, dims: t.shard_shape })
                        }
                        None => a.type_string(),
                    };
                    format!(
                        "argument {i}: the program expects a rank-{} array whose shards under {} are {c} on each of {} devices, got {got}",
                        c.dims.len(),
                        op.describe(),
                        self.devices.len()
                    )
                };
                return Err(Error::Argument(message));
            }
        }
        Ok(())
    }

    /// Refuses, before anything runs, programs with outputs of an element type gemma-xla
    /// cannot hold (fp8, sub-byte integers, tokens, nested tuples).
    pub fn check_outputs(&self) -> Result<()> {
        let Some(c) = &self.compiled else { return Ok(()) };
        match c.results.iter().enumerate().find(|(_, t)| t.dtype().is_none()) {
            Some((index, t)) => Err(Error::UnsupportedOutput { index, ty: t.to_string() }),
            None => Ok(()),
        }
    }

    fn tiling(&self, sharding: Option<&OpSharding>, dims: &[i64]) -> Result<(OpSharding, Tiling)> {
        let s = sharding.cloned().unwrap_or(OpSharding::Replicated);
        let t = Tiling::new(&s, dims, self.devices.len())?;
        Ok((s, t))
    }

    /// Runs on whole host arrays and returns whole outputs with their shards.
    pub fn run_sharded<A: AsHostView>(&self, client: &crate::Client, args: &[A]) -> Result<Vec<ShardedOutput>> {
        self.check_args(args)?;
        self.check_outputs()?;
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
            Some(OpSharding::Tiled { tile_dims, .. }) => shard.iter().zip(tile_dims).map(|(s, t)| s * t).collect(),
            _ => shard.to_vec(),
        }
    }
}
