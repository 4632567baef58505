//! Generation on the devices: the weights placed once, a key/value cache that is donated to
//! every call and never leaves the devices, and one compiled program per number of new tokens
//! per call (the prompt's length bucket for prefill, 1 for decode) over `gemma::decode::extend`.
//! Only the next-token logits come back to the host, where the [`Sampler`] picks tokens.
use crate::{Error, Result};
use gemma::decode::{self, Head};
use gemma::rng::{mix64, SplitMix64};
use gemma::rules::Layout;
use gemma::Config;
use graph::{DType, Tensor, Tree};
use jit::Jit;
use runtime::{Arg, AsHostView, Client, DeviceArray, HostArray, HostView, Mesh, NamedSharding, PartitionSpec};
use std::time::{Duration, Instant};

/// The smallest prefill program: prompts are padded up to a power of two of at least this
/// many tokens, so prompts of similar lengths share one compiled program.
pub const MIN_BUCKET: usize = 16;

/// The number of new tokens a prefill of `len` tokens is compiled for.
pub fn bucket(len: usize) -> usize {
    len.max(MIN_BUCKET).next_power_of_two()
}

/// How the next token is picked from logits, as transformers' sampling does: temperature, then
/// top-k, then top-p (nucleus); temperature 0 is greedy (the first maximum). Every row has its
/// own SplitMix64 stream derived from the seed, so results are reproducible and do not depend
/// on the other rows.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Softmax temperature; 0 is greedy (argmax).
    pub temperature: f64,
    /// 0: no top-k filter.
    pub top_k: usize,
    /// 1: no nucleus filter; must be in (0, 1].
    pub top_p: f64,
    rows: Vec<SplitMix64>,
    seed: u64,
}

impl Sampler {
    /// A sampler that applies temperature, then top-k, then top-p, as transformers does; each
    /// row draws from its own stream seeded from `seed`.
    pub fn new(temperature: f64, top_k: usize, top_p: f64, seed: u64) -> Result<Sampler> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(Error::Unsupported(format!("--temperature must be a finite number >= 0, got {temperature}")));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::Unsupported(format!("--top-p must be in (0, 1], got {top_p}")));
        }
        Ok(Sampler { temperature, top_k, top_p, rows: Vec::new(), seed })
    }

    /// Always the first maximum of the logits.
    pub fn greedy() -> Sampler {
        Sampler { temperature: 0.0, top_k: 0, top_p: 1.0, rows: Vec::new(), seed: 0 }
    }

    fn stream(&mut self, row: usize) -> &mut SplitMix64 {
        while self.rows.len() <= row {
            let r = self.rows.len() as u64;
            self.rows.push(SplitMix64(mix64(self.seed ^ mix64(r.wrapping_add(0x5a3e_9f1c)))));
        }
        &mut self.rows[row]
    }

    /// The token picked for `row` from its logits.
    pub fn pick(&mut self, row: usize, logits: &[f32]) -> u32 {
        let argmax = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] || (logits[best].is_nan() && !l.is_nan()) {
                    best = i;
                }
            }
            best as u32
        };
        if self.temperature == 0.0 {
            return argmax();
        }
        // Softmax of logits / T in a form that is finite for every positive T: the maximum is
        // subtracted before dividing (a tiny T sends the others to exp(-inf) = 0, not inf - inf).
        let raw: Vec<f64> = logits.iter().map(|&l| l as f64).collect();
        // Indices by decreasing logit (ties by index); dividing by T > 0 keeps the order.
        let mut order: Vec<usize> = (0..raw.len()).filter(|&i| !raw[i].is_nan()).collect();
        order.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]).then(a.cmp(&b)));
        if order.is_empty() {
            return argmax();
        }
        let mut keep = order.len();
        if self.top_k > 0 && self.top_k < keep {
            // Values tied with the k-th largest stay, as transformers' `scores < kth` keeps them.
            let kth = raw[order[self.top_k - 1]];
            keep = order.iter().take_while(|&&i| raw[i] >= kth).count();
        }
        let max = raw[order[0]];
        let t = self.temperature;
        let weights: Vec<f64> = order[..keep].iter().map(|&i| if raw[i] == max { 1.0 } else { ((raw[i] - max) / t).exp() }).collect();
        let total: f64 = weights.iter().sum();
        if self.top_p < 1.0 {
            // transformers drops the tokens whose ascending cumulative probability is <= 1 - p
            // and keeps at least one; from the top, that keeps tokens while the mass above
            // them is < p.
            let mut above = 0.0;
            let mut n = 0;
            for w in &weights {
                if n > 0 && above / total >= self.top_p {
                    break;
                }
                above += w;
                n += 1;
            }
            keep = n;
        }
        let total: f64 = weights[..keep].iter().sum();
        let u = self.stream(row).next_f64() * total;
        let mut acc = 0.0;
        for (j, w) in weights[..keep].iter().enumerate() {
            acc += w;
            if u < acc {
                return order[j] as u32;
            }
        }
        order[keep - 1] as u32
    }
}

/// Time and tokens of the programs' runs (compilation excluded).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Time in prefill calls (the prompt).
    pub prefill: Duration,
    /// Prompt tokens prefilled.
    pub prefill_tokens: usize,
    /// Time in decode calls (one token per row).
    pub decode: Duration,
    /// Tokens decoded.
    pub decode_tokens: usize,
    /// Time spent tracing and compiling.
    pub compile: Duration,
}

impl Timing {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    /// New tokens per second of decoding.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// The compute dtype and how the model is spread over the devices.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The dtype of the weights and the cache on the devices.
    pub dtype: DType,
    /// The mesh: cache rows over `data`, kv heads and weights as `gemma::rules` says.
    pub mesh: Mesh,
    /// Weights also split over `data`.
    pub fsdp: bool,
    /// Run the decoder layers as one loop (`--scan-layers`): the layer weights and the cache
    /// are stacked on the devices (`gemma::stack`, `decode::cache_types_with`), so prefill and
    /// decode compile once per shape whatever the depth. LoRA adapters are stacked with
    /// their weights.
    pub scan: bool,
}

impl Placement {
    /// One device, no splitting, the layers as a loop.
    pub fn single(dtype: DType) -> Placement {
        Placement { dtype, mesh: Mesh::single(), fsdp: false, scan: true }
    }
}

type ExtendFn = Box<dyn Fn(&Tree<Tensor>) -> std::result::Result<Tree<Tensor>, graph::Error>>;

/// A model on the devices with a cache of `batch` rows of `cache_len` slots.
pub struct Generator {
    client: Client,
    cfg: Config,
    mesh: Mesh,
    fsdp: bool,
    /// Weights (adapters included) and cache stacked by layer (`Placement::scan`).
    stacked: bool,
    dtype: DType,
    batch: usize,
    cache_len: usize,
    jit: Jit<'static, ExtendFn>,
    scorer: Jit<'static, ExtendFn>,
    copier: Jit<'static, ExtendFn>,
    params: Tree<DeviceArray>,
    cache: Option<Tree<DeviceArray>>,
    /// Time spent in the programs so far.
    pub timing: Timing,
}

impl Generator {
    /// Places `params` (checkpoint names, converted to `dtype`) over `mesh` and an empty cache.
    pub fn new<A: AsHostView>(
        client: &Client,
        cfg: &Config,
        params: &Tree<A>,
        placement: Placement,
        batch: usize,
        cache_len: usize,
    ) -> Result<Generator> {
        Generator::with_adapters(client, cfg, params, placement, batch, cache_len, None)
    }

    /// [`Generator::new`] where `params` also holds `lora`'s adapters (`lora.shapes(cfg)`
    /// names), applied on their projections without merging.
    pub fn with_adapters<A: AsHostView>(
        client: &Client,
        cfg: &Config,
        params: &Tree<A>,
        placement: Placement,
        batch: usize,
        cache_len: usize,
        lora: Option<&gemma::lora::Lora>,
    ) -> Result<Generator> {
        let Placement { dtype, mesh, fsdp, scan } = placement;
        let stacking = gemma::stack::Stacking::of(cfg);
        let stacked = scan && stacking.any();
        if batch == 0 || cache_len == 0 {
            return Err(Error::Unsupported(format!("a generator needs rows and slots, got batch {batch}, cache {cache_len}")));
        }
        gemma::rules::check_batch(batch as i64, &mesh)?;
        gemma::rules::param_specs(cfg, &mesh, fsdp)?;
        let layout = (mesh.num_devices() > 1).then(|| Layout { mesh: mesh.clone(), fsdp });
        let (c, l, r) = (cfg.clone(), layout.clone(), lora.cloned());
        let f: ExtendFn = Box::new(move |a: &Tree<Tensor>| decode::extend_with(&c, a, Head::Last, l.clone(), r.as_ref()));
        let (c, l, r) = (cfg.clone(), layout, lora.cloned());
        let s: ExtendFn = Box::new(move |a: &Tree<Tensor>| decode::score_with(&c, a, l.clone(), r.as_ref()));
        let copy: ExtendFn = Box::new(decode::copy_rows);
        let on_devices = |name: &str, f: ExtendFn| {
            let (rule_cfg, rule_mesh) = (cfg.clone(), mesh.clone());
            Jit::new(name, client, f).with_mesh(mesh.clone()).donate("cache").with_rule(move |path, _| {
                let path = if path == "targets" || path == "logprob" || path == "greedy" { "tokens" } else { path };
                let path = if path == "source" { "start" } else { path };
                decode::extend_spec(&rule_cfg, path, &rule_mesh, fsdp)
            })
        };
        let (jit, scorer, copier) = (on_devices("generate", f), on_devices("score", s), on_devices("copy_rows", copy));
        let mut placed = Tree::new();
        let adapters = lora.map(|l| if stacked { stacking.stack_shapes(l.shapes(cfg)) } else { l.shapes(cfg) }).unwrap_or_default();
        let shapes = if stacked { stacking.shapes(cfg) } else { gemma::param_shapes(cfg) };
        let host_of = |name: &str| {
            Ok::<_, Error>(params.get(name).ok_or_else(|| Error::Unsupported(format!("the parameters have no {name}")))?.host_view())
        };
        let own = std::sync::Arc::new(runtime::Ownership::single(mesh.num_devices() as usize));
        for (name, dims) in shapes.into_iter().chain(adapters) {
            let path = format!("params.{name}");
            if stacking.parse(&name).is_some() && stacked {
                // Each device's region of a stacked weight, read layer by layer from the
                // checkpoint's tensors: no stacked copy of the model in host memory.
                let members: Vec<HostView> = stacking.members(&name).iter().map(|m| host_of(m)).collect::<Result<_>>()?;
                let spec = decode::extend_spec(cfg, &path, &mesh, fsdp).unwrap_or_else(|| PartitionSpec::replicated(dims.len()));
                let ty = graph::TensorType::new(dtype, &dims);
                let array = DeviceArray::place_with(client, &own, &NamedSharding::new(mesh.clone(), spec)?, &ty, |_, region| {
                    let mut bytes = Vec::new();
                    for g in region[0].clone() {
                        let piece = members[g as usize].slice(&region[1..])?;
                        let piece = if piece.dtype() == dtype { piece } else { piece.host_view().convert_float(dtype)? };
                        bytes.extend_from_slice(piece.bytes());
                    }
                    let extent: Vec<i64> = region.iter().map(|r| r.end - r.start).collect();
                    HostArray::from_bytes(dtype, &extent, bytes)
                })?;
                placed.insert(name, array).map_err(graph_error)?;
                continue;
            }
            let host = host_of(&name)?;
            let converted = (host.dtype != dtype).then(|| host.convert_float(dtype)).transpose()?;
            let view = converted.as_ref().map_or(host, |c| c.host_view());
            let spec = decode::extend_spec(cfg, &path, &mesh, fsdp).unwrap_or_else(|| PartitionSpec::replicated(view.dims.len()));
            let array = DeviceArray::place(client, &view, &NamedSharding::new(mesh.clone(), spec)?)?;
            placed.insert(name, array).map_err(graph_error)?;
        }
        let mut g = Generator {
            client: client.clone(),
            cfg: cfg.clone(),
            mesh,
            fsdp,
            stacked,
            dtype,
            batch,
            cache_len,
            jit,
            scorer,
            copier,
            params: placed,
            cache: None,
            timing: Timing::default(),
        };
        g.cache = Some(g.empty_cache()?);
        Ok(g)
    }

    /// Rows of the cache.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Slots of each row.
    pub fn cache_len(&self) -> usize {
        self.cache_len
    }

    /// Whether the layers run as a loop over stacked weights and cache (`Placement::scan`
    /// and at least one whole period of layers).
    pub fn scans_layers(&self) -> bool {
        self.stacked
    }

    /// Programs compiled so far.
    pub fn compiles(&self) -> usize {
        self.jit.stats().compiles + self.scorer.stats().compiles + self.copier.stats().compiles
    }

    fn compile_time(&self) -> Duration {
        self.jit.stats().compile_time + self.scorer.stats().compile_time + self.copier.stats().compile_time
    }

    fn empty_cache(&self) -> Result<Tree<DeviceArray>> {
        let mut cache = Tree::new();
        for (path, ty) in decode::cache_types_with(&self.cfg, self.dtype, self.batch as i64, self.cache_len as i64, self.stacked) {
            let spec = decode::extend_spec(&self.cfg, &path, &self.mesh, self.fsdp).unwrap_or_else(|| PartitionSpec::replicated(ty.rank()));
            let zeros =
                HostArray::from_bytes(ty.dtype, &ty.dims, vec![0; ty.dims.iter().product::<i64>() as usize * ty.dtype.size_bytes()])?;
            let array = DeviceArray::place(&self.client, &zeros, &NamedSharding::new(self.mesh.clone(), spec.clone())?)?;
            cache.insert(path, array).map_err(graph_error)?;
        }
        Ok(cache)
    }

    fn place_s32(&self, dims: &[i64], values: Vec<i32>, path: &str) -> Result<DeviceArray> {
        let spec = decode::extend_spec(&self.cfg, path, &self.mesh, self.fsdp).unwrap_or_else(|| PartitionSpec::replicated(dims.len()));
        Ok(DeviceArray::place(&self.client, &HostArray::from_vec(dims, values)?, &NamedSharding::new(self.mesh.clone(), spec)?)?)
    }

    /// Checks rows and starts, pads the rows to one length (1, or the bucket of the longest)
    /// and places the arguments of an extend-like call, with the cache taken out of `self`
    /// (the weights are added by `with_params`). Returns them and that length.
    fn extend_args(&mut self, rows: &[&[i32]], start: &[usize]) -> Result<(Vec<(String, DeviceArray)>, usize)> {
        if rows.len() != self.batch || start.len() != self.batch {
            return Err(Error::Unsupported(format!("expected {} rows, got {} rows and {} starts", self.batch, rows.len(), start.len())));
        }
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        for (b, (r, &s)) in rows.iter().zip(start).enumerate() {
            if r.is_empty() {
                return Err(Error::Unsupported(format!("row {b} has no tokens")));
            }
            if s + r.len() > self.cache_len {
                return Err(Error::Unsupported(format!(
                    "row {b}: {} tokens from slot {s} do not fit the cache of {} slots",
                    r.len(),
                    self.cache_len
                )));
            }
            if let Some(&id) = r.iter().find(|&&id| id < 0 || id as i64 >= self.cfg.vocab_size) {
                return Err(Error::Unsupported(format!("row {b}: token {id} is outside the vocabulary [0, {})", self.cfg.vocab_size)));
            }
        }
        let t = if longest == 1 { 1 } else { bucket(longest) };
        let b = self.batch as i64;
        let tokens = self.place_s32(&[b, t as i64], pad_rows(rows, t), "tokens")?;
        let starts = self.place_s32(&[b], start.iter().map(|&s| s as i32).collect(), "start")?;
        let lengths = self.place_s32(&[b], rows.iter().map(|r| r.len() as i32).collect(), "lengths")?;
        let cache = self.cache.take().ok_or_else(|| Error::Unsupported("the cache was lost by an earlier failed call".into()))?;
        let mut owned = cache.into_leaves();
        owned.extend([("tokens".to_string(), tokens), ("start".to_string(), starts), ("lengths".to_string(), lengths)]);
        Ok((owned, t))
    }

    /// Accounts a call's time (less any compiling) to prefill or decode.
    fn account(&mut self, began: Instant, compile_before: Duration, t: usize, tokens: usize) {
        let compile = self.compile_time() - compile_before;
        let spent = began.elapsed().saturating_sub(compile);
        self.timing.compile += compile;
        if t == 1 {
            self.timing.decode += spent;
            self.timing.decode_tokens += tokens;
        } else {
            self.timing.prefill += spent;
            self.timing.prefill_tokens += tokens;
        }
    }

    /// Writes `rows[b]` into row `b` of the cache from slot `start[b]` on and returns, per
    /// row, the logits after its last token. Every row needs at least one token. One token per
    /// row runs the decode program; more run the prefill program of their length bucket.
    pub fn extend(&mut self, rows: &[&[i32]], start: &[usize]) -> Result<Vec<Vec<f32>>> {
        let (compile_before, began) = (self.compile_time(), Instant::now());
        let (owned, t) = self.extend_args(rows, start)?;
        let mut out = self.jit.call(with_params(&self.params, owned)?)?;
        let logits = out.remove("logits").ok_or_else(|| Error::Unsupported("internal: extend returned no logits".into()))?.fetch()?;
        self.cache = Some(out.take_subtree("cache").prefixed("cache").map_err(graph_error)?);
        self.account(began, compile_before, t, rows.iter().map(|r| r.len()).sum());
        let v = self.cfg.vocab_size as usize;
        let values = logits.to_vec::<f32>()?;
        Ok(values.chunks(v).map(<[f32]>::to_vec).collect())
    }

    /// Like `extend`, but scores `targets[b]` (one per token of `rows[b]`): per row, the
    /// log-probability of each target and whether it was the most likely token.
    pub fn score(&mut self, rows: &[&[i32]], start: &[usize], targets: &[&[i32]]) -> Result<Vec<(Vec<f32>, Vec<bool>)>> {
        for (b, (r, tg)) in rows.iter().zip(targets).enumerate() {
            if r.len() != tg.len() {
                return Err(Error::Unsupported(format!("row {b}: {} tokens but {} targets", r.len(), tg.len())));
            }
        }
        let (compile_before, began) = (self.compile_time(), Instant::now());
        let (mut owned, t) = self.extend_args(rows, start)?;
        owned.push(("targets".to_string(), self.place_s32(&[self.batch as i64, t as i64], pad_rows(targets, t), "tokens")?));
        let mut out = self.scorer.call(with_params(&self.params, owned)?)?;
        let take = |out: &mut Tree<DeviceArray>, name: &str| -> Result<HostArray> {
            Ok(out.remove(name).ok_or_else(|| Error::Unsupported(format!("internal: score returned no {name}")))?.fetch()?)
        };
        let logprob = take(&mut out, "logprob")?.to_vec::<f32>()?;
        let greedy = take(&mut out, "greedy")?.to_vec::<i32>()?;
        self.cache = Some(out.take_subtree("cache").prefixed("cache").map_err(graph_error)?);
        self.account(began, compile_before, t.max(2), rows.iter().map(|r| r.len()).sum());
        Ok(rows
            .iter()
            .enumerate()
            .map(|(b, r)| (logprob[b * t..b * t + r.len()].to_vec(), greedy[b * t..b * t + r.len()].iter().map(|&g| g != 0).collect()))
            .collect())
    }

    /// Replaces every cache row `b` with row `source[b]` (on the devices).
    pub fn copy_rows(&mut self, source: &[usize]) -> Result<()> {
        if source.len() != self.batch || source.iter().any(|&s| s >= self.batch) {
            return Err(Error::Unsupported(format!("copy_rows needs {} row indices below {}, got {source:?}", self.batch, self.batch)));
        }
        let src = self.place_s32(&[self.batch as i64], source.iter().map(|&s| s as i32).collect(), "start")?;
        let cache = self.cache.take().ok_or_else(|| Error::Unsupported("the cache was lost by an earlier failed call".into()))?;
        let mut args: Tree<Arg> = Tree::new();
        for (path, a) in cache.into_leaves() {
            args.insert(path, Arg::Donate(a)).map_err(graph_error)?;
        }
        args.insert("source", Arg::Donate(src)).map_err(graph_error)?;
        let mut out = self.copier.call(args)?;
        self.cache = Some(out.take_subtree("cache").prefixed("cache").map_err(graph_error)?);
        Ok(())
    }
}

/// The weights (kept) and `owned` arrays (donated) as one call's arguments.
fn with_params(params: &Tree<DeviceArray>, owned: Vec<(String, DeviceArray)>) -> Result<Tree<Arg<'_>>> {
    let mut args: Tree<Arg> = Tree::new();
    for (name, a) in params.iter() {
        args.insert(format!("params.{name}"), Arg::Keep(a)).map_err(graph_error)?;
    }
    for (path, a) in owned {
        args.insert(path, Arg::Donate(a)).map_err(graph_error)?;
    }
    Ok(args)
}

/// Rows padded with 0 to `t` tokens each, concatenated.
fn pad_rows(rows: &[&[i32]], t: usize) -> Vec<i32> {
    let mut all = Vec::with_capacity(rows.len() * t);
    for r in rows {
        all.extend_from_slice(r);
        all.resize(all.len() + t - r.len(), 0);
    }
    all
}

fn graph_error(e: graph::Error) -> Error {
    Error::Unsupported(format!("internal: {e}"))
}

/// What [`generate`] made: per row the new tokens (ending with the stop token that ended the
/// row, if one did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Per row, the tokens generated.
    pub new_tokens: Vec<Vec<i32>>,
}

/// Prefills `prompts` (row b from slot `start[b]`) and decodes up to `max_new` tokens per row;
/// a row stops after a token of `stop`, or when `on_token(row, id)`, which sees each new
/// token as it comes, returns true.
pub fn generate(
    g: &mut Generator,
    prompts: &[&[i32]],
    start: &[usize],
    max_new: usize,
    sampler: &mut Sampler,
    stop: &[i32],
    mut on_token: impl FnMut(usize, i32) -> Result<bool>,
) -> Result<Generated> {
    let rows = prompts.len();
    let mut new_tokens: Vec<Vec<i32>> = vec![Vec::new(); rows];
    if max_new == 0 {
        return Ok(Generated { new_tokens });
    }
    for (b, p) in prompts.iter().enumerate() {
        if start[b] + p.len() + max_new - 1 > g.cache_len() {
            return Err(Error::Unsupported(format!(
                "row {b}: {} prompt tokens from slot {} and {max_new} new tokens need {} cache slots, the cache has {}",
                p.len(),
                start[b],
                start[b] + p.len() + max_new - 1,
                g.cache_len()
            )));
        }
    }
    let mut logits = g.extend(prompts, start)?;
    let mut done = vec![false; rows];
    let mut pos: Vec<usize> = prompts.iter().zip(start).map(|(p, s)| s + p.len()).collect();
    for step in 0..max_new {
        let mut next = vec![0i32; rows];
        for b in 0..rows {
            if done[b] {
                continue;
            }
            let id = sampler.pick(b, &logits[b]) as i32;
            new_tokens[b].push(id);
            let ended = on_token(b, id)?;
            next[b] = id;
            if ended || stop.contains(&id) {
                done[b] = true;
            }
        }
        if step + 1 == max_new || done.iter().all(|&d| d) {
            break;
        }
        // Finished rows keep decoding a dummy token into their next slot (unused) so that the
        // batch stays one program; their logits are ignored.
        let steps: Vec<[i32; 1]> = next.iter().map(|&id| [id]).collect();
        let refs: Vec<&[i32]> = steps.iter().map(|s| &s[..]).collect();
        let at: Vec<usize> = pos.iter().map(|&p| p.min(g.cache_len() - 1)).collect();
        logits = g.extend(&refs, &at)?;
        for p in pos.iter_mut() {
            *p += 1;
        }
    }
    Ok(Generated { new_tokens })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_from_16() {
        assert_eq!([1, 16, 17, 100, 128, 129].map(bucket), [16, 16, 32, 128, 128, 256]);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::greedy();
        assert_eq!(s.pick(0, &[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_1_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, -1.0];
        let mut k1 = Sampler::new(1.0, 1, 1.0, 7).unwrap();
        let mut p = Sampler::new(1.0, 0, 1e-6, 7).unwrap();
        for _ in 0..50 {
            assert_eq!(k1.pick(0, &logits), 1);
            assert_eq!(p.pick(0, &logits), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities 0.5, 0.3, 0.2: p = 0.6 keeps the first two, never the third.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut s = Sampler::new(1.0, 0, 0.6, 3).unwrap();
        let mut seen = [0; 3];
        for _ in 0..2000 {
            seen[s.pick(0, &logits) as usize] += 1;
        }
        assert_eq!(seen[2], 0);
        assert!(seen[1] > 400 && seen[0] > 800, "{seen:?}");
    }

    #[test]
    fn sampling_follows_the_softmax_and_is_reproducible() {
        let logits = [1.0f32, 0.0, 2.0];
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 0, 1.0, seed).unwrap();
            (0..4000).map(|_| s.pick(0, &logits)).collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        let z: f64 = [1.0f64, 0.0, 2.0].iter().map(|l| l.exp()).sum();
        for (i, l) in [1.0f64, 0.0, 2.0].iter().enumerate() {
            let freq = a.iter().filter(|&&x| x == i as u32).count() as f64 / a.len() as f64;
            assert!((freq - l.exp() / z).abs() < 0.03, "token {i}: {freq}");
        }
    }

    #[test]
    fn any_positive_temperature_samples_from_a_finite_softmax() {
        let logits = [1.0f32, 3.0, -2.0, 3.0];
        for t in [5e-324, 1e-300, 1e-30, 1e-3] {
            let mut s = Sampler::new(t, 0, 1.0, 1).unwrap();
            for _ in 0..200 {
                let id = s.pick(0, &logits);
                assert!(id == 1 || id == 3, "temperature {t}: picked {id}, not a most likely token");
            }
        }
        // Huge temperatures are near uniform, and infinite logits are the only candidates.
        let mut s = Sampler::new(1e300, 0, 1.0, 2).unwrap();
        let picked: std::collections::BTreeSet<u32> = (0..400).map(|_| s.pick(0, &logits)).collect();
        assert_eq!(picked.len(), 4);
        let mut s = Sampler::new(0.7, 0, 1.0, 3).unwrap();
        assert!((0..100).all(|_| s.pick(0, &[0.0, f32::INFINITY, 1.0]) == 1));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Sampler::new(1.0, 0, 0.0, 0).unwrap_err().to_string().contains("--top-p"));
        assert!(Sampler::new(1.0, 0, 1.5, 0).is_err());
        assert!(Sampler::new(-1.0, 0, 1.0, 0).unwrap_err().to_string().contains("--temperature"));
    }
}
